"""Turning cached samples into network inputs: jitter (stage 2), resize, augment."""

from __future__ import annotations

import numpy as np
import torch

from kidneyseg.config import StageConfig
from kidneyseg.errors import InvalidInputError
from kidneyseg.geometry import Box, crop, resize_image, resize_labels
from kidneyseg.training.augment import augment
from kidneyseg.training.cache import Sample


def load_sample(sample: Sample, stage: StageConfig, rng: np.random.RandomState | None,
                transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, *input_size) float32, label (1, *input_size) int64) for one cached sample.

    With ``rng`` (training) stage-2 boxes are shifted by up to ``translate_vox`` per axis and
    ``transform`` augments; without it the sample is returned as the pipeline would see it.
    A cache file that cannot be read raises InvalidInputError naming the case.
    """
    try:
        image = np.load(sample.image, mmap_mode="r")
        label = np.load(sample.label, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cached sample of case {sample.case_id} is unreadable ({exc})", sample.image) from exc
    if sample.box is not None:
        box = sample.box
        if rng is not None and stage.translate_vox:
            shift = rng.randint(-stage.translate_vox, stage.translate_vox + 1, size=3)
            box = Box(tuple(int(v) for v in np.add(box.lo, shift)), tuple(int(v) for v in np.add(box.hi, shift)))
        image, label = crop(np.asarray(image), box, float(np.min(image))), crop(np.asarray(label), box, 0)
    image_t = resize_image(np.asarray(image, dtype=np.float32), stage.input_size)
    label_t = torch.from_numpy(np.ascontiguousarray(resize_labels(np.asarray(label), stage.input_size)))
    label_t = label_t[None].long()
    if rng is not None and transform is not None:
        image_t, label_t = augment(transform, image_t, label_t, rng)
        label_t = label_t.round().long()
    return image_t, label_t
