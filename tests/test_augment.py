"""Augmentation keeps image and label aligned: flips and the axial rotation move both the same way."""

from dataclasses import replace

import numpy as np
import torch
from conftest import micro_stage

from kidneyseg.training.augment import augment, make_augment


def test_rotation_and_flips_move_image_and_label_together():
    """An L-shaped object on an asymmetric grid: the label is the image's own support, so after
    any flip and rotation the image (bilinear) thresholded at 0.5 must give the label (nearest),
    up to the object's rim; a label rotated about other axes, or flipped alone, would not."""
    shape = (40, 28, 12)
    label = np.zeros(shape, np.float32)
    label[8:30, 6:12, 3:9] = 1
    label[8:14, 6:22, 3:9] = 1
    image, target = torch.from_numpy(label)[None], torch.from_numpy(label)[None]
    stage = replace(micro_stage("segmenter"), flip_prob=0.5, rotate_deg=30.0, intensity_prob=0.0)
    moved = 0
    for seed in range(6):
        out_image, out_label = augment(make_augment(stage), image, target, np.random.RandomState(seed))
        assert out_image.shape == out_label.shape == (1, *shape)
        inside, truth = (out_image[0] > 0.5).numpy(), out_label[0].round().numpy().astype(bool)
        disagree = np.count_nonzero(inside != truth)
        assert disagree <= 0.05 * np.count_nonzero(truth), (seed, disagree)
        assert abs(np.count_nonzero(truth) - label.sum()) <= 0.1 * label.sum()  # rotated, not resized
        moved += not np.array_equal(truth, label.astype(bool))
    assert moved == 6  # every draw changed the object (a rotation of up to 30 degrees at least)
