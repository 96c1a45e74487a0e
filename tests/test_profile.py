"""The training data profile and the input_unlike_training flag, on hand-made CTs with known statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kidneyseg import io
from kidneyseg.measure import measure
from kidneyseg.profile import PROFILE_FILE, build_profile, case_profile, read_profile, unlike_training


def _ct(spacing=(0.8, 0.8, 2.5), body_hu=40.0, kidney_hu=160.0, shape=(60, 50, 20)):
    """A body of ``body_hu`` in air with a kidney block of ``kidney_hu`` (label 1)."""
    array = np.full(shape, -1000.0, np.float32)
    array[5:55, 5:45] = body_hu
    labels = np.zeros(shape, np.uint8)
    labels[10:20, 10:20, 5:15] = 1
    array[labels == 1] = kidney_hu
    return io.canonical_volume(array, np.diag([*spacing, 1.0])), labels


def _dataset(tmp_path, variants):
    for i, kwargs in enumerate(variants):
        volume, labels = _ct(**kwargs)
        folder = tmp_path / f"case_{i:05d}"
        folder.mkdir()
        io.save_nifti(volume.array, volume.affine, folder / "imaging.nii.gz")
        io.save_nifti(labels, volume.affine, folder / "segmentation.nii.gz")
    return io.layout.kits_cases(tmp_path)


def test_case_profile_reads_spacing_and_medians():
    volume, labels = _ct(spacing=(0.7, 0.9, 3.0), body_hu=30.0, kidney_hu=180.0)
    profile = case_profile(volume, labels)
    assert profile["in_plane_mm"] == pytest.approx(0.8) and profile["slice_mm"] == pytest.approx(3.0)
    assert profile["body_hu"] == pytest.approx(30.0)  # the body is mostly soft tissue
    assert profile["kidney_hu"] == pytest.approx(180.0)
    assert np.isnan(case_profile(volume, None)["kidney_hu"])


def test_inputs_unlike_the_training_data_are_named(tmp_path):
    cases = _dataset(tmp_path, [{"kidney_hu": 150.0}, {"kidney_hu": 200.0, "spacing": (0.9, 0.9, 3.0)}])
    profile = build_profile(cases)
    assert profile["ranges"]["kidney_hu"] == [150.0, 200.0]
    assert profile["ranges"]["in_plane_mm"] == pytest.approx([0.8, 0.9])

    like, labels = _ct(kidney_hu=175.0)
    assert unlike_training(profile, like, labels) == []
    coarse, labels = _ct(spacing=(3.0, 3.0, 3.0))  # 3 mm in-plane where training saw 0.8-0.9 mm
    assert [r.split(" 3.0")[0] for r in unlike_training(profile, coarse, labels)] == ["in-plane spacing"]
    plain, labels = _ct(kidney_hu=35.0)  # a kidney without contrast
    reasons = unlike_training(profile, plain, labels)
    assert len(reasons) == 1 and reasons[0].startswith("labelled kidney median 35.0 HU")
    raw, labels = _ct(body_hu=1064.0, kidney_hu=1184.0)  # stored without its rescale: +1024
    assert len(unlike_training(profile, raw, labels)) == 2

    flags = measure(labels, raw, profile).flags
    assert "input_unlike_training" in [f.name for f in flags]
    assert "input_unlike_training" not in [f.name for f in measure(labels, raw, None).flags]


def test_training_records_the_profile_and_prediction_reads_it(trained_model, phantom_dir):
    from kidneyseg.inference import load_model_dir

    stored = json.loads((trained_model / PROFILE_FILE).read_text())
    assert stored["cases"] == [c.case_id for c in io.layout.kits_cases(phantom_dir)]
    assert load_model_dir(trained_model).data_profile == read_profile(trained_model) == stored
