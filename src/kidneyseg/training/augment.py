"""Training augmentation: the geometric part of a draw (flips on all three axes, a rotation of axial
slices, optionally a scale and, for stage 2, a shift of the crop box) as a Warp that kidneyseg.stage_input folds into
the draw's one interpolation; with ``intensity_prob`` > 0, intensity changes of the image (shift,
scale, noise, blur), and with ``texture_prob`` > 0 texture changes (gamma, lower resolution), with MONAI.

Each call draws from a NumPy RandomState the caller passes in, so a draw's augmentation is fixed by
the generator's seed (kidneyseg.training.data seeds it with (seed, epoch, draw)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSimulateLowResolution,
)

from kidneyseg.config import StageConfig
from kidneyseg.stage_input import Warp


def draw_warp(stage: StageConfig, rng: np.random.RandomState) -> Warp:
    """Flips (each axis with ``flip_prob``), a uniform axial rotation in [-rotate_deg, rotate_deg], with
    ``scale_range`` a log-uniform scale, and, for the segmenter, a whole-voxel shift in
    [-translate_vox, translate_vox] per axis."""
    flip = tuple(bool(f) for f in rng.random_sample(3) < stage.flip_prob)
    angle = math.radians(rng.uniform(-stage.rotate_deg, stage.rotate_deg)) if stage.rotate_deg else 0.0
    shift = (0.0, 0.0, 0.0)
    if stage.stage == "segmenter" and stage.translate_vox:
        shift = tuple(float(v) for v in rng.randint(-stage.translate_vox, stage.translate_vox + 1, size=3))
    scale = 1.0
    if stage.scale_range:
        scale = float(np.exp(rng.uniform(-1, 1) * np.log1p(stage.scale_range)))
    return Warp(shift, angle, flip, scale)


def make_intensity(stage: StageConfig) -> Compose | None:
    """Each applied with chance ``intensity_prob``, on the normalised image (z-scored over the clipped HU
    window, where one unit is roughly 100 HU): shift by up to +-0.2 (about +-20 HU, a global HU offset),
    scale by up to +-15 % (contrast timing), Gaussian noise of SD up to 0.1 (about 10 HU, added to
    the noise already in the scan) and Gaussian blur of 0.5-1 voxel (partial volume, soft kernels).
    Then each with chance ``texture_prob`` (nnU-Net's texture augmentations): a gamma curve with
    gamma in [0.7, 1.5] on the image scaled to [0, 1], its mean and SD restored (contrast between
    tissues changes, not the overall level), and a simulated lower resolution (the image resized down
    to 0.5-1 of its size, nearest, and back up, trilinear: the fine texture of a soft kernel or thick
    slices). The paper uses none of these; they keep a model from fitting one scanner's (or
    renderer's) look. None when both chances are 0."""
    prob, texture = stage.intensity_prob, stage.texture_prob
    transforms = []
    if prob:
        transforms += [RandShiftIntensity(offsets=0.2, prob=prob), RandScaleIntensity(factors=0.15, prob=prob),
                       RandGaussianNoise(std=0.1, prob=prob),
                       RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=prob)]
    if texture:
        transforms += [RandAdjustContrast(gamma=(0.7, 1.5), retain_stats=True, prob=texture),
                       RandSimulateLowResolution(zoom_range=(0.5, 1.0), prob=texture)]
    return Compose(transforms) if transforms else None


def augment_intensity(transform: Compose, image: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    transform.set_random_state(state=rng)
    out = transform(image)
    # MONAI returns MetaTensors; their __torch_function__ hook on every operation of the network's
    # forward and backward passes made training steps about 1.5x slower, so hand back a plain tensor.
    plain = out.as_tensor() if isinstance(out, MetaTensor) else out
    return plain.contiguous()
