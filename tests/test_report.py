"""Tests of kidneyseg.report: overlay and training-curve PNGs, and slice orientation.

Volumes are (X, Y, Z) in RAS+ voxel order: a larger X index is further to the patient's
right, a larger Y further anterior, a larger Z further superior.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kidneyseg.report import _display_slices, save_overlay_png, save_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (20, 16, 12)  # X, Y, Z


def _ct() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(40.0, 80.0, SHAPE).astype(np.float32)


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100


def _assert_only(folder: Path, names: list[str]) -> None:
    """The folder holds exactly ``names``: no temp files were left behind."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_overlay_png_written(tmp_path) -> None:
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[3:8, 5:10, 4:8] = 1
    pred[4:6, 6:8, 5:7] = 2
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[3:9, 5:11, 4:9] = 1
    truth[4:7, 6:9, 5:7] = 2
    out = tmp_path / "sub" / "case_00000.png"
    result = save_overlay_png(_ct(), pred, out, truth=truth, spacing_mm=(0.8, 0.8, 3.0), title="case_00000")
    assert result == out
    _assert_png(out)
    _assert_only(out.parent, ["case_00000.png"])


def test_overlay_png_empty_prediction(tmp_path) -> None:
    empty = np.zeros(SHAPE, dtype=np.uint8)
    out = save_overlay_png(_ct(), empty, tmp_path / "empty.png")
    _assert_png(out)
    truth = empty.copy()
    truth[2:4, 2:4, 2:4] = 1
    save_overlay_png(_ct(), empty, tmp_path / "empty_with_truth.png", truth=truth)
    _assert_png(tmp_path / "empty_with_truth.png")
    _assert_only(tmp_path, ["empty.png", "empty_with_truth.png"])


def test_overlay_png_overwrites(tmp_path) -> None:
    out = tmp_path / "a.png"
    out.write_bytes(b"old")
    save_overlay_png(_ct(), np.zeros(SHAPE, np.uint8), out)
    _assert_png(out)
    _assert_only(tmp_path, ["a.png"])


def test_axial_radiological_orientation() -> None:
    """Patient right (large X) is on the image's left; anterior (large Y) is at the top."""
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[15:18, 12:15, 5:7] = 1  # patient right, anterior
    axial, coronal = _display_slices(_ct(), pred, None, (1.0, 1.0, 1.0))
    assert axial.name == "axial" and coronal.name == "coronal"
    assert axial.pred.shape == (SHAPE[1], SHAPE[0])  # rows Y, columns X
    rows, cols = np.nonzero(axial.pred)
    assert rows.size > 0
    assert cols.max() < SHAPE[0] / 2  # image left half
    assert rows.max() < SHAPE[1] / 2  # image top half
    assert axial.markers == ("R", "L", "A", "P")


def test_axial_patient_left_on_image_right() -> None:
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[1:4, 2:5, 5:7] = 2  # small X: patient left; small Y: posterior
    axial, _ = _display_slices(_ct(), pred, None, (1.0, 1.0, 1.0))
    rows, cols = np.nonzero(axial.pred)
    assert cols.min() >= SHAPE[0] / 2
    assert rows.min() >= SHAPE[1] / 2


def test_coronal_orientation_and_aspect() -> None:
    """Coronal: patient right on the left, superior (large Z) at the top; aspect from spacing."""
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[15:18, 6:9, 9:11] = 1
    axial, coronal = _display_slices(_ct(), pred, None, (0.75, 0.5, 3.0))
    assert coronal.pred.shape == (SHAPE[2], SHAPE[0])  # rows Z, columns X
    rows, cols = np.nonzero(coronal.pred)
    assert cols.max() < SHAPE[0] / 2
    assert rows.max() < SHAPE[2] / 2
    assert coronal.markers == ("R", "L", "S", "I")
    assert axial.aspect == pytest.approx(0.5 / 0.75)
    assert coronal.aspect == pytest.approx(3.0 / 0.75)


def test_slices_follow_prediction_then_truth_then_centre() -> None:
    ct = _ct()
    pred = np.zeros(SHAPE, dtype=np.uint8)
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[5, 3, 9] = 1
    axial, coronal = _display_slices(ct, pred, truth, (1, 1, 1))
    assert (axial.index, coronal.index) == (9, 3)
    np.testing.assert_array_equal(axial.ct, ct[:, :, 9].T[::-1, ::-1])
    pred[:, 10:12, 2] = 2
    axial, coronal = _display_slices(ct, pred, truth, (1, 1, 1))
    assert (axial.index, coronal.index) == (2, 10)
    assert axial.truth is not None and not axial.truth.any()  # truth is not in this slice
    axial, coronal = _display_slices(ct, np.zeros_like(pred), None, (1, 1, 1))
    assert (axial.index, coronal.index) == (SHAPE[2] // 2, SHAPE[1] // 2)


def test_slices_land_on_foreground_between_two_blobs() -> None:
    pred = np.zeros(SHAPE, dtype=np.uint8)
    pred[2:4, 2:4, 1] = 1
    pred[15:17, 12:14, 10] = 1  # centroid z = 5.5 falls between the blobs
    axial, coronal = _display_slices(_ct(), pred, None, (1, 1, 1))
    assert axial.pred.any() and coronal.pred.any()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        _display_slices(_ct(), np.zeros((2, 2, 2), np.uint8), None, (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        _display_slices(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), None, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        _display_slices(_ct(), np.zeros(SHAPE, np.uint8), None, (1, 0, 1))


def test_training_curves(tmp_path) -> None:
    rows = [
        {"epoch": 1, "train_loss": 1.2, "val_dice": 0.3, "val_dice_tumor": 0.1},
        {"epoch": 2, "train_loss": 0.9},
        {"epoch": 3, "train_loss": 0.7, "val_dice": 0.6, "val_dice_tumor": float("nan"), "val_loss": 0.8},
    ]
    out = save_training_curves(rows, tmp_path / "curves.png", title="run 1")
    assert out == tmp_path / "curves.png"
    _assert_png(out)
    save_training_curves([], tmp_path / "empty.png")
    _assert_png(tmp_path / "empty.png")
    _assert_only(tmp_path, ["curves.png", "empty.png"])
