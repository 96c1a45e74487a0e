"""Training augmentation with MONAI: flips on all three axes, rotations of axial slices and,
with ``intensity_prob`` > 0, intensity changes of the image (shift, scale, noise, blur).

Each call draws from a NumPy RandomState the caller passes in, so a training epoch's
augmentation is fixed by (seed, epoch) and a resumed run repeats it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

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
    return Compose([*flips, rotate, *_intensity(stage.intensity_prob)])


def _intensity(prob: float) -> list:
    """Each applied with chance ``prob``, on the normalised image (z-scored over the clipped HU window,
    where one unit is roughly 100 HU): shift by up to +-0.2 (about +-20 HU, a global HU offset),
    scale by up to +-15 % (contrast timing), Gaussian noise of SD up to 0.1 (about 10 HU, added to
    the noise already in the scan) and Gaussian blur of 0.5-1 voxel (partial volume, soft kernels).
    The paper uses none of these; they keep a model from fitting one scanner's (or renderer's) look."""
    if not prob:
        return []
    return [RandShiftIntensityd(keys="image", offsets=0.2, prob=prob),
            RandScaleIntensityd(keys="image", factors=0.15, prob=prob),
            RandGaussianNoised(keys="image", std=0.1, prob=prob),
            RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=prob)]


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
