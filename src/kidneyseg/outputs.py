"""From network logits to probabilities and labels, for the two kinds of output a stage can have.

* Classes (the paper): one channel per label (background, kidney, tumour), softmax, label = argmax.
* Nested regions (``loss="regions"``, as nnU-Net trains KiTS21): one sigmoid channel per region
  ``label >= k`` for k = 1 .. classes - 1, i.e. kidney+tumour and tumour. A voxel's label is the
  number of leading regions it is inside (probability > 0.5): tumour only inside kidney+tumour.

Training's validation and inference both call these, so a stage is read the same way everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

THRESHOLD = 0.5


def probabilities(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """Per-channel probabilities of logits (N, C, X, Y, Z): sigmoid per region or softmax over classes."""
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=1)


def to_labels(probs: np.ndarray | torch.Tensor, regions: bool) -> np.ndarray:
    """uint8 labels (X, Y, Z) from probabilities (C, X, Y, Z) (averaged or resized ones too)."""
    probs = torch.as_tensor(probs)
    if not regions:
        # NumPy's argmax: torch's argmax(0) over a few channels took 0.19 s against 0.03 s (128³ x 3,
        # 2 cores, one measurement while another job ran).
        return np.argmax(probs.float().cpu().numpy(), axis=0).astype(np.uint8)
    inside = (probs > THRESHOLD).to(torch.uint8)
    return torch.cumprod(inside, dim=0).sum(0, dtype=torch.uint8).numpy()


def foreground(probs: np.ndarray | torch.Tensor, regions: bool) -> np.ndarray:
    """Probability (X, Y, Z) of kidney or tumour from probabilities (C, X, Y, Z): the first region's, or one
    minus the background's."""
    probs = torch.as_tensor(probs).float()
    return (probs[0] if regions else 1.0 - probs[0]).cpu().numpy()


def region_targets(labels: torch.Tensor, channels: int) -> torch.Tensor:
    """Float targets (N, channels, X, Y, Z) of the nested regions ``label >= k`` from labels (N, 1, X, Y, Z)."""
    levels = torch.arange(1, channels + 1, device=labels.device).view(1, channels, 1, 1, 1)
    return (labels >= levels).float()
