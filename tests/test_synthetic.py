"""Tests of the procedural phantoms: determinism, files and orientations, labels, anatomy, difficulty."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from kidneyseg.io import load_ct, load_label_map
from kidneyseg.synthetic import make_phantom, random_geometry, synthesize_dataset
from kidneyseg.synthetic.kidney import plan_kidneys
from kidneyseg.synthetic.procedural import KITS_CODES, RAS_CODES, synthesize_case
from kidneyseg.synthetic.shapes import KIDNEY_TISSUES, Tissue
from kidneyseg.synthetic.torso import plan_body

SEED = 11
CASES = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthesize_dataset(tmp_path_factory.mktemp("phantoms"), CASES, SEED, progress=True)


@pytest.fixture(scope="module")
def loaded(dataset: list[Path]) -> list[tuple]:
    """(image Volume, label Volume) per case, read with the package's own loaders."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [(load_ct(c / "imaging.nii.gz"), load_label_map(c / "segmentation.nii.gz")) for c in dataset]


def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World mm (n, 3) of voxel indices (n, 3)."""
    return indices @ affine[:3, :3].T + affine[:3, 3]


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return _world(affine, np.argwhere(mask).astype(float)).mean(axis=0)


def _best_window_dice(ct: np.ndarray, target: np.ndarray, lo: int = -300, hi: int = 800, step: int = 5):
    """Best Dice of ``ct`` in [a, b) against ``target`` over a grid of windows (a, b), via histograms."""
    edges = np.arange(lo, hi + step, step)
    values = np.clip(ct, lo, hi - 1)
    all_counts = np.concatenate([[0], np.cumsum(np.histogram(values, edges)[0])])
    hit_counts = np.concatenate([[0], np.cumsum(np.histogram(values[target], edges)[0])])
    inside = all_counts[None, :] - all_counts[:, None]
    hits = hit_counts[None, :] - hit_counts[:, None]
    dice = np.where(np.triu(np.ones_like(hits), 1) > 0, 2 * hits / np.maximum(inside + target.sum(), 1), 0.0)
    a, b = np.unravel_index(int(dice.argmax()), dice.shape)
    return float(dice.max()), int(edges[a]), int(edges[b])


def test_make_phantom_is_deterministic_and_typed() -> None:
    shape, spacing = random_geometry(np.random.default_rng(5))
    ct_a, labels_a = make_phantom(np.random.default_rng(1), shape, spacing)
    ct_b, labels_b = make_phantom(np.random.default_rng(1), shape, spacing)
    ct_c, labels_c = make_phantom(np.random.default_rng(2), shape, spacing)
    assert ct_a.dtype == np.int16 and labels_a.dtype == np.uint8
    assert ct_a.shape == labels_a.shape == shape
    assert np.array_equal(ct_a, ct_b) and np.array_equal(labels_a, labels_b)
    assert not np.array_equal(ct_a, ct_c) and not np.array_equal(labels_a, labels_c)


def test_random_geometry_is_demo_sized() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        (nx, ny, nz), (sx, sy, sz) = random_geometry(rng)
        assert 96 <= nx <= 128 and 80 <= ny <= 112 and 40 <= nz <= 90
        assert 2.6 <= sx == sy <= 3.6 and 2.5 <= sz <= 5.0
        assert 170 <= nz * sz <= 270


def test_nephrectomy_rate() -> None:
    rng = np.random.default_rng(0)
    absent = 0
    for _ in range(400):
        body, _ = plan_body(rng, (112, 96, 60), (3.2, 3.2, 3.5))
        absent += sum(not k.present for k in plan_kidneys(rng, body))
    assert 0.09 < absent / 400 < 0.21


def test_dataset_layout_and_round_trip(dataset: list[Path], loaded: list[tuple]) -> None:
    assert [c.name for c in dataset] == [f"case_{i:05d}" for i in range(CASES)]
    for index, (image, labels) in enumerate(loaded):
        phantom, affine = synthesize_case(SEED, index)
        assert image.array.shape == labels.array.shape == phantom.ct.shape
        assert image.file_shape == labels.file_shape
        assert np.array_equal(image.affine, labels.affine)
        assert np.array_equal(image.file_affine, labels.file_affine)
        np.testing.assert_allclose(image.affine, affine, atol=1e-3)
        assert np.all(np.abs(affine[:3, 3]) > 1.0)
        assert np.array_equal(image.array, phantom.ct.astype(np.float32))
        assert np.array_equal(labels.array, phantom.labels)
        assert nib.load(dataset[index] / "imaging.nii.gz").get_data_dtype() == np.int16
        assert nib.load(dataset[index] / "segmentation.nii.gz").get_data_dtype() == np.uint8


def test_both_orientations_occur(dataset: list[Path]) -> None:
    codes = set()
    for case in dataset:
        image, seg = nib.load(case / "imaging.nii.gz"), nib.load(case / "segmentation.nii.gz")
        assert nib.aff2axcodes(image.affine) == nib.aff2axcodes(seg.affine)
        codes.add(nib.aff2axcodes(image.affine))
        if nib.aff2axcodes(image.affine) == KITS_CODES:
            matrix = image.affine[:3, :3]
            assert matrix[0, 2] < 0 and matrix[1, 1] < 0 and matrix[2, 0] < 0
            assert np.count_nonzero(matrix) == 3
    assert codes == {RAS_CODES, KITS_CODES}


def test_case_does_not_depend_on_case_count(dataset: list[Path], tmp_path: Path) -> None:
    fewer = synthesize_dataset(tmp_path, 2, SEED, progress=False)
    for small, large in zip(fewer, dataset[:2], strict=False):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            a, b = nib.load(small / name), nib.load(large / name)
            assert np.array_equal(a.affine, b.affine)
            assert np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    other = synthesize_dataset(tmp_path / "other", 1, SEED + 1, progress=False)[0]
    first = np.asanyarray(nib.load(dataset[0] / "imaging.nii.gz").dataobj)
    second = np.asanyarray(nib.load(other / "imaging.nii.gz").dataobj)
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_every_case_has_kidney_and_tumour(loaded: list[tuple]) -> None:
    for _, labels in loaded:
        assert set(np.unique(labels.array).tolist()) == {0, 1, 2}


def test_liver_and_right_kidney_are_on_the_patients_right(loaded: list[tuple]) -> None:
    """RAS+: the liver, and the kidney nearer it, have larger world x than the spine (midline)."""
    pairs = 0
    for index, (image, labels) in enumerate(loaded):
        tissue = synthesize_case(SEED, index)[0].tissue
        ct, affine = image.array, image.affine
        spine_x = _centroid(ct >= 500, affine)[0]
        assert abs(spine_x - _centroid(ct > -500, affine)[0]) < 20
        liver = _centroid(tissue == Tissue.LIVER, affine)
        spleen = _centroid(tissue == Tissue.SPLEEN, affine)
        assert liver[0] > spine_x + 20 and spleen[0] < spine_x - 20
        components, count = ndimage.label(labels.array > 0)
        sizes = np.bincount(components.ravel())[1:]
        kidneys = [_centroid(components == i + 1, affine) for i in range(count) if sizes[i] > 0.2 * sizes.max()]
        assert 1 <= len(kidneys) <= 2
        assert all(abs(k[0] - spine_x) > 30 for k in kidneys)
        if len(kidneys) == 2:  # else a nephrectomy: the remaining kidney may be either one
            near_liver = min(kidneys, key=lambda k: np.linalg.norm(k - liver))
            far = max(kidneys, key=lambda k: np.linalg.norm(k - liver))
            assert near_liver[0] > spine_x > far[0]
            pairs += 1
    assert pairs >= 2


def test_no_single_hu_window_segments_the_kidneys(loaded: list[tuple]) -> None:
    found = []
    for image, labels in loaded:
        dice, a, b = _best_window_dice(image.array, labels.array > 0)
        found.append(dice)
        print(f"best HU window [{a}, {b}): kidney+tumour Dice {dice:.3f}")
    assert max(found) < 0.75


def test_cortex_is_bright_and_shares_its_range_with_other_organs() -> None:
    for index in range(3):
        phantom, _ = synthesize_case(SEED, index)
        ct, tissue = phantom.ct.astype(float), phantom.tissue
        cortex = ct[tissue == Tissue.CORTEX].mean()
        assert 150 <= cortex <= 250
        in_range = (ct >= 150) & (ct <= 250) & (phantom.labels == 0)
        assert not np.isin(tissue[in_range], list(KIDNEY_TISSUES)).any()
        assert in_range.sum() > 1000
        others = {Tissue(t).name for t in np.unique(tissue[in_range]) if (tissue[in_range] == t).sum() > 50}
        assert {"BONE", "ARTERY"} <= others, others
