"""Intensity normalisation and the inputs of each stage."""

from __future__ import annotations

import numpy as np
import torch


def normalize_ct(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and z-score over the whole image, as the paper does.

    Example: with the paper's window [-95, 155], air (-1000 HU) and fat become the same
    lowest value and bone the highest. Returns float32 of the input's shape.
    """
    clipped = np.clip(hu, hu_min, hu_max, dtype=np.float32)
    # torch's std_mean is multithreaded and does not materialise a float64 copy as numpy's std
    # does (about 10x faster on a 512 x 512 x 300 CT); float32 accuracy is ample for a z-score.
    std_t, mean_t = torch.std_mean(torch.from_numpy(clipped), correction=0)
    mean, std = float(mean_t), float(std_t)
    clipped -= mean
    clipped /= max(std, 1e-6)
    return clipped
