"""Intensity normalisation and the inputs of each stage."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def clipped_stats(hu: np.ndarray, hu_min: float, hu_max: float,
                  ready: Callable[[int, int, int], None] | None = None) -> tuple[float, float]:
    """Mean and standard deviation of the CT clipped to [hu_min, hu_max]: the z-score of ``normalize_ct``.

    Estimated on every STATS_STRIDE-th voxel along each axis (a regular eighth of the voxels), as nnU-Net
    estimates its normalisation from a sample of voxels: on ``benchmarks/predict_speed.py``'s 512 x 512 x
    300 CT the mean moved by 0.07 HU and the SD by 0.17 HU (0.2 %) against all voxels (the real CT in
    ``../shared``: 0.3 and 0.1 HU), and the pass took 0.09 s instead of 0.59 s. Computed over slabs of at
    most SLAB_VOXELS (one slab's clipped copy at a time), combined exactly (Chan et al.'s pairwise
    update), so that no copy of the whole CT is made; each slab in place in its float32 copy, summed in
    float64, on one thread (torch's std_mean, multithreaded, made prediction's reading thread wait for its
    cores while the CT was still arriving). ``ready(2, lo, hi)``, if given, is called before
    planes [lo, hi) along Z are read: a CT still arriving (``io.Volume.arriving``) is summed as it comes.
    """
    planes = hu.shape[2]
    hu = hu[::STATS_STRIDE, ::STATS_STRIDE, ::STATS_STRIDE]
    count, mean, m2 = 0, 0.0, 0.0
    step = max(1, SLAB_VOXELS // max(1, hu.shape[0] * hu.shape[1]))
    for z in range(0, hu.shape[2], step):
        if ready is not None:
            ready(2, z * STATS_STRIDE, min(planes, (z + step) * STATS_STRIDE))
        slab = np.clip(hu[:, :, z:z + step], hu_min, hu_max, dtype=np.float32)
        n, slab_mean = slab.size, float(slab.mean(dtype=np.float64))
        slab -= np.float32(slab_mean)
        np.square(slab, out=slab)
        slab_m2 = float(slab.sum(dtype=np.float64))
        delta = slab_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += slab_m2 + delta**2 * count * n / total
        count = total
    return mean, (m2 / count) ** 0.5


STATS_STRIDE = 2
# Voxels (of the sample) per slab: 4 MiB of float32, 16 of every second plane of a 512 x 512 CT. Small
# enough to start on a CT's first planes while the rest is still being decompressed.
SLAB_VOXELS = 2**20


def normalize_ct(hu: np.ndarray, hu_min: float, hu_max: float,
                 stats: tuple[float, float] | None = None) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and z-score over the whole image (statistics from ``clipped_stats``), as
    the paper does.

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
