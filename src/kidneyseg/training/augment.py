"""Training augmentation with MONAI: flips on all three axes and rotations of axial slices.

Each call draws from a NumPy RandomState the caller passes in, so a training epoch's
augmentation is fixed by (seed, epoch) and a resumed run repeats it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd, RandRotated

from kidneyseg.config import StageConfig

KEYS = ("image", "label")


def make_augment(stage: StageConfig) -> Compose:
    """Transforms for {"image": (1, X, Y, Z) float, "label": (1, X, Y, Z)} tensors.

    ``range_z`` rotates in the (X, Y) plane, i.e. within axial slices for RAS+ arrays.
    Images are interpolated bilinearly, labels nearest; the border value fills the corners.
    """
    flips = [RandFlipd(keys=KEYS, prob=stage.flip_prob, spatial_axis=axis) for axis in range(3)]
    rotate = RandRotated(keys=KEYS, range_z=math.radians(stage.rotate_deg), prob=1.0 if stage.rotate_deg else 0.0,
                         mode=("bilinear", "nearest"), padding_mode="border", keep_size=True)
    return Compose([*flips, rotate])


def augment(transform: Compose, image: torch.Tensor, label: torch.Tensor,
            rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
    transform.set_random_state(state=rng)
    out = transform({"image": image, "label": label})
    # MONAI returns MetaTensors; their __torch_function__ hook on every operation of the network's
    # forward and backward passes made training steps about 1.5x slower, so hand back plain tensors.
    return _plain(out["image"]), _plain(out["label"])


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    plain = tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor
    return plain.contiguous()
