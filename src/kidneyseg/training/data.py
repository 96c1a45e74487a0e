"""Turning cached samples into network inputs: one interpolation per draw (kidneyseg.stage_input),
then intensity augmentation; and the draws of an epoch as a torch Dataset for worker processes."""

from __future__ import annotations

import numpy as np
import torch

from kidneyseg.config import StageConfig
from kidneyseg.errors import InvalidInputError
from kidneyseg.stage_input import IDENTITY, level_shift, stage_image, stage_labels
from kidneyseg.training.augment import (
    add_viscera,
    augment_intensity,
    class_curves,
    cut_box,
    draw_warp,
    homogenise_kidney,
    insert_tumour,
    make_intensity,
    redraw_tumour,
)
from kidneyseg.training.cache import Sample


def load_sample(sample: Sample, stage: StageConfig, rng: np.random.RandomState | None,
                intensity=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (1, *input_size) float32, label (1, *input_size) int64) for one cached sample.

    With ``rng`` (training) the draw's warp (flips, axial rotation and, for stage 2, a shift of up to
    ``translate_vox``) comes from it, for the segmenter with chance ``cut_box_prob`` a box cut short
    (``cut_box``), then, with chance ``phase_prob``, the kidney's nephrographic look (its
    sinus filled too with chance ``phase_sinus_prob``), with
    chance ``tumor_look_prob`` another tumour look, for the segmenter with chance ``synthetic_tumor_prob`` a
    synthetic tumour, with chance ``viscera_prob`` soft tissue against the kidney, with chance
    ``class_curve_prob`` an intensity curve of its own for each class, and ``intensity``
    (kidneyseg.training.augment) from the same generator; without it the sample is returned exactly as
    inference would see its box. With ``level_reference`` the crop's level is shifted by its true kidney and
    tumour, with or without ``rng`` (inference shifts by its first pass's labels instead).
    A cache file that cannot be read raises InvalidInputError naming the case.
    """
    try:
        image_source, label_source = sample.image_source, sample.label_source
        warp = IDENTITY if rng is None else draw_warp(stage, rng)
        box = sample.box
        cut = rng is not None and stage.stage == "segmenter" and stage.cut_box_prob
        if cut and rng.random_sample() < stage.cut_box_prob:
            box = cut_box(box, rng)
        image = stage_image(image_source, box, stage.input_size, sample.spacing_mm, warp)
        label = stage_labels(label_source, box, stage.input_size, sample.spacing_mm, warp)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cached sample of case {sample.case_id} is unreadable ({exc})", sample.image) from exc
    if rng is not None and stage.phase_prob and rng.random_sample() < stage.phase_prob:
        sinus = bool(stage.phase_sinus_prob) and rng.random_sample() < stage.phase_sinus_prob
        image = homogenise_kidney(image, label, rng, sinus=sinus, offset=stage.phase_offset,
                                  texture=stage.phase_texture)
    if rng is not None and stage.tumor_look_prob and rng.random_sample() < stage.tumor_look_prob:
        image = redraw_tumour(image, label, rng)
    if (rng is not None and stage.stage == "segmenter" and stage.synthetic_tumor_prob
            and rng.random_sample() < stage.synthetic_tumor_prob):
        image, label = insert_tumour(image, label, rng)
    if rng is not None and stage.viscera_prob and rng.random_sample() < stage.viscera_prob:
        image = add_viscera(image, label, rng)
    if rng is not None and stage.class_curve_prob and rng.random_sample() < stage.class_curve_prob:
        image = class_curves(image, label, rng)
    if stage.level_reference:  # after every change of the crop's content, before the global intensity changes
        image = image + level_shift(image, label > 0, image_source.window_values())
    if rng is not None and intensity is not None:
        image = augment_intensity(intensity, image, rng)
    if stage.stage == "localizer":
        label = (label > 0).long()  # kidney-or-tumour: the cache keeps the two apart for the augmentations
    return image, label


class Draws(torch.utils.data.Dataset):
    """The draws of one epoch: item k is ``train[order[k]]`` augmented with a generator seeded by
    (seed, epoch, k) alone, so that any number of worker processes, in any order, and a resumed run
    produce the same inputs. An item that fails comes back as its error's one-line message (a
    string), for the training loop to raise in its own process."""

    def __init__(self, train: list[Sample], order: np.ndarray, stage: StageConfig, epoch: int):
        self.train, self.order, self.stage, self.epoch = train, order, stage, epoch
        self.intensity = make_intensity(stage)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        sample = self.train[self.order[k]]
        rng = np.random.RandomState([self.stage.seed, self.epoch, k])
        try:
            return load_sample(sample, self.stage, rng, self.intensity)
        except Exception as exc:  # noqa: BLE001 - any failure becomes one line naming the case
            return f"draw {k + 1} of epoch {self.epoch + 1} (case {sample.case_id}) failed: {exc}"


def keep_items(batch: list) -> list:
    """DataLoader collate function: the items as they are (stacked by the training loop)."""
    return batch
