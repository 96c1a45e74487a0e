"""Tests of phantoms drawn around label maps: grids, files, determinism, HU, anatomy from real kidneys.

Most use real KiTS19 label maps from ../shared/data (not part of the project) and are skipped
when they are absent; the layout tests use procedural label maps and always run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kidneyseg.errors import InvalidInputError
from kidneyseg.io import load_ct, load_label_map
from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.synthetic import render_around_labels, synthesize_dataset, synthesize_from_labels
from kidneyseg.synthetic.contrast import plan_contrast
from kidneyseg.synthetic.placement import plan_scene_around_labels
from kidneyseg.synthetic.scene import render_scene
from kidneyseg.synthetic.shapes import Tissue

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits19-labels"
SMALL = ("case_00110", "case_00148")  # the real label maps with the fewest slices (34 and 36 of 512 x 512)
SEED = 5
real_data = pytest.mark.skipif(
    not all((LABELS / c / "segmentation.nii.gz").is_file() for c in SMALL),
    reason=f"real KiTS19 label maps not found at {LABELS} (shared data, not part of the project)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    if not all((LABELS / c / "segmentation.nii.gz").is_file() for c in SMALL):
        pytest.skip(f"real KiTS19 label maps not found at {LABELS}")
    return synthesize_from_labels(LABELS, tmp_path_factory.mktemp("from-labels"), SEED, progress=False,
                                  cases=list(SMALL))


def _crop(case: str, margin: int = 40) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real label map (canonical (X, Y, Z)) cropped in-plane to its foreground plus ``margin`` voxels."""
    volume = load_label_map(LABELS / case / "segmentation.nii.gz")
    index = np.argwhere(volume.array > 0)
    lo, hi = np.maximum(index.min(axis=0) - margin, 0), index.max(axis=0) + margin + 1
    return np.ascontiguousarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], :]), volume.spacing_mm


