"""The one CT renderer shared by procedural phantoms and phantoms drawn around real label maps.

A ``Scene`` is a full-resolution grid (mm in the body frame, see ``shapes``), a KiTS label map on
it, the torso plan (``Body``, with the case's contrast) and the two kidney plans. ``render_scene``
paints the torso and organs on a working grid (voxels of about ``WORK_MM``; the full grid itself
when that is coarser), carves perirenal fat around the labelled kidneys, renders the kidneys and
tumours inside the labels (``renal``) and acquires the CT one z-slab at a time: linear
upsampling to the full grid, partial-volume blur matching the slice thickness, a per-case HU
shift and Gaussian noise. Memory: the int16 CT, the labels, and float32 slabs of
``SLAB_VOXELS`` voxels (plus the working grid and kidney boxes). Arrays are (X, Y, Z) in RAS+ voxel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from kidneyseg.synthetic.contrast import TumourProfile
from kidneyseg.synthetic.kidney import Kidney
from kidneyseg.synthetic.regions import paint_heart, paint_lungs, paint_pelvis
from kidneyseg.synthetic.renal import PATCH_MM, KidneyPatch, render_kidney
from kidneyseg.synthetic.resample import Factors, coarse_slices, factors_for, take_coarse, upsample
from kidneyseg.synthetic.shapes import OUTSIDE_CAVITY, Box, Canvas, Grid, Tissue
from kidneyseg.synthetic.skeleton import paint_ribs, paint_spine
from kidneyseg.synthetic.torso import Body, paint_body, paint_bowel, paint_liver, paint_muscles, paint_spleen
from kidneyseg.synthetic.vessels import paint_great_vessels, paint_mesenteric_vessels, paint_renal_vessels

Spacing = tuple[float, float, float]

WORK_MM = (1.5, 1.5, 2.5)
BLUR_XY_VOX = 0.4  # in-plane partial volume (voxels)
MIN_THICKNESS_MM = 1.0  # thinner slices are taken as reconstructed 1 mm thick
NOISE_SD_HU = (10.0, 25.0)
HU_SHIFT = (-20.0, 20.0)
SLAB_VOXELS = 8_000_000
HU_LIMITS = (-1024, 3071)


@dataclass(frozen=True)
class Scene:
    """What one phantom CT shows: ``labels`` (uint8 KiTS labels, (X, Y, Z) on ``grid`` whose
    voxels are ``spacing_mm``), the torso, the right and left kidney plans (``present`` False
    for a missing kidney) and the tumours' subtype profile."""

    grid: Grid
    spacing_mm: Spacing
    labels: np.ndarray
    body: Body
    kidneys: tuple[Kidney, Kidney]
    profile: TumourProfile


@dataclass(frozen=True)
class Rendered:
    """A rendered CT (int16 HU, (X, Y, Z) on the scene's grid) and the tissue ids (uint8,
    ``shapes.Tissue``) of the working grid, the scene's grid sampled every ``factors`` voxels
    (``resample``); with factors (1, 1, 1) the tissue map includes the kidneys and tumours."""

    ct: np.ndarray
    tissue: np.ndarray
    factors: Factors


