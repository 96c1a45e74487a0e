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
