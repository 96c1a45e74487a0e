"""The training recipe's parts beyond the paper: tumour-aware sampling, intensity augmentation,
per-case validation Dice, and the cache's record of which crops hold tumour."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import micro_stage
from scipy import ndimage

from kidneyseg.config import preset
from kidneyseg.geometry import Box
from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.training.augment import (
    SYNTHETIC_RADIUS,
    TUMOUR_LEVEL,
    TUMOUR_TEXTURE,
    VISCERA_LEVEL,
    VISCERA_REACH,
    add_viscera,
    augment_intensity,
    class_curves,
    homogenise_kidney,
    insert_tumour,
    make_intensity,
    redraw_tumour,
)
from kidneyseg.training.cache import Sample, build_cache
from kidneyseg.training.checkpoint import load_state, save_state
from kidneyseg.training.data import load_sample
from kidneyseg.training.fit import draw_order, epoch_draws, fit, validate


def _samples(flags: list[bool], volumes: list[float] | None = None) -> list[Sample]:
    volumes = volumes or [1.0] * len(flags)
    return [Sample(f"case_{i:05d}", None, None, Box((0, 0, 0), (1, 1, 1)), tumor_ml=volume if flag else 0.0)
            for i, (flag, volume) in enumerate(zip(flags, volumes, strict=True))]


def test_uniform_draws_are_shuffled_passes():
    stage = replace(preset("paper").segmenter, samples_per_epoch=10)
    order = draw_order(_samples([True, False, False, False]), stage, np.random.RandomState(3))
    assert len(order) == 10
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [0, 1, 2, 3]


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_tumor_fraction_sets_share_of_tumor_crops(fraction):
    flags = [True] + [False] * 9  # uniform draws would give tumour crops 10 % of the time
    stage = replace(preset("paper").segmenter, samples_per_epoch=4000, tumor_fraction=fraction)
    order = draw_order(_samples(flags), stage, np.random.RandomState(0))
    share = np.mean([flags[i] for i in order])
    expected = fraction + (1 - fraction) * 0.1
    assert abs(share - expected) < 0.03
    # fixed by the random state, so a resumed epoch draws the same crops
    assert np.array_equal(order, draw_order(_samples(flags), stage, np.random.RandomState(0)))


def test_volume_weight_draws_tumours_in_proportion_to_their_volume():
    # three samples with tumours of 10, 30 and 60 mL and one without; every draw replaced (fraction 1)
    flags, volumes = [True, True, True, False], [10.0, 30.0, 60.0, 0.0]
    stage = replace(preset("paper").localizer, samples_per_epoch=6000, tumor_fraction=1.0, tumor_weight="volume")
    order = draw_order(_samples(flags, volumes), stage, np.random.RandomState(0))
    shares = np.bincount(order, minlength=4) / len(order)
    assert np.allclose(shares, [0.1, 0.3, 0.6, 0.0], atol=0.02)
    uniform = draw_order(_samples(flags, volumes), replace(stage, tumor_weight="uniform"), np.random.RandomState(0))
    assert np.allclose(np.bincount(uniform, minlength=4) / len(uniform), [1 / 3, 1 / 3, 1 / 3, 0.0], atol=0.02)


def test_empty_crops_are_drawn_only_for_their_share():
    # six kidney crops (one with tumour) and four empty crops, one of them with a sliver of tumour at its edge
    train = _samples([True] + [False] * 5) + [replace(s, case_id=f"e{i}", empty=True)
                                              for i, s in enumerate(_samples([True] + [False] * 3))]
    stage = replace(preset("paper").segmenter, samples_per_epoch=8000, tumor_fraction=0.5, empty_fraction=0.25)
    order = draw_order(train, stage, np.random.RandomState(0))
    empty = np.array([train[i].empty for i in order])
    assert abs(empty.mean() - 0.25) < 0.02
    assert np.allclose(np.bincount(order[empty], minlength=10)[6:] / empty.sum(), 0.25, atol=0.03)
    # the tumour's share is taken among the kidney draws: 0.5 + 0.5 / 6 of them, then a quarter of all replaced
    tumour = np.mean([train[i].has_tumor and not train[i].empty for i in order])
    assert abs(tumour - 0.75 * (0.5 + 0.5 / 6)) < 0.02
    # without the setting no empty crop is drawn, and the kidney draws are those of a cache without empty crops
    plain = replace(stage, empty_fraction=0.0)
    assert not any(train[i].empty for i in draw_order(train, plain, np.random.RandomState(0)))
    assert np.array_equal(draw_order(train, plain, np.random.RandomState(0)),
                          draw_order(train[:6], plain, np.random.RandomState(0)))
    # one pass over the kidney crops when samples_per_epoch is 0
    per_pass = replace(plain, samples_per_epoch=0, tumor_fraction=0.0)
    assert sorted(draw_order(train, per_pass, np.random.RandomState(1))) == list(range(6))
    assert epoch_draws(train, per_pass) == 6, "the learning rate's schedule counts the same epoch"


def test_empty_boxes_lie_in_the_body_beside_the_kidneys_not_on_them():
    from kidneyseg.training.cache import BODY_HU, EMPTY_MAX_OVERLAP, _overlap, empty_boxes

    image = np.full((120, 100, 80), -1000.0, np.float32)
    image[10:110, 10:90, :] = 40.0  # the body, through every slice; air around it
    kidneys = [Box((20, 30, 0), (44, 54, 32)), Box((70, 30, 0), (94, 54, 32))]  # at the CT's first slice
    boxes = empty_boxes(image, kidneys, "case_00007", 6)
    assert len(boxes) == 6
    assert boxes == empty_boxes(image, kidneys, "case_00007", 6), "fixed by the case"
    assert boxes != empty_boxes(image, kidneys, "case_00008", 6)
    sizes = {k.size_vox for k in kidneys}
    for box in boxes:
        assert box.size_vox in sizes
        assert box.inside(image.shape) == box, "shifted inside the CT, as every crop box"
        assert np.mean(image[box.lo[0]:box.hi[0], box.lo[1]:box.hi[1], box.lo[2]:box.hi[2]] > BODY_HU) > 0.5
        assert all(_overlap(box, k) <= EMPTY_MAX_OVERLAP * np.prod(box.size_vox) for k in kidneys)
        assert box.lo[0] >= 20 - 24 and box.hi[0] <= 94 + 24 + 12 and box.hi[1] <= 54 + 24 + 12
    assert empty_boxes(image, kidneys, "case_00007", 0) == [] and empty_boxes(image, [], "case_00007", 2) == []
    # a body with no room beside the kidneys (air everywhere else) gives no box
    air = np.full_like(image, -1000.0)
    air[20:44, 30:54, 0:32] = 40.0
    assert empty_boxes(air, kidneys[:1], "case_00007", 2) == []


def test_cache_holds_empty_crops_only_when_asked(phantom_dir, tmp_path):
    from kidneyseg import io
    from kidneyseg.training.cache import EMPTY_CROPS

    cases, pipeline = io.layout.kits_cases(phantom_dir), preset("tiny").pipeline
    plain = build_cache(cases, tmp_path / "cache", micro_stage("segmenter"), pipeline, progress=False)
    assert plain and not any(s.empty for s in plain)
    stage = micro_stage("segmenter", "empty_fraction=0.2")
    samples = build_cache(cases, tmp_path / "cache", stage, pipeline, progress=False)  # a new fingerprint: rebuilt
    empties = [s for s in samples if s.empty]
    assert [s for s in samples if not s.empty] == plain
    assert len(empties) == EMPTY_CROPS * len(cases)
    for sample in empties:
        kidney = [s for s in plain if s.case_id == sample.case_id]
        assert sample.box.size_vox in {s.box.size_vox for s in kidney}
        image, label = load_sample(sample, stage, None)
        assert image.shape == label.shape == (1, *stage.input_size)
        # mostly outside the kidneys: at most a sliver of the crop is labelled
        assert (label > 0).float().mean() < 0.15
    assert build_cache(cases, tmp_path / "cache", replace(stage, empty_fraction=0.5), pipeline,
                       progress=False) == samples, "the share is a drawing setting: the same cache"


def test_intensity_augmentation_changes_the_image_and_repeats():
    stage = replace(micro_stage("segmenter"), intensity_prob=1.0)
    image = torch.randn(1, 16, 16, 16)
    first = augment_intensity(make_intensity(stage), image.clone(), np.random.RandomState(1))
    again = augment_intensity(make_intensity(stage), image.clone(), np.random.RandomState(1))
    assert not torch.allclose(first, image, atol=0.05)
    assert torch.equal(first, again)
    assert type(first) is torch.Tensor  # not a MetaTensor, whose hooks slow every training step
    assert make_intensity(replace(stage, intensity_prob=0.0)) is None


def _roughness(image: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring voxels along the last axis."""
    return (image[..., 1:] - image[..., :-1]).abs().mean().item()


