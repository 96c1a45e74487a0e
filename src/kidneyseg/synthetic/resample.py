"""Coarse copies of (X, Y, Z) arrays and linear interpolation back to the full grid.

A coarse copy with integer factor f along an axis of n voxels keeps the full-grid indices
p_k = k * f + (f - 1) // 2 for k = 0 .. ceil(n / f) - 1. ``upsample`` interpolates linearly
between those samples (holding the first and last value beyond them), so a factor of 1 is the
identity. Large volumes are upsampled a z-range at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Factors = tuple[int, int, int]


def factors_for(spacing_mm: Sequence[float], target_mm: Sequence[float]) -> Factors:
    """Integer factors (per axis X, Y, Z) that bring voxels of ``spacing_mm`` closest to ``target_mm``."""
    f = [max(1, int(np.floor(t / s + 0.5))) for s, t in zip(spacing_mm, target_mm, strict=True)]
    return f[0], f[1], f[2]


def coarse_slices(factors: Sequence[int]) -> tuple[slice, slice, slice]:
    """Index slices selecting a coarse copy's samples from a full (X, Y, Z) array."""
    s = [slice((f - 1) // 2, None, f) for f in factors]
    return s[0], s[1], s[2]


def take_coarse(array: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The coarse copy (nearest samples, no averaging) of a full (X, Y, Z) array."""
    return np.ascontiguousarray(array[coarse_slices(factors)])


def upsample_axis(coarse: np.ndarray, axis: int, factor: int, start: int, stop: int) -> np.ndarray:
    """Full-grid values at indices ``start .. stop - 1`` along ``axis`` of a coarse float array (a new array)."""
    if factor == 1:
        return np.take(coarse, np.arange(start, stop), axis=axis)
    size = coarse.shape[axis]
    t = np.clip((np.arange(start, stop) - (factor - 1) // 2) / factor, 0.0, size - 1)
    lo = np.floor(t).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    shape = [1] * coarse.ndim
    shape[axis] = -1
    weight = (t - lo).astype(coarse.dtype).reshape(shape)
    low = np.take(coarse, lo, axis=axis)
    low += (np.take(coarse, hi, axis=axis) - low) * weight
    return low


def upsample(coarse: np.ndarray, factors: Sequence[int], shape: Sequence[int],
             z_range: tuple[int, int] | None = None) -> np.ndarray:
    """The full-grid (X, Y, Z) array of ``shape`` (only slices ``z_range`` when given) interpolated
    linearly from a coarse float copy. Always a new array."""
    z0, z1 = z_range if z_range is not None else (0, shape[2])
    out = upsample_axis(coarse, 2, factors[2], z0, z1)
    if factors[1] > 1:
        out = upsample_axis(out, 1, factors[1], 0, shape[1])
    if factors[0] > 1:
        out = upsample_axis(out, 0, factors[0], 0, shape[0])
    return out
