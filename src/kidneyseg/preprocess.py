"""Intensity normalisation and the inputs of each stage."""

from __future__ import annotations

import numpy as np


def normalize_ct(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and z-score over the whole image, as the paper does.

    Example: with the paper's window [-95, 155], air (-1000 HU) and fat become the same
    lowest value and bone the highest. Returns float32 of the input's shape.
    """
    clipped = np.clip(hu, hu_min, hu_max, dtype=np.float32)
    mean = float(clipped.mean(dtype=np.float64))
    std = float(clipped.std(dtype=np.float64))
    clipped -= mean
    clipped /= max(std, 1e-6)
    return clipped