def foreground_box(labels: np.ndarray, xs: slice = slice(None), pad: int = 0) -> Box | None:
    """Bounding box (index slices) of the non-zero labels with x index in ``xs``, grown by ``pad``
    voxels (not beyond ``xs`` or the array); None if there are none."""
    x0, x1, _ = xs.indices(labels.shape[0])
    sub = labels[x0:x1]
    bounds = []
    for axis, (start, stop) in enumerate(((x0, x1), (0, labels.shape[1]), (0, labels.shape[2]))):
        hits = np.flatnonzero(sub.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        bounds.append(slice(max(start, start + int(hits[0]) - pad), min(stop, start + int(hits[-1]) + 1 + pad)))
    return bounds[0], bounds[1], bounds[2]


def paint_perirenal_fat(canvas: Canvas, rng: np.random.Generator, labels: np.ndarray, spacing: Spacing) -> None:
    """Fat inside Gerota's fascia: everything within 3-12 mm of the kidneys and tumours (``labels``
    on the canvas grid of voxels ``spacing`` mm), carving into the liver, spleen and bowel."""
    margin = rng.uniform(3, 12)
    box = foreground_box(labels, pad=int(np.ceil(margin / min(spacing))) + 1)
    if box is None:
        return
    distance = distance_transform_edt(labels[box] == 0, sampling=spacing)
    canvas.paint(box, distance <= margin, rng.uniform(-110, -80), Tissue.PERIRENAL_FAT, protect=OUTSIDE_CAVITY)


def paint_anatomy(canvas: Canvas, rng: np.random.Generator, body: Body, kidneys: tuple[Kidney, Kidney],
                  labels: np.ndarray, spacing: Spacing) -> None:
    """Everything but the kidneys' insides: body wall, bowel, vessels, liver, spleen, chest above the
    diaphragm, pelvis below the aortic bifurcation, perirenal fat around ``labels`` (on the canvas
    grid), muscles, spine and ribs. Landmarks follow the kidneys' heights (mm)."""
    right, left = kidneys
    s = body.scale
    z_mean = float(np.mean([right.centre[2], left.centre[2]]))
    z_dome = float(right.centre[2]) + rng.uniform(110, 150) * s
    z_split = z_mean - rng.uniform(80, 110) * s
    paint_body(canvas, rng, body)
    paint_bowel(canvas, rng, body, z_mean)
    paint_mesenteric_vessels(canvas, rng, body, z_mean)
    paint_liver(canvas, rng, body, float(right.centre[2]))
    paint_spleen(canvas, rng, body, float(left.centre[2]))
    paint_lungs(canvas, rng, body, z_dome)
    paint_heart(canvas, rng, body, z_dome)
    paint_pelvis(canvas, rng, body, z_split - rng.uniform(0, 20) * s)
    paint_perirenal_fat(canvas, rng, labels, spacing)
    paint_muscles(canvas, rng, body, float(max(right.centre[2], left.centre[2]) + 30 * s))
    paint_spine(canvas, rng, body)
    paint_ribs(canvas, rng, body, float(right.centre[2]) + rng.uniform(0, 25) * s)
    paint_great_vessels(canvas, body, z_split)
    for kidney in kidneys:
        if kidney.present:
            paint_renal_vessels(canvas, rng, body, kidney)


def render_kidneys(rng: np.random.Generator, scene: Scene) -> list[KidneyPatch]:
    """One patch per present kidney: the labelled voxels on its side of the midline (x = 0), or
    all of them when only one kidney is present."""
    present = [k for k in scene.kidneys if k.present]
    split = int(np.searchsorted(scene.grid.x, 0.0))
    regions = {1: slice(split, None), -1: slice(0, split)} if len(present) == 2 else {}
    patches = []
    for kidney in present:
        box = foreground_box(scene.labels, regions.get(kidney.side, slice(None)), pad=4)
        if box is not None:
            patches.append(render_kidney(rng, scene.grid, scene.spacing_mm, scene.labels, box, kidney,
                                         scene.profile, scene.body.contrast))
    return patches


def _paste(block: np.ndarray, z_lo: int, labels: np.ndarray, patch: KidneyPatch) -> None:
    """Copy a patch's HU into the labelled voxels of ``block`` (full-grid slices from ``z_lo``)."""
    bx, by, bz = patch.box
    z0, z1 = max(bz.start, z_lo), min(bz.stop, z_lo + block.shape[2])
    if z0 < z1:
        mask = labels[bx, by, z0:z1] > 0
        np.copyto(block[bx, by, z0 - z_lo:z1 - z_lo], patch.hu[:, :, z0 - bz.start:z1 - bz.start], where=mask)


def blur_sigma(spacing: Spacing) -> tuple[float, float, float]:
    """Partial-volume blur (Gaussian SD in voxels along X, Y, Z): ``BLUR_XY_VOX`` in-plane and a
    FWHM of the slice thickness along z, on the axes drawn at full resolution (patch factor 1);
    axes interpolated from coarser samples (about ``renal.PATCH_MM``) are already smoother."""
    drawn_at_full = [f == 1 for f in factors_for(spacing, (PATCH_MM,) * 3)]
    sigma = (BLUR_XY_VOX, BLUR_XY_VOX, max(spacing[2], MIN_THICKNESS_MM) / (2.355 * spacing[2]))
    x, y, z = (float(s) if full else 0.0 for s, full in zip(sigma, drawn_at_full, strict=True))
    return x, y, z


def acquire(rng: np.random.Generator, work_hu: np.ndarray, factors: Factors, labels: np.ndarray,
            patches: list[KidneyPatch], spacing: Spacing) -> np.ndarray:
    """The CT (int16 HU, labels' shape): working-grid HU upsampled, kidney patches pasted, blurred
    (``blur_sigma``), shifted by a per-case offset and given Gaussian noise (SD 10-25 HU), one
    z-slab at a time."""
    shape = labels.shape
    shift, sd = np.float32(rng.uniform(*HU_SHIFT)), np.float32(rng.uniform(*NOISE_SD_HU))
    sigma = blur_sigma(spacing)
    halo = int(3.0 * max(sigma) + 0.5) + 1
    step = max(1, SLAB_VOXELS // (shape[0] * shape[1]))
    out = np.empty(shape, dtype=np.int16)
    for z0 in range(0, shape[2], step):
        z1 = min(z0 + step, shape[2])
        lo, hi = max(z0 - halo, 0), min(z1 + halo, shape[2])
        block = upsample(work_hu, factors, shape, (lo, hi))
        for patch in patches:
            _paste(block, lo, labels, patch)
        if max(sigma) > 0:
            block = gaussian_filter(block, sigma, mode="nearest", truncate=3.0)
        block = block[:, :, z0 - lo:z1 - lo]
        noise = rng.standard_normal(block.shape, dtype=np.float32)
        noise *= sd
        noise += shift
        block += noise
        np.rint(block, out=block)
        out[:, :, z0:z1] = np.clip(block, *HU_LIMITS, out=block)
    return out


def render_scene(rng: np.random.Generator, scene: Scene) -> Rendered:
    """Render ``scene`` as a contrast-enhanced late-arterial CT on exactly its grid."""
    factors = factors_for(scene.spacing_mm, WORK_MM)
    picks = coarse_slices(factors)
    canvas = Canvas(Grid(*(axis[p] for axis, p in zip(scene.grid.axes, picks, strict=True))))
    spacing = (scene.spacing_mm[0] * factors[0], scene.spacing_mm[1] * factors[1], scene.spacing_mm[2] * factors[2])
    paint_anatomy(canvas, rng, scene.body, scene.kidneys, take_coarse(scene.labels, factors), spacing)
    patches = render_kidneys(rng, scene)
    if factors == (1, 1, 1):
        for patch in patches:
            mask = scene.labels[patch.box] > 0
            canvas.tissue[patch.box][mask] = patch.tissue[mask]
    ct = acquire(rng, canvas.hu, factors, scene.labels, patches, scene.spacing_mm)
    return Rendered(ct, canvas.tissue, factors)
