"""Normalisation: slab-wise statistics equal those of the regular sample of the CT they are defined on, and a
crop normalises as the whole does."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyseg import preprocess
from kidneyseg.geometry import Box, crop
from kidneyseg.preprocess import clipped_stats, normalize_ct


def test_slab_statistics_equal_the_sampled_ct(monkeypatch):
    hu = np.random.default_rng(0).normal(40, 300, size=(30, 20, 37)).astype(np.float32)
    hu[:, :, :5] = -1000  # slabs that differ: the combination must weigh them right
    clipped = np.clip(hu[::2, ::2, ::2], -79, 304).astype(np.float64)  # every second voxel per axis
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 15 * 10 * 4)  # 4 sampled slices a slab, the last one shorter
    mean, std = clipped_stats(hu, -79, 304)
    assert mean == pytest.approx(clipped.mean(), rel=1e-6) and std == pytest.approx(clipped.std(), rel=1e-6)


def test_a_crop_normalised_with_the_whole_cts_statistics_equals_the_crop_of_the_whole():
    hu = np.random.default_rng(1).normal(40, 300, size=(40, 30, 20)).astype(np.float32)
    whole = normalize_ct(hu, -95, 155)
    box = Box((-5, 10, 2), (25, 40, 18))  # overhangs the CT on two axes: padded
    stats = clipped_stats(hu, -95, 155)
    part = normalize_ct(crop(hu, box, float(hu.min())), -95, 155, stats)
    assert np.array_equal(part, crop(whole, box, float(whole.min())))
    assert whole.mean() == pytest.approx(0, abs=0.03) and whole.std() == pytest.approx(1, rel=0.03)  # sampled stats


def test_sampled_statistics_are_close_to_all_voxels():
    """A CT-sized slab with air around a body, an organ with odd-numbered edges and noise: the regular
    sample's mean and SD are within 1 % of the SD of all voxels (a sample of every 8th voxel per axis is
    not: the edges' share of the sample moves)."""
    rng = np.random.default_rng(2)
    hu = np.full((512, 512, 24), -1000, np.float32)
    hu[41:471, 95:431, :] = rng.normal(40, 60, size=(430, 336, 24))
    hu[201:263, 151:219, 3:21] = 300 + rng.normal(0, 30, size=(62, 68, 18))
    clipped = np.clip(hu, -79, 304).astype(np.float64)
    mean, std = clipped_stats(hu, -79, 304)
    assert abs(mean - clipped.mean()) < 0.01 * clipped.std() and abs(std - clipped.std()) < 0.01 * clipped.std()