def _in_plane_depth(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of each voxel of ``mask`` to the nearest voxel outside it in the same slice."""
    depth = np.zeros(mask.shape, dtype=np.float32)
    for z in range(mask.shape[2]):
        depth[:, :, z] = ndimage.distance_transform_edt(mask[:, :, z], sampling=spacing[:2])
    return depth


@real_data
def test_images_are_on_the_label_maps_exact_grid(rendered: list[Path]) -> None:
    assert [f.name for f in rendered] == list(SMALL)
    for folder in rendered:
        source = nib.load(LABELS / folder.name / "segmentation.nii.gz")
        image = nib.load(folder / "imaging.nii.gz")
        assert image.shape == source.shape
        assert np.array_equal(image.affine, source.affine)
        assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(source.affine) == ("I", "P", "L")
        assert image.get_data_dtype() == np.int16
        for code in ("qform_code", "sform_code"):
            assert int(image.header[code]) == int(source.header[code])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ct = load_ct(folder / "imaging.nii.gz")
        assert ct.array.shape == load_label_map(folder / "segmentation.nii.gz").array.shape


@real_data
def test_label_maps_are_copied_unchanged(rendered: list[Path]) -> None:
    for folder in rendered:
        source = LABELS / folder.name / "segmentation.nii.gz"
        assert (folder / "segmentation.nii.gz").read_bytes() == source.read_bytes()


@real_data
def test_a_case_depends_only_on_seed_and_case_id(rendered: list[Path], tmp_path: Path) -> None:
    again = synthesize_from_labels(LABELS, tmp_path, SEED, progress=False, cases=[SMALL[1]])[0]
    first = np.asanyarray(nib.load(rendered[1] / "imaging.nii.gz").dataobj)
    assert np.array_equal(np.asanyarray(nib.load(again / "imaging.nii.gz").dataobj), first)
    other = np.asanyarray(nib.load(rendered[0] / "imaging.nii.gz").dataobj)
    assert first.shape != other.shape or not np.array_equal(first, other)


@real_data
def test_render_is_deterministic_per_seed() -> None:
    labels, spacing = _crop(SMALL[0])
    a = render_around_labels(labels, spacing, np.random.default_rng(1), "clear_cell_rcc")
    b = render_around_labels(labels, spacing, np.random.default_rng(1), "clear_cell_rcc")
    c = render_around_labels(labels, spacing, np.random.default_rng(2), "clear_cell_rcc")
    assert a.dtype == np.int16 and a.shape == labels.shape
    assert np.array_equal(a, b)
    assert np.abs(a.astype(np.int32) - c).mean() > 5


@real_data
def test_kidney_cortex_is_150_to_250_hu(rendered: list[Path]) -> None:
    for folder in rendered:
        ct = load_ct(folder / "imaging.nii.gz")
        labels = load_label_map(folder / "segmentation.nii.gz").array
        index = np.argwhere(labels > 0)
        box = tuple(slice(max(lo - 5, 0), hi + 6) for lo, hi in zip(index.min(axis=0), index.max(axis=0)))
        labels, hu = labels[box], ct.array[box]
        depth = _in_plane_depth(labels == KIDNEY, ct.spacing_mm)
        near_tumour = ndimage.binary_dilation(labels == TUMOR, iterations=4)
        shell = (depth >= 1.5) & (depth <= 4.0) & ~near_tumour
        assert shell.sum() > 1000
        assert 150 <= float(np.median(hu[shell])) <= 250


@real_data
def test_subtype_sets_tumour_enhancement() -> None:
    labels, spacing = _crop(SMALL[0])
    tumour = labels == TUMOR
    medians = {}
    for subtype in ("clear_cell_rcc", "papillary"):
        ct = render_around_labels(labels, spacing, np.random.default_rng(4), subtype)
        medians[subtype] = float(np.median(ct[tumour]))
    assert medians["papillary"] + 30 < medians["clear_cell_rcc"]


@real_data
def test_anatomy_follows_the_real_kidneys() -> None:
    """RAS+: the right kidney (larger x) has the liver above it and lateral, the left one the spleen;
    the spine lies between and behind them."""
    volume = load_label_map(LABELS / SMALL[0] / "segmentation.nii.gz")
    scene = plan_scene_around_labels(np.random.default_rng(0), volume.array, volume.spacing_mm, None)
    result = render_scene(np.random.default_rng(0), scene)
    right, left = scene.kidneys
    assert right.side == 1 and left.side == -1 and right.present and left.present
    grid = scene.grid
    sides = [volume.array[grid.x > 0] > 0, volume.array[grid.x <= 0] > 0]
    assert sides[0].sum() > 1000 and sides[1].sum() > 1000
    assert right.centre[0] > 20 > -20 > left.centre[0]
    f = result.factors
    xyz = [axis[(k - 1) // 2::k] for axis, k in zip(grid.axes, f)]

    def centroid(tissues: set[int]) -> np.ndarray:
        index = np.argwhere(np.isin(result.tissue, list(tissues)))
        return np.array([xyz[a][index[:, a]].mean() for a in range(3)])

    spine, liver, spleen = centroid({Tissue.DISC, Tissue.CSF}), centroid({Tissue.LIVER}), centroid({Tissue.SPLEEN})
    assert left.centre[0] < spine[0] < right.centre[0]
    assert spine[1] < max(right.centre[1], left.centre[1])
    assert liver[0] > spine[0] + 20 and liver[2] > right.centre[2]
    assert spleen[0] < spine[0] - 20 and spleen[2] > left.centre[2]


def test_contrast_ranges() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        contrast = plan_contrast(rng)
        assert 165 <= contrast.cortex <= 235 and 65 <= contrast.medulla <= 125
        assert contrast.aorta >= 200 and contrast.liver <= 120


def test_other_layouts_and_unknown_cases(tmp_path: Path) -> None:
    """Label maps stored as RAS+ and as KiTS19's (z, y, x) both keep their grids (procedural labels)."""
    labels_dir = tmp_path / "labels"
    synthesize_dataset(labels_dir, 2, seed=3, progress=False)
    for folder in labels_dir.iterdir():
        (folder / "imaging.nii.gz").unlink()
    folders = synthesize_from_labels(labels_dir, tmp_path / "out", seed=1, progress=False)
    codes = set()
    for folder in folders:
        source, image = nib.load(labels_dir / folder.name / "segmentation.nii.gz"), nib.load(folder / "imaging.nii.gz")
        assert image.shape == source.shape and np.array_equal(image.affine, source.affine)
        codes.add(nib.aff2axcodes(image.affine))
        assert (folder / "segmentation.nii.gz").read_bytes() == (labels_dir / folder.name /
                                                                 "segmentation.nii.gz").read_bytes()
    assert codes == {("R", "A", "S"), ("I", "P", "L")}
    with pytest.raises(InvalidInputError, match="case_00099"):
        synthesize_from_labels(labels_dir, tmp_path / "none", seed=1, progress=False, cases=["case_00099"])


def test_empty_label_map_renders() -> None:
    ct = render_around_labels(np.zeros((96, 80, 30), dtype=np.uint8), (3.5, 3.5, 5.0), np.random.default_rng(0))
    assert ct.shape == (96, 80, 30) and ct.dtype == np.int16 and ct.max() > 0
