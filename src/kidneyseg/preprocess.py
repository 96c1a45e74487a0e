"""Intensity normalisation and the inputs of each stage."""

from __future__ import annotations

import numpy as np
import torch


def clipped_stats(hu: np.ndarray, hu_min: float, hu_max: float) -> tuple[float, float]:
    """Mean and standard deviation of the CT clipped to [hu_min, hu_max]: the z-score of ``normalize_ct``.

    Computed over slabs of at most SLAB_VOXELS (one slab's clipped copy at a time), combined exactly
    (Chan et al.'s pairwise update), so that no copy of the whole CT is made. torch's std_mean per
    slab: multithreaded, and unlike numpy's std it materialises no float64 copy.
    """
    count, mean, m2 = 0, 0.0, 0.0
    step = max(1, SLAB_VOXELS // max(1, hu.shape[0] * hu.shape[1]))
    for z in range(0, hu.shape[2], step):
        slab = torch.from_numpy(np.clip(hu[:, :, z:z + step], hu_min, hu_max, dtype=np.float32))
        std_t, mean_t = torch.std_mean(slab, correction=0)
        n, slab_mean = slab.numel(), float(mean_t)
        delta = slab_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += float(std_t) ** 2 * n + delta**2 * count * n / total
        count = total
    return mean, (m2 / count) ** 0.5


SLAB_VOXELS = 2**24  # 64 MiB of float32 per slab


def normalize_ct(hu: np.ndarray, hu_min: float, hu_max: float,
                 stats: tuple[float, float] | None = None) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and z-score over the whole image, as the paper does.

    Example: with the paper's window [-95, 155], air (-1000 HU) and fat become the same
    lowest value and bone the highest. ``stats`` (mean, std) from ``clipped_stats`` of the whole
    CT lets a part of it (a crop) be normalised exactly as the whole would be. Returns float32 of
    the input's shape.
    """
    mean, std = clipped_stats(hu, hu_min, hu_max) if stats is None else stats
    clipped = np.clip(hu, hu_min, hu_max, dtype=np.float32)
    clipped -= np.float32(mean)
    clipped /= np.float32(max(std, 1e-6))
    return clipped