def test_texture_augmentation_smooths_fine_texture_and_repeats():
    """Gamma and a simulated lower resolution: white noise loses much of its voxel-to-voxel contrast
    (the resolution), and the same random state gives the same image."""
    stage = replace(micro_stage("segmenter"), intensity_prob=0.0, texture_prob=1.0)
    image = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    first = augment_intensity(make_intensity(stage), image.clone(), np.random.RandomState(2))
    again = augment_intensity(make_intensity(stage), image.clone(), np.random.RandomState(2))
    assert torch.equal(first, again) and type(first) is torch.Tensor
    assert _roughness(first) < 0.8 * _roughness(image)
    assert len(make_intensity(stage).transforms) == 2  # only the texture part: intensity_prob is 0
    assert make_intensity(replace(stage, texture_prob=0.0)) is None


def test_phase_augmentation_flattens_the_kidney_pattern_and_keeps_the_rest():
    """A kidney of alternating 'cortex' and 'medulla' slabs (2 units apart) around a 'sinus' of fat, with
    voxel noise: the slabs' contrast is gone, noise of the image's level is there, the sinus, tumour and
    background are untouched, the parenchyma's level is the slabs' mean plus the drawn offset, and one
    random state gives one image."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 32, 32, 32, dtype=torch.int64)
    label[0, 4:28, 4:28, 4:20] = 1
    label[0, 4:28, 4:28, 20:28] = 2
    stripes = (torch.arange(32) // 4 % 2).float() * 2  # 4-voxel slabs along x: 0, 2, 0, 2 ...
    image = torch.where(label == 1, stripes[None, :, None, None], torch.full_like(label, -2, dtype=torch.float32))
    sinus = torch.zeros_like(label, dtype=torch.bool)
    sinus[0, 14:18, 14:18, 10:14] = True
    image[sinus] = -2.0  # fat inside the kidney label, as KiTS labels the renal sinus
    image = image + torch.where(label == 2, 3.0, 0.0) + 0.1 * torch.randn(1, 32, 32, 32, generator=gen)
    out = homogenise_kidney(image.clone(), label, np.random.RandomState(3))
    again = homogenise_kidney(image.clone(), label, np.random.RandomState(3))
    assert torch.equal(out, again)
    inner = torch.zeros_like(label, dtype=torch.bool)
    inner[0, 10:22, 10:22, 8:16] = True  # kidney voxels away from its edges
    inner &= ~sinus
    bright, dark = inner & (stripes[None, :, None, None] > 0), inner & (stripes[None, :, None, None] == 0)
    assert image[bright].mean() - image[dark].mean() > 1.9
    assert abs(out[bright].mean() - out[dark].mean()) < 0.2  # the pattern is gone
    offset = np.random.RandomState(3).uniform(-0.1, 0.3)
    assert abs(out[inner].mean().item() - (1.0 + offset)) < 0.1  # the slabs' mean, moved by the offset
    assert 0.07 < out[dark].std() < 0.13  # noise of the image's SD (0.1), not smoothed away
    sinus_core = torch.zeros_like(sinus)
    sinus_core[0, 15:17, 15:17, 11:13] = True  # the sinus's rim may blend with the parenchyma around it
    untouched = (label != 1) | sinus_core
    assert torch.equal(out[untouched], image[untouched])  # sinus fat, tumour and background bitwise unchanged
    no_kidney = torch.where(label == 1, 0, label)
    assert torch.equal(homogenise_kidney(image, no_kidney, np.random.RandomState(3)), image)
    # A lower offset range (StageConfig.phase_offset) draws a kidney dimmer than its slabs' mean.
    dim = homogenise_kidney(image.clone(), label, np.random.RandomState(3), offset=(-0.7, -0.5))
    assert abs(dim[inner].mean().item() - (1.0 + np.random.RandomState(3).uniform(-0.7, -0.5))) < 0.1
    assert dim[inner].mean() < 0.55 and torch.equal(dim[untouched], image[untouched])
    # With the sinus filled: the sinus fat takes the parenchyma's level and noise, the rest as before.
    filled = homogenise_kidney(image.clone(), label, np.random.RandomState(3), sinus=True)
    assert image[sinus_core].mean() < -1.8
    assert abs(filled[sinus_core].mean().item() - (1.0 + offset)) < 0.15
    assert abs(filled[inner].mean().item() - (1.0 + offset)) < 0.1
    assert 0.05 < filled[sinus].std() < 0.15
    assert torch.equal(filled[label != 1], image[label != 1])


def test_phase_texture_gives_the_flat_kidney_smooth_uneven_enhancement():
    """With phase_texture the nephrographic kidney varies smoothly around its level (an SD drawn from the range,
    on a scale of voxels, not voxel noise); without it the draws and the image are those of the flat kidney."""
    label = torch.zeros(1, 40, 40, 40, dtype=torch.int64)
    label[0, 4:36, 4:36, 4:36] = 1
    stripes = (torch.arange(40) // 4 % 2).float() * 2
    image = torch.where(label == 1, stripes[None, :, None, None], torch.full_like(label, -2, dtype=torch.float32))
    image = image + 0.05 * torch.randn(1, 40, 40, 40, generator=torch.Generator().manual_seed(0))
    inner = torch.zeros_like(label, dtype=torch.bool)
    inner[0, 10:30, 10:30, 10:30] = True

    def smooth_sd(x: torch.Tensor) -> float:  # the SD left after blurring over 2 voxels: slow variation only
        return float(ndimage.gaussian_filter(x[0].numpy(), 2.0)[inner[0].numpy()].std())

    flat = homogenise_kidney(image.clone(), label, np.random.RandomState(5))
    assert torch.equal(homogenise_kidney(image.clone(), label, np.random.RandomState(5), texture=(0.0, 0.0)), flat)
    uneven = homogenise_kidney(image.clone(), label, np.random.RandomState(5), texture=(0.3, 0.3))
    assert smooth_sd(flat) < 0.03  # flat: the voxel noise blurs away
    assert 0.1 < smooth_sd(uneven) < 0.3  # a field of SD 0.3 over about 2.5 voxels, a little blurred
    assert abs(uneven[inner].mean() - flat[inner].mean()) < 0.15  # around the same level (a smooth field's mean varies)
    assert torch.equal(uneven[label == 0], image[label == 0])
    assert torch.equal(uneven, homogenise_kidney(image.clone(), label, np.random.RandomState(5), texture=(0.3, 0.3)))


def test_tumour_look_moves_the_tumour_relative_to_the_kidney_and_keeps_the_rest():
    """A bright, strongly textured tumour beside a kidney of level 1 over a background at -2: the tumour's
    new mean is the parenchyma's plus the drawn share of its height above the floor, it keeps the drawn
    share of its own texture, its voxel noise stays at the image's level, the kidney and background are
    bitwise unchanged, one random state gives one image, and nothing changes without a tumour."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 32, 32, 32, dtype=torch.int64)
    label[0, 4:28, 4:28, 4:18] = 1
    label[0, 4:28, 4:28, 18:30] = 2
    texture = (torch.arange(32) // 4 % 2).float() * 2 - 1  # +-1 slabs along y inside the tumour
    image = torch.full((1, 32, 32, 32), -2.0)
    image[label == 1] = 1.0
    image = torch.where(label == 2, 3.0 + texture[None, None, :, None], image)
    image = image + 0.1 * torch.randn(1, 32, 32, 32, generator=gen)
    out = redraw_tumour(image.clone(), label, np.random.RandomState(5))
    assert torch.equal(out, redraw_tumour(image.clone(), label, np.random.RandomState(5)))
    draws = np.random.RandomState(5)
    level, keep = draws.uniform(*TUMOUR_LEVEL), draws.uniform(*TUMOUR_TEXTURE)
    inner = torch.zeros_like(label, dtype=torch.bool)
    inner[0, 8:24, 8:24, 21:27] = True  # tumour voxels away from its edges
    floor = float(image.min())
    assert abs(out[inner].mean().item() - (1.0 + level * (1.0 - floor))) < 0.05
    slabs = inner & (texture[None, None, :, None] > 0)
    contrast = out[slabs].mean() - out[inner & ~slabs].mean()
    assert abs(contrast.item() - 2 * keep) < 0.1  # the +-1 slabs scaled by the kept share
    flat = inner & ~slabs
    assert 0.07 < out[flat].std() < 0.13  # the voxel noise (0.1) stays, whatever share of texture is kept
    assert torch.equal(out[label != 2], image[label != 2])
    assert torch.equal(redraw_tumour(image, torch.where(label == 2, 1, label), np.random.RandomState(5)), image)


def test_synthetic_tumour_is_drawn_and_labelled_inside_the_kidney():
    """A homogeneous kidney of level 1 (with a real tumour at one end) over a background at -2, voxel noise
    0.1: each draw adds one region, labelled tumour, grown from a kidney voxel, of about the drawn size, darker
    or brighter than the parenchyma by at least the smallest drawn share of its height; nothing outside it
    changes (image bitwise, labels), the real tumour stays tumour, one random state gives one result, the
    localizer's labels get its foreground class, and a sample without kidney is returned as it is."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 48, 48, 48, dtype=torch.int64)
    label[0, 8:40, 8:40, 6:34] = 1
    label[0, 8:40, 8:40, 34:42] = 2
    image = torch.where(label == 1, 1.0, -2.0) + torch.where(label == 2, 2.0, 0.0)
    image = image + 0.1 * torch.randn(1, 48, 48, 48, generator=gen)
    kidney_radius = (3 * float((label == 1).sum()) / (4 * np.pi)) ** (1 / 3)
    signs = set()
    for seed in range(12):
        out, out_label = insert_tumour(image.clone(), label.clone(), np.random.RandomState(seed))
        again, again_label = insert_tumour(image.clone(), label.clone(), np.random.RandomState(seed))
        assert torch.equal(out, again) and torch.equal(out_label, again_label)
        new = (out_label == 2) & (label != 2)
        assert new.any()
        assert torch.equal(out[~new], image[~new])  # only the synthetic tumour's voxels change
        assert torch.equal(out_label[~new], label[~new]) and bool((out_label[label == 2] == 2).all())
        assert (label[new] == 1).float().mean() > 0.25  # grown from the kidney, maybe bulging out of it
        share = np.exp(np.random.RandomState(seed).uniform(*np.log(SYNTHETIC_RADIUS)))
        expected = 4 / 3 * np.pi * (share * kidney_radius) ** 3  # stretched by up to a third per axis
        assert 0.2 * expected < float(new.sum()) < 3.0 * expected
        inner = new & (label == 1)
        difference = float(out[inner].mean() - image[inner].mean())
        height = 1.0 - float(image.min())
        assert abs(difference) > 0.04 * height  # never level with the kidney
        signs.add(difference > 0)
    assert signs == {True, False}  # darker and brighter tumours both drawn
    as_localizer = torch.where(label == 2, 1, label)
    _, localizer_label = insert_tumour(image.clone(), as_localizer, np.random.RandomState(0), tumour_label=1)
    assert set(localizer_label.unique().tolist()) == {0, 1}
    assert int(localizer_label.sum()) > int(as_localizer.sum())
    no_kidney = torch.where(label == 1, 0, label)
    same, same_label = insert_tumour(image, no_kidney, np.random.RandomState(0))
    assert torch.equal(same, image) and torch.equal(same_label, no_kidney)


def _kidney_sample(folder, label: np.ndarray) -> tuple[Sample, np.ndarray]:
    """A cached sample of ``label`` (32³) whose image is the kidney at 1 over fat at -2 with voxel noise 0.1."""
    image = np.where(label == 1, 1.0, -2.0).astype(np.float32)
    image += 0.1 * np.random.default_rng(0).standard_normal(image.shape).astype(np.float32)
    np.save(folder / "image.npy", image)
    np.save(folder / "label.npy", label)
    return Sample("case_00000", folder / "image.npy", folder / "label.npy", Box((0, 0, 0), (32, 32, 32))), image


def test_synthetic_tumours_reach_the_segmenters_draws_only(tmp_path):
    """Through load_sample: with synthetic_tumor_prob=1 every segmenter draw of a kidney without tumour gains
    tumour voxels; the localizer's draws, with the same setting, stay as they are."""
    label = np.zeros((32, 32, 32), np.uint8)
    label[6:26, 6:26, 6:26] = 1
    sample, image = _kidney_sample(tmp_path, label)
    plain = ["input_size=32,32,32", "flip_prob=0", "rotate_deg=0", "translate_vox=0", "intensity_prob=0",
             "synthetic_tumor_prob=1"]
    for seed in range(3):
        _, seg_label = load_sample(sample, micro_stage("segmenter", *plain), np.random.RandomState(seed))
        assert int((seg_label == 2).sum()) > 0
        loc_image, loc_label = load_sample(sample, micro_stage("localizer", *plain), np.random.RandomState(seed))
        assert torch.equal(loc_label[0], torch.from_numpy(label.astype(np.int64)))
        assert torch.equal(loc_image[0], torch.from_numpy(image))


def test_viscera_put_soft_tissue_in_the_fat_near_the_kidney_and_nothing_else_changes():
    """A kidney of level 1 with a tumour, in fat at the floor (-2) with voxel noise 0.1, and a slab of bright
    'bone' far off: each draw turns part of the fat within reach of the kidney into tissue whose mean lies
    near the drawn level below the kidney's (between fat and kidney), touching or close to the kidney; the kidney,
    the tumour, the bone and the fat out of reach are bitwise unchanged, labels are not an input it changes,
    one random state gives one image, and a sample without kidney or without fat is returned as it is."""
    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 64, 64, 64, dtype=torch.int64)
    label[0, 20:44, 22:42, 18:40] = 1
    label[0, 20:44, 22:42, 40:46] = 2
    image = torch.full((1, 64, 64, 64), -2.0)
    image[label == 1] = 1.0
    image[label == 2] = 0.5
    image[0, :, 58:, :] = 3.0  # bone: not fat, never changed
    image = image + 0.1 * torch.randn(1, 64, 64, 64, generator=gen)
    organ = (label[0] > 0).numpy()
    radius = (3 * float((label == 1).sum()) / (4 * np.pi)) ** (1 / 3)
    distance = torch.from_numpy(ndimage.distance_transform_edt(~organ))[None]
    for seed in range(6):
        out = add_viscera(image.clone(), label, np.random.RandomState(seed))
        assert torch.equal(out, add_viscera(image.clone(), label, np.random.RandomState(seed)))
        changed = out != image
        draws = np.random.RandomState(seed)  # add_viscera's first draws: level, texture, reach
        level, _, reach_share = draws.uniform(*VISCERA_LEVEL), draws.uniform(), draws.uniform(*VISCERA_REACH)
        reach = max(1.0, reach_share * radius)
        assert changed.any()
        assert not bool(changed[label > 0].any())  # kidney and tumour bitwise unchanged
        assert not bool(changed[0, :, 58:, :].any())  # the bone too
        assert float(distance[changed].max()) <= reach + 1e-6  # only fat within reach of the kidney
        assert float(distance[changed].min()) <= 2.0  # against the kidney, as organs lie
        solid = ndimage.binary_erosion(changed[0].numpy() | organ, iterations=2)  # past the tissue's outer rim
        core = changed & torch.from_numpy(solid)[None]
        assert core.any()
        expected = 1.0 + level * (1.0 - float(image.min()))
        assert abs(float(out[core].mean()) - expected) < 0.2
        assert -2.0 < float(out[changed].mean()) < 1.0
    no_kidney = torch.where(label == 1, 0, label)
    assert torch.equal(add_viscera(image, no_kidney, np.random.RandomState(0)), image)
    no_fat = torch.where(label > 0, image, torch.full_like(image, 3.0))
    assert torch.equal(add_viscera(no_fat, label, np.random.RandomState(0)), no_fat)


