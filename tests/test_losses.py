from dataclasses import replace

import numpy as np
import pytest
import torch

from kidneyseg.config import preset
from kidneyseg.training.losses import make_loss, weighted_dice_loss


def _hard_logits(labels: np.ndarray, classes: int) -> torch.Tensor:
    """Logits whose softmax is (almost exactly) the one-hot of ``labels``."""
    onehot = np.eye(classes)[labels].transpose(3, 0, 1, 2)
    return torch.tensor(onehot * 60.0 - 30.0, dtype=torch.float32)[None]


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_segmenter_loss_is_one_minus_weighted_dice():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (8, 8, 8))
    pred = truth.copy()
    pred[:4] = rng.integers(0, 3, (4, 8, 8))
    weights = preset("paper").segmenter.class_weights
    assert weights == (0.01, 0.14, 0.85)
    expected = 1 - sum(w * _dice(pred == c, truth == c) for c, w in enumerate(weights))
    loss = weighted_dice_loss(weights)(_hard_logits(pred, 3), torch.tensor(truth)[None, None])
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def test_localizer_weights_make_foreground_dominate():
    truth = np.zeros((8, 8, 8), int)
    truth[2:6, 2:6, 2:6] = 1
    all_background = np.zeros_like(truth)
    loss = weighted_dice_loss(preset("paper").localizer.class_weights)
    value = loss(_hard_logits(all_background, 2), torch.tensor(truth)[None, None]).item()
    # background Dice is 2*448/(448+512) and foreground Dice 0: loss = 1 - 0.01 * 0.9333
    assert value == pytest.approx(1 - 0.01 * (2 * 448 / 960), abs=1e-4)


def test_perfect_prediction_gives_zero_loss_and_dice_ce_adds_cross_entropy():
    truth = torch.tensor(np.random.default_rng(1).integers(0, 3, (6, 6, 6)))[None, None]
    logits = _hard_logits(truth[0, 0].numpy(), 3)
    stage = preset("tiny").segmenter
    assert stage.loss == "dice_ce"
    assert make_loss(preset("paper").segmenter)(logits, truth).item() == pytest.approx(0, abs=1e-4)
    soft = logits / 30.0
    dice_only = make_loss(preset("paper").segmenter)(soft, truth).item()
    ce = torch.nn.functional.cross_entropy(soft, truth[:, 0]).item()
    assert make_loss(stage)(soft, truth).item() == pytest.approx(dice_only + ce, rel=1e-5)


def _stage(**changes):
    return replace(preset("tiny").segmenter, **changes)


def test_class_weighted_cross_entropy_is_the_weighted_mean_of_minus_log_p():
    truth = torch.tensor(np.random.default_rng(2).integers(0, 3, (6, 6, 6)))[None, None]
    logits = torch.tensor(np.random.default_rng(3).normal(size=(1, 3, 6, 6, 6)), dtype=torch.float32)
    stage = _stage(loss="dice_wce", class_weights=(0.01, 0.14, 0.85))
    log_p = torch.log_softmax(logits, 1)[0].numpy()
    t = truth[0, 0].numpy()
    w = np.array([0.01, 0.14, 0.85])[t]
    minus_log_p = -np.take_along_axis(log_p, t[None], 0)[0]
    expected_ce = float((w * minus_log_p).sum() / w.sum())
    dice = weighted_dice_loss(stage.class_weights)(logits, truth).item()
    assert make_loss(stage)(logits, truth).item() == pytest.approx(dice + expected_ce, rel=1e-5)
    unweighted = make_loss(_stage(loss="dice_ce"))(logits, truth).item()
    assert abs(unweighted - (dice + expected_ce)) > 1e-3  # the weights change the value


def test_region_loss_on_even_odds_is_hand_computed():
    """Logits 0 (probability 0.5 everywhere): BCE is ln 2 and each region's soft Dice is
    2 * 0.5 |T| / (0.5 N + |T|); the loss is their mean plus ln 2."""
    truth = np.zeros((4, 4, 4), np.int64)
    truth[:2] = 1  # 32 voxels kidney+tumour ...
    truth[0, :2] = 2  # ... of which 8 tumour
    target = torch.tensor(truth)[None, None]
    dice = [2 * 0.5 * n / (0.5 * 64 + n) for n in (32, 8)]
    equal = make_loss(_stage(loss="regions", class_weights=(0.0, 1.0, 1.0)))(torch.zeros(1, 2, 4, 4, 4), target)
    assert equal.item() == pytest.approx(np.mean([1 - d for d in dice]) + np.log(2), abs=1e-4)
    weighted = make_loss(_stage(loss="regions", class_weights=(0.01, 0.14, 0.85)))(torch.zeros(1, 2, 4, 4, 4), target)
    w = np.array([0.14, 0.85]) / 0.99
    assert weighted.item() == pytest.approx(1 - (w[0] * dice[0] + w[1] * dice[1]) + np.log(2), abs=1e-4)


def test_region_loss_is_zero_for_confident_nested_regions_and_needs_tumour_inside_kidney():
    truth = torch.tensor(np.random.default_rng(4).integers(0, 3, (6, 6, 6)))[None, None]
    regions = torch.stack([truth[:, 0] >= 1, truth[:, 0] >= 2], 1).float()
    loss = make_loss(_stage(loss="regions"))
    assert loss(regions * 60 - 30, truth).item() == pytest.approx(0, abs=1e-4)
    # the regions swapped (tumour where kidney+tumour should be) are penalised
    swapped = regions.flip(1) * 60 - 30  # tumour region where kidney+tumour should be
    assert loss(swapped, truth).item() > 0.1


def test_deep_supervision_loss_weights_scales_by_halves():
    """Loss = (1 * L(full) + 0.5 * L(half, every 2nd voxel of the target)) / 1.5."""
    truth = torch.tensor(np.random.default_rng(5).integers(0, 3, (8, 8, 8)))[None, None]
    stage = _stage(loss="dice", deep_supervision_loss=True)
    full = _hard_logits(truth[0, 0].numpy(), 3)
    half_truth = truth[..., ::2, ::2, ::2]
    wrong_half = _hard_logits((half_truth[0, 0].numpy() + 1) % 3, 3)
    single = make_loss(_stage(loss="dice"))
    expected = (1.0 * single(full, truth) + 0.5 * single(wrong_half, half_truth)) / 1.5
    value = make_loss(stage)([full, wrong_half], truth)
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    assert value.item() == pytest.approx(single(wrong_half, half_truth).item() / 3, abs=1e-4)
    right_half = _hard_logits(half_truth[0, 0].numpy(), 3)
    assert make_loss(stage)([full, right_half], truth).item() == pytest.approx(0, abs=1e-4)
