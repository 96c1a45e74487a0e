"""Normalisation: slab-wise statistics equal the whole CT's, and a crop normalises as the whole does."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyseg import preprocess
from kidneyseg.geometry import Box, crop
from kidneyseg.preprocess import clipped_stats, normalize_ct


def test_slab_statistics_equal_the_whole_ct(monkeypatch):
    hu = np.random.default_rng(0).normal(40, 300, size=(30, 20, 37)).astype(np.float32)
    hu[:, :, :5] = -1000  # slabs that differ: the combination must weigh them right
    clipped = np.clip(hu, -79, 304).astype(np.float64)
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 30 * 20 * 4)  # 4 slices a slab, the last one shorter
    mean, std = clipped_stats(hu, -79, 304)
    assert mean == pytest.approx(clipped.mean(), rel=1e-6) and std == pytest.approx(clipped.std(), rel=1e-6)


def test_a_crop_normalised_with_the_whole_cts_statistics_equals_the_crop_of_the_whole():
    hu = np.random.default_rng(1).normal(40, 300, size=(40, 30, 20)).astype(np.float32)
    whole = normalize_ct(hu, -95, 155)
    box = Box((-5, 10, 2), (25, 40, 18))  # overhangs the CT on two axes: padded
    stats = clipped_stats(hu, -95, 155)
    part = normalize_ct(crop(hu, box, float(hu.min())), -95, 155, stats)
    assert np.array_equal(part, crop(whole, box, float(whole.min())))
    assert whole.mean() == pytest.approx(0, abs=1e-5) and whole.std() == pytest.approx(1, rel=1e-5)