@pytest.mark.parametrize("setting", ["viscera_prob", "class_curve_prob"])
def test_content_augmentations_reach_both_stages_draws(tmp_path, setting):
    """Through load_sample: with the chance 1 (soft tissue against the kidney; each class's own intensity curve)
    the image changes in both stages' draws, the labels do not; with 0 the draw is the sample as it is."""
    label = np.zeros((32, 32, 32), np.uint8)
    label[10:22, 10:22, 10:22] = 1
    sample, image = _kidney_sample(tmp_path, label)
    plain = ["input_size=32,32,32", "flip_prob=0", "rotate_deg=0", "translate_vox=0", "intensity_prob=0"]
    for stage in ("segmenter", "localizer"):
        for prob, differs in ((1, True), (0, False)):
            out, out_label = load_sample(sample, micro_stage(stage, *plain, f"{setting}={prob}"),
                                         np.random.RandomState(1))
            assert torch.equal(out_label[0], torch.from_numpy(label.astype(np.int64)))
            assert (not torch.equal(out[0], torch.from_numpy(image))) is differs


def test_class_curves_redraw_each_class_on_its_own_curve_and_keep_the_outlines():
    """A striped kidney (levels 1 and 1.3) holding a flat tumour (0.5), in fat (-2), with bright 'bone' (3) fixing the
    image's range: each class's voxels away from the outlines go through one increasing curve of their own (their
    order kept, the range kept), so that over draws the kidney's stripes flatten or stretch and the tumour ends darker
    or brighter than the kidney, which one curve for all could never give; the labels are not an input it changes
    and one random state gives one image."""
    label = torch.zeros(1, 48, 48, 48, dtype=torch.int64)
    label[0, 4:44, 4:44, 6:36] = KIDNEY
    label[0, 8:20, 8:20, 10:22] = TUMOR
    stripes = (torch.arange(48) // 3 % 2).float() * 0.3
    image = torch.full((1, 48, 48, 48), -2.0)
    image[label == KIDNEY] = (1.0 + stripes[None, :, None, None].expand(1, 48, 48, 48))[label == KIDNEY]
    image[label == TUMOR] = 0.5
    image[0, :, :, 42:] = 3.0
    # Beyond the reach of the masks' blur (4 voxels): only the class's own curve.
    inner = {value: torch.from_numpy(ndimage.binary_erosion((label[0] == value).numpy(), np.ones((3, 3, 3)), 4))
             for value in (KIDNEY, TUMOR)}
    kidney_x = image[0][inner[KIDNEY]]
    contrast, brighter_tumour = [], []
    for seed in range(20):
        out = class_curves(image.clone(), label, np.random.RandomState(seed))
        assert torch.equal(out, class_curves(image.clone(), label, np.random.RandomState(seed)))
        assert float(out.min()) >= -2.0 - 1e-5 and float(out.max()) <= 3.0 + 1e-5
        kidney_y = out[0][inner[KIDNEY]]
        bright, dark = kidney_x > 1.15, kidney_x < 1.15
        assert float(kidney_y[bright].min()) >= float(kidney_y[dark].max()) - 1e-5  # one increasing curve
        assert float(kidney_y[bright].std()) < 1e-5 and float(kidney_y[dark].std()) < 1e-5
        tumour_y = out[0][inner[TUMOR]]
        assert float(tumour_y.std()) < 1e-5  # a flat class stays flat
        contrast.append(float(kidney_y[bright].mean() - kidney_y[dark].mean()) / 0.3)
        brighter_tumour.append(float(tumour_y.mean()) > float(kidney_y.mean()))
    assert min(contrast) < 0.7 and max(contrast) > 1.3  # the stripes flatten on some draws, stretch on others
    assert any(brighter_tumour) and not all(brighter_tumour)


class _Echo(torch.nn.Module):
    """Predicts the given label maps, one per call, as one-hot logits."""

    def __init__(self, predictions):
        super().__init__()
        self.predictions = list(predictions)

    def forward(self, image):
        pred = torch.from_numpy(self.predictions.pop(0)).long()
        return torch.nn.functional.one_hot(pred, 3).permute(3, 0, 1, 2)[None].float()


def test_segmenter_validation_pools_crops_per_case(tmp_path):
    """A kidney crop without tumour that gets one false tumour voxel costs that voxel, not a 0; an empty
    crop of the case is left out (its prediction, all kidney, would lower kidney+tumour)."""
    shape = (16, 16, 16)
    with_tumor = np.zeros(shape, np.uint8)
    with_tumor[4:12, 4:12, 4:12] = 1
    with_tumor[6:10, 6:10, 6:10] = 2
    without = np.zeros(shape, np.uint8)
    without[4:12, 4:12, 4:12] = 1
    samples = []
    for name, label in (("a", with_tumor), ("b", without)):
        np.save(tmp_path / f"{name}_image.npy", np.zeros(shape, np.float16))
        np.save(tmp_path / f"{name}_label.npy", label)
        samples.append(Sample("case_00001", tmp_path / f"{name}_image.npy", tmp_path / f"{name}_label.npy",
                              Box((0, 0, 0), shape)))
    samples.append(replace(samples[1], empty=True))
    one_false_voxel = without.copy()
    one_false_voxel[5, 5, 5] = 2
    stage = replace(micro_stage("segmenter"), input_size=shape, precision="fp32")
    echo = _Echo([with_tumor, one_false_voxel, np.ones(shape, np.uint8)])
    scores = validate(echo, samples, stage, "cpu")
    assert scores["val_tumor"] == pytest.approx(2 * 64 / (65 + 64))
    assert scores["val_kidney_tumor"] == 1.0
    assert len(echo.predictions) == 1, "the empty crop was not predicted"


@pytest.mark.parametrize("name", ["localizer", "segmenter"])
def test_cache_records_tumor_volume(phantom_dir, tmp_path, name):
    from kidneyseg import io

    stage = micro_stage(name)
    samples = build_cache(io.layout.kits_cases(phantom_dir), tmp_path / "cache", stage, preset("tiny").pipeline,
                          progress=False)
    assert samples, "the phantoms have kidneys"
    for sample in samples:
        voxels = np.count_nonzero(np.load(sample.label) == 2)
        assert sample.has_tumor == (voxels > 0)
        assert sample.tumor_ml == pytest.approx(voxels * np.prod(sample.spacing_mm) / 1000)
    assert any(s.has_tumor for s in samples)
    assert len({round(s.tumor_ml, 3) for s in samples}) > 1, "the phantoms' tumours differ in size"


@pytest.mark.parametrize("name", ["localizer", "segmenter"])
def test_cache_built_by_worker_processes_equals_the_one_built_in_process(phantom_dir, tmp_path, name):
    """Two worker processes write the same samples, in the same order, with the same arrays."""
    from kidneyseg import io

    stage, cases = micro_stage(name), io.layout.kits_cases(phantom_dir)
    alone = build_cache(cases, tmp_path / "alone", stage, preset("tiny").pipeline, progress=False)
    pooled = build_cache(cases, tmp_path / "pooled", stage, preset("tiny").pipeline, progress=False, workers=2)
    assert len(alone) == len(pooled) > len(cases) - 1
    for a, b in zip(alone, pooled, strict=True):
        assert (a.case_id, a.box, a.window, a.tumor_ml) == (b.case_id, b.box, b.window, b.tumor_ml)
        assert np.array_equal(np.load(a.image), np.load(b.image))
        assert np.array_equal(np.load(a.label), np.load(b.label))


def test_localizer_cache_keeps_the_tumour_until_a_sample_is_drawn(phantom_dir, tmp_path):
    """The localizer's cached labels keep kidney (1) and tumour (2) apart, so that the tumour-look
    augmentation can change the tumour alone; every drawn sample, augmented or not, is kidney-or-tumour
    (0/1) as the localizer's loss wants."""
    from kidneyseg import io

    stage = micro_stage("localizer", "tumor_look_prob=1.0")
    samples = build_cache(io.layout.kits_cases(phantom_dir), tmp_path / "cache", stage, preset("tiny").pipeline,
                          progress=False)
    with_tumour = [s for s in samples if s.has_tumor]
    assert with_tumour, "the phantoms have tumours"
    stored = np.load(with_tumour[0].label)
    assert set(np.unique(stored)) == {0, 1, 2}
    plain, label = load_sample(with_tumour[0], stage, None)
    assert set(torch.unique(label).tolist()) == {0, 1}
    assert torch.equal(label[0], torch.from_numpy(stored > 0).long())
    redrawn, drawn_label = load_sample(with_tumour[0], replace(stage, flip_prob=0.0, rotate_deg=0.0),
                                       np.random.RandomState(0))
    assert set(torch.unique(drawn_label).tolist()) == {0, 1}
    tumour = torch.from_numpy(stored == 2)[None]
    changed = (redrawn - plain).abs() > 1e-4
    assert changed[tumour].float().mean() > 0.5  # the tumour got another look
    far = torch.from_numpy(stored == 0)[None] & (torch.arange(stored.shape[0])[None, :, None, None] < 2)
    assert not changed[far].any()  # background away from the tumour is untouched


def test_time_budget_ends_the_epoch_early(phantom_dir, tmp_path):
    """A budget far shorter than one epoch stops after the first step, validates and saves;
    the log says how many samples that epoch drew."""
    stage = micro_stage("localizer", "samples_per_epoch=400", "epochs=3", "max_minutes=0.0001")
    result = fit(phantom_dir, tmp_path, stage, preset("tiny").pipeline, progress=False)
    rows = list(csv.DictReader((tmp_path / "localizer" / "log.csv").open()))
    assert result.epochs_done == 1 and len(rows) == 1
    assert 1 <= int(rows[0]["samples"]) < 400
    assert (tmp_path / "localizer" / "best.safetensors").is_file()
    whole = micro_stage("localizer", "epochs=1")
    unlimited = fit(phantom_dir, tmp_path / "full", whole, preset("tiny").pipeline, progress=False)
    rows = list(csv.DictReader((unlimited.run_dir / "log.csv").open()))
    assert int(rows[0]["samples"]) == whole.samples_per_epoch


def test_resuming_a_run_logged_without_samples_keeps_every_row(phantom_dir, tmp_path):
    """A run saved before log.csv had its samples column still resumes; the old row's cell is empty."""
    pipeline = preset("tiny").pipeline
    fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=1"), pipeline, progress=False)
    path = tmp_path / "localizer" / "last_state.pt"
    state = load_state(path)
    for row in state["log"]:
        del row["samples"]
    save_state(path, state)
    fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False)
    rows = list(csv.DictReader((tmp_path / "localizer" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["samples"] == "" and int(rows[1]["samples"]) == micro_stage("localizer").samples_per_epoch


def test_validation_every_n_epochs_and_after_the_last(phantom_dir, tmp_path):
    """val_every=2 over 3 epochs validates after epochs 2 and 3 only; best.safetensors comes from one of them."""
    stage = micro_stage("segmenter", "epochs=3", "val_every=2", "loss=regions", "deep_supervision_loss=true")
    fit(phantom_dir, tmp_path, stage, preset("tiny").pipeline, progress=False)
    rows = list(csv.DictReader((tmp_path / "segmenter" / "log.csv").open()))
    assert [r["val_dice"] != "" for r in rows] == [False, True, True]
    from kidneyseg.weights import load_model

    _, saved, meta = load_model(tmp_path / "segmenter" / "best.safetensors")
    assert meta["epoch"] in (2, 3) and saved.loss == "regions" and saved.deep_supervision_loss
    assert meta["val_dice"] == max(float(r["val_dice"]) for r in rows[1:])


def test_training_without_bf16_support_computes_in_fp32_and_keeps_the_setting(phantom_dir, tmp_path, monkeypatch):
    """A bf16 stage on a CPU without native bf16 trains and validates in fp32 (emulated bf16 is ~100x slower),
    with a warning; the run folder keeps bf16, so that a bf16 device resumes or predicts in bf16."""
    import kidneyseg.training.fit as fit_module
    from kidneyseg.weights import autocast, load_model

    used = []

    def recording(precision, device):
        used.append(precision)
        return autocast(precision, device)

    monkeypatch.setattr(fit_module, "autocast", recording)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    stage = micro_stage("localizer", "epochs=1", "precision=bf16")
    with pytest.warns(UserWarning, match="no bf16 support; training in fp32"):
        fit(phantom_dir, tmp_path, stage, preset("tiny").pipeline, progress=False)
    assert used and set(used) == {"fp32"}  # every training step and the validation
    assert load_model(tmp_path / "localizer" / "best.safetensors")[1].precision == "bf16"


def test_learning_rate_schedules_by_hand():
    from kidneyseg.training.fit import learning_rate

    paper = preset("paper").segmenter
    assert learning_rate(paper, 0, 0, 0.0) == pytest.approx(5e-4)
    assert learning_rate(paper, 3, 999, 0.5) == pytest.approx(5e-4 * 0.985**3)  # per epoch, whatever the step
    poly = replace(paper, lr_schedule="poly", lr=1e-2)
    assert learning_rate(poly, 0, 0, 0.0) == pytest.approx(1e-2)
    assert learning_rate(poly, 7, 50, 0.5) == pytest.approx(1e-2 * 0.5**0.9)
    assert learning_rate(poly, 9, 99, 1.0) == 0.0
    warm = replace(poly, warmup_steps=10)
    assert learning_rate(warm, 0, 4, 0.0) == pytest.approx(1e-2 * 5 / 10)
    assert learning_rate(warm, 0, 9, 0.0) == pytest.approx(1e-2)


def test_poly_schedule_and_sgd_in_a_run_and_resume_repeats_it(phantom_dir, tmp_path, monkeypatch):
    """The logged rate follows (1 - progress)**0.9 at the last step of each epoch; a run stopped
    after its first epoch and resumed continues the schedule and ends with the same weights."""
    from kidneyseg.training import fit as fit_module
    from kidneyseg.weights import load_model

    extra = ["epochs=3", "samples_per_epoch=4", "lr_schedule=poly", "optimizer=sgd", "lr=0.01", "precision=fp32"]
    pipeline = preset("tiny").pipeline
    fit(phantom_dir, tmp_path / "whole", micro_stage("localizer", *extra), pipeline, progress=False)
    rows = list(csv.DictReader((tmp_path / "whole" / "localizer" / "log.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01 * (1 - s / 12) ** 0.9 for s in (3, 7, 11)])
    save_epoch = fit_module.save_epoch

    def save_then_stop(*args, **kwargs):
        save_epoch(*args, **kwargs)
        raise KeyboardInterrupt  # a kill right after the first epoch was saved

    monkeypatch.setattr(fit_module, "save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(phantom_dir, tmp_path / "parts", micro_stage("localizer", *extra), pipeline, progress=False)
    monkeypatch.setattr(fit_module, "save_epoch", save_epoch)
    fit(phantom_dir, tmp_path / "parts", micro_stage("localizer", *extra), pipeline, resume=True, progress=False)
    whole = load_model(tmp_path / "whole" / "localizer" / "last.safetensors")[0].state_dict()
    parts = load_model(tmp_path / "parts" / "localizer" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(whole[k], parts[k]) for k in whole)


def test_cut_box_moves_one_or_two_faces_inwards_by_the_drawn_share():
    from kidneyseg.training.augment import CUT_SHARE, cut_box

    box = Box((10, 20, 30), (110, 70, 90))  # sides 100, 50, 60
    counts = set()
    for seed in range(40):
        cut = cut_box(box, np.random.RandomState(seed))
        assert cut == cut_box(box, np.random.RandomState(seed))
        ends = [((box.lo[a], cut.lo[a]), (box.hi[a], cut.hi[a])) for a in range(3)]
        moved = [(a, s) for a in range(3) for s, (old, new) in enumerate(ends[a]) if old != new]
        counts.add(len(moved))
        assert len({a for a, _ in moved}) == len(moved)  # never both faces of one axis
        for a, _ in moved:
            share = 1 - cut.size_vox[a] / box.size_vox[a]
            assert CUT_SHARE[0] - 0.02 <= share <= CUT_SHARE[1] + 0.02
        assert all(lo >= blo and hi <= bhi for lo, hi, blo, bhi in zip(cut.lo, cut.hi, box.lo, box.hi))
    assert counts == {1, 2}


def test_a_cut_box_puts_the_kidney_on_a_face_of_the_segmenters_draws_only(tmp_path):
    """A kidney inside its crop (2 voxels from every face, less than the smallest cut): with cut_box_prob=1 every
    segmenter draw has kidney on the crop's outermost layer; without it, or for the localizer, none has."""
    label = np.zeros((32, 32, 32), np.uint8)
    label[2:30, 2:30, 2:30] = 1
    np.save(tmp_path / "image.npy", np.where(label == 1, 1.0, -2.0).astype(np.float32))
    np.save(tmp_path / "label.npy", label)
    sample = Sample("case_00000", tmp_path / "image.npy", tmp_path / "label.npy", Box((0, 0, 0), (32, 32, 32)))
    plain = ["input_size=32,32,32", "flip_prob=0", "rotate_deg=0", "translate_vox=0", "intensity_prob=0"]

    def on_face(stage, seed):
        _, drawn = load_sample(sample, micro_stage(stage, *plain), np.random.RandomState(seed))
        x = drawn[0] > 0
        return any(bool(np.take(x.numpy(), i, axis=a).any()) for a in range(3) for i in (0, -1))

    for seed in range(6):
        assert on_face("segmenter", seed) is False
        plain.append("cut_box_prob=1")
        assert on_face("segmenter", seed) is True
        assert on_face("localizer", seed) is False
        plain.pop()
