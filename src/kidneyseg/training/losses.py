"""Losses: the paper's class-weighted soft Dice, optionally plus cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from kidneyseg.config import StageConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weighted_dice_loss(class_weights: tuple[float, ...]) -> DiceLoss:
    """1 - sum_c w_c * Dice_c, with soft Dice over the whole batch for each class c.

    MONAI's DiceLoss computes 1 - Dice_c per class; its ``weight`` multiplies each class's
    term and ``reduction="sum"`` adds them, so with weights summing to 1 (as the paper's
    (0.01, 0.99) and (0.01, 0.14, 0.85) do) this is exactly 1 - sum_c w_c * Dice_c.
    """
    weights = torch.tensor(class_weights, dtype=torch.float32)
    weights = weights / weights.sum()
    return DiceLoss(to_onehot_y=True, softmax=True, weight=weights, reduction="sum", batch=True)


def make_loss(stage: StageConfig) -> Loss:
    """Loss for logits (N, C, X, Y, Z) and integer targets (N, 1, X, Y, Z)."""
    dice = weighted_dice_loss(stage.class_weights)
    if stage.loss == "dice":
        return dice

    def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice(logits, target) + F.cross_entropy(logits, target[:, 0].long())

    return dice_ce
