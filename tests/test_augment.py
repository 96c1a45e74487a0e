"""Augmentation keeps image and label aligned: flips and the axial rotation move both the same way."""

from dataclasses import replace

import numpy as np
from conftest import micro_stage

from kidneyseg.geometry import Box
from kidneyseg.stage_input import Source, stage_image, stage_labels
from kidneyseg.training.augment import draw_warp


def test_rotation_and_flips_move_image_and_label_together():
    """An L-shaped object on an asymmetric grid: the label is the image's own support, so after
    any flip and rotation the image (trilinear) thresholded at 0.5 must give the label (nearest),
    up to the object's rim; a label rotated about other axes, or flipped alone, would not."""
    shape = (40, 28, 12)
    label = np.zeros(shape, np.float32)
    label[8:30, 6:12, 3:9] = 1
    label[8:14, 6:22, 3:9] = 1
    box = Box((0, 0, 0), shape)
    stage = replace(micro_stage("segmenter"), flip_prob=0.5, rotate_deg=30.0, translate_vox=2)
    moved = 0
    for seed in range(6):
        warp = draw_warp(stage, np.random.RandomState(seed))
        out_image = stage_image(Source(label), box, shape, (0.8, 0.8, 2.0), warp)
        out_label = stage_labels(Source(label.astype(np.uint8)), box, shape, (0.8, 0.8, 2.0), warp)
        assert out_image.shape == out_label.shape == (1, *shape)
        inside, truth = (out_image[0] > 0.5).numpy(), out_label[0].numpy().astype(bool)
        disagree = np.count_nonzero(inside != truth)
        assert disagree <= 0.05 * np.count_nonzero(truth), (seed, disagree)
        assert abs(np.count_nonzero(truth) - label.sum()) <= 0.1 * label.sum()  # rotated, not resized
        moved += not np.array_equal(truth, label.astype(bool))
    assert moved == 6  # every draw changed the object (a rotation of up to 30 degrees at least)


def test_rotation_is_rigid_in_millimetres_on_anisotropic_voxels():
    """A disc of radius 10 mm drawn on 0.5 x 1.0 mm voxels stays a disc of the same area when rotated
    by 45 degrees; rotating voxel indices instead would shear it into an ellipse of another shape."""
    spacing = (0.5, 1.0, 1.0)
    x, y = np.meshgrid((np.arange(80) - 39.5) * 0.5, np.arange(40) - 19.5, indexing="ij")
    disc = (x**2 + y**2 <= 100).astype(np.uint8)[..., None].repeat(4, axis=2)
    box = Box((0, 0, 0), disc.shape)
    from kidneyseg.stage_input import Warp

    turned = stage_labels(Source(disc), box, disc.shape, spacing, Warp(rotate_rad=np.pi / 4))[0].numpy()
    assert abs(int(turned.sum()) - int(disc.sum())) <= 0.03 * disc.sum()
    extent_x = np.ptp(np.flatnonzero(turned[:, 20, 0])) * 0.5
    assert 18 <= extent_x <= 21  # still 20 mm across along X


def test_a_larger_box_shows_the_anatomy_smaller():
    """scale 1.25 samples a box 1.25 x larger on each axis into the same grid: a centred cube keeps
    its centre and its volume shrinks by 1.25**3; scale_range 0 never draws a scale."""
    from kidneyseg.stage_input import Warp

    cube = np.zeros((40, 40, 40), np.uint8)
    cube[10:30, 10:30, 10:30] = 1
    box = Box((0, 0, 0), cube.shape)
    smaller = stage_labels(Source(cube), box, cube.shape, warp=Warp(scale=1.25))[0].numpy()
    assert abs(smaller.sum() / cube.sum() - 1 / 1.25**3) < 0.05
    assert np.array_equal(np.argwhere(smaller).mean(axis=0), np.argwhere(cube).mean(axis=0))
    stage = micro_stage("segmenter")
    assert all(draw_warp(stage, np.random.RandomState(s)).scale == 1.0 for s in range(5))
    scaled = [draw_warp(replace(stage, scale_range=0.2), np.random.RandomState(s)).scale for s in range(50)]
    assert min(scaled) >= 1 / 1.2 - 1e-9 and max(scaled) <= 1.2 + 1e-9 and len(set(scaled)) == 50
