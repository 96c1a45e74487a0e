"""Procedural phantom CTs of the abdomen with kidney and tumour labels: the demo and test data.

Each phantom is a contrast-enhanced (late arterial, corticomedullary phase) abdominal CT drawn
from random but plausible anatomy: body wall, spine and ribs, back muscles, aorta, IVC and
mesenteric vessels, liver, spleen, bowel with fluid, gas or oral contrast, and kidneys with
cortex, medulla and sinus fat, carrying 1-2 tumours. Several non-kidney structures (aorta and other arteries, bone,
spleen, liver vessels, renal veins, oral contrast) share the kidney's HU range, so no single HU
window segments the kidneys (the best one scores a Dice of about 0.2-0.65). ``from_labels`` draws
the same kind of CT around real KiTS19 label maps with the same renderer (``scene``).

World coordinates are nibabel's RAS+ (mm): x increases towards the patient's Right, y towards
Anterior, z towards Superior. Arrays are (X, Y, Z) in RAS+ voxel order unless written otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform
from tqdm import tqdm

from kidneyseg.io import save_nifti
from kidneyseg.synthetic.contrast import tumour_profile
from kidneyseg.synthetic.kidney import draw_kidney_labels, plan_kidneys
from kidneyseg.synthetic.scene import Scene, render_scene
from kidneyseg.synthetic.torso import plan_body

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]

RAS_CODES = ("R", "A", "S")
KITS_CODES = ("I", "P", "L")  # KiTS19's files: array (z, y, x), affine [[0,0,-sx],[0,-sy,0],[-sz,0,0]]


@dataclass(frozen=True)
class Phantom:
    """A phantom's CT (HU, int16), KiTS labels (uint8) and tissue ids (uint8, ``shapes.Tissue``),
    all (X, Y, Z) RAS+ on the same grid."""

    ct: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray


def render_phantom(rng: np.random.Generator, shape: Shape, spacing_mm: Spacing) -> Phantom:
    """Draw one phantom of ``shape`` voxels (X, Y, Z) of ``spacing_mm`` (mm along X, Y, Z).

    First the torso and kidneys are planned and the kidney and tumour labels drawn; then the
    shared renderer (``scene.render_scene``) draws the CT around and inside those labels, as it
    does for real label maps. Meant for a field of view like an abdominal CT's (about 300-450 mm
    in-plane, 150 mm or more cranio-caudally); smaller fields get proportionally smaller anatomy.
    The tissue map is complete when the voxels are at least about 2.3 mm (as ``random_geometry``'s).
    """
    body, grid = plan_body(rng, shape, spacing_mm)
    kidneys = plan_kidneys(rng, body)
    labels = draw_kidney_labels(rng, grid, body, kidneys)
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    scene = Scene(grid, spacing, labels, body, (kidneys[0], kidneys[1]), tumour_profile(None, rng))
    rendered = render_scene(rng, scene)
    return Phantom(rendered.ct, labels, rendered.tissue)


def make_phantom(rng: np.random.Generator, shape: Shape, spacing_mm: Spacing) -> tuple[np.ndarray, np.ndarray]:
    """A phantom CT (HU, int16) and its labels (uint8: 0 background, 1 kidney, 2 tumour).

    Both arrays have ``shape`` (X, Y, Z) in RAS+ voxel order with voxels of ``spacing_mm``
    (mm along X, Y, Z). Every case has a tumour; in about 15% one kidney is absent.
    """
    phantom = render_phantom(rng, shape, spacing_mm)
    return phantom.ct, phantom.labels


def random_geometry(rng: np.random.Generator) -> tuple[Shape, Spacing]:
    """A demo-sized grid: (X, Y, Z) voxels and their spacing in mm.

    In-plane 2.6-3.6 mm over a 320-420 mm wide field (X 96-128, Y 80-112 voxels), slices of
    2.5-5 mm covering about 180-260 mm (Z 40-90 slices).
    """
    nx = int(rng.integers(96, 129))
    ny = int(rng.integers(max(80, int(np.ceil(0.7 * nx))), min(112, nx) + 1))
    in_plane = round(float(rng.uniform(max(2.6, 320 / nx), min(3.6, 420 / nx))), 3)
    thickness = round(float(rng.uniform(2.5, 5.0)), 3)
    nz = int(np.clip(round(rng.uniform(180, 260) / thickness), 40, 90))
    return (nx, ny, nz), (in_plane, in_plane, thickness)


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` of dataset ``seed`` (independent of the number of cases)."""
    return np.random.default_rng([int(seed), int(index)])


def synthesize_case(seed: int, index: int) -> tuple[Phantom, np.ndarray]:
    """Case ``index`` of dataset ``seed``: the phantom ((X, Y, Z) RAS+ arrays) and its RAS+ affine
    (4, 4; diagonal voxel sizes in mm, non-zero origin in mm)."""
    rng = case_rng(seed, index)
    shape, spacing = random_geometry(rng)
    phantom = render_phantom(rng, shape, spacing)
    half = (np.asarray(shape) - 1) * np.asarray(spacing) / 2
    origin = np.round(-half + rng.uniform((-40, -40, -400), (40, 40, -100)), 2)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return phantom, affine


def to_layout(data: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Reorder ``data`` (voxel order given by ``affine``) to the axis codes ``axcodes``, with the
    affine that keeps every voxel at the same world position."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(axcodes))
    reordered = np.ascontiguousarray(apply_orientation(data, transform))
    return reordered, affine @ inv_ornt_aff(transform, data.shape)


def case_layout(index: int) -> tuple[str, str, str]:
    """Axis codes of the files of case ``index``: RAS+ for even cases, KiTS19's own for odd ones."""
    return RAS_CODES if index % 2 == 0 else KITS_CODES


def synthesize_dataset(out_dir: Path, cases: int, seed: int, progress: bool = True) -> list[Path]:
    """Write ``cases`` phantoms in the KiTS19 layout and return their folders.

    ``out_dir/case_00000/imaging.nii.gz`` (int16 HU) and ``segmentation.nii.gz`` (uint8) share
    one grid. Even cases are stored as RAS+ arrays (X, Y, Z), odd ones as KiTS19 stores them,
    (Z, Y, X) with axis codes ('I', 'P', 'L'). Case i depends only on (seed, i).
    """
    out_dir = Path(out_dir)
    folders = []
    for index in tqdm(range(cases), desc="synthesizing phantoms", unit="case", disable=not progress):
        phantom, affine = synthesize_case(seed, index)
        folder = out_dir / f"case_{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        codes = case_layout(index)
        image_data, file_affine = to_layout(phantom.ct, affine, codes)
        label_data, _ = to_layout(phantom.labels, affine, codes)
        save_nifti(image_data, file_affine, folder / "imaging.nii.gz")
        save_nifti(label_data, file_affine, folder / "segmentation.nii.gz")
        folders.append(folder)
    return folders
