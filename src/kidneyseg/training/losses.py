"""Losses for logits (N, C, X, Y, Z) and integer targets (N, 1, X, Y, Z), chosen by ``StageConfig.loss``:

* ``dice``: the paper's class-weighted soft Dice, 1 - sum_c w_c * Dice_c.
* ``dice_ce``: that plus cross-entropy (every voxel counts the same).
* ``dice_wce``: that plus cross-entropy with the class weights (normalised; torch's weighted mean).
* ``regions``: sigmoid channels for the nested regions label >= 1, label >= 2 (kidney+tumour,
  tumour), soft Dice of the regions weighted by ``class_weights[1:]`` plus binary cross-entropy, as
  nnU-Net trains KiTS21 (it weights the regions equally: ``class_weights=0,1,1``).

Every term is per sample, averaged over the batch, so that a batch split across training
ranks (each rank's mean, gradients averaged) trains as on one device: Dice per sample; cross-entropy each
sample's (weighted) mean over its voxels. Samples of one batch have the same size, so the unweighted
cross-entropy is also the mean over all voxels of the batch; the class-weighted one is not (torch's
weighted mean divides by the weights of the whole batch's targets).

With ``deep_supervision_loss`` the network returns logits at every supervised scale (full, 1/2,
1/4 ...) and the loss is their weighted sum with weights 1, 1/2, 1/4 ... normalised to 1 (nnU-Net's
scheme), each against the target taken at every 2**i-th voxel (nearest).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from kidneyseg.config import StageConfig
from kidneyseg.outputs import region_targets

Loss = Callable[[torch.Tensor | list[torch.Tensor], torch.Tensor], torch.Tensor]


def weighted_dice_loss(class_weights: tuple[float, ...]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """1 - sum_c w_c * Dice_c, with soft Dice per sample for each class c, averaged over the batch.

    MONAI's DiceLoss computes 1 - Dice_c per sample and class; its ``weight`` multiplies each class's
    term and ``reduction="sum"`` adds them, so with weights summing to 1 (as the paper's
    (0.01, 0.99) and (0.01, 0.14, 0.85) do) this is exactly 1 - sum_c w_c * Dice_c per sample; the
    sum over the batch is divided by its size. Per sample rather than pooled over the batch: a batch
    split across GPUs (each rank's mean, gradients averaged over the ranks) then has the same loss
    and gradients as on one device. The paper trains with batch 1, where both are the same.
    """
    dice = DiceLoss(to_onehot_y=True, softmax=True, weight=_normalised(class_weights), reduction="sum", batch=False)
    return lambda logits, target: dice(logits, target) / logits.shape[0]


def region_loss(region_weights: tuple[float, ...]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """1 - sum_r w_r * soft Dice_r (weights normalised to sum 1) plus binary cross-entropy, for
    sigmoid region logits; nnU-Net's equal weights are ``(1, 1)``. The Dice is per sample, averaged
    over the batch, as in ``weighted_dice_loss``."""
    dice = DiceLoss(sigmoid=True, batch=False, weight=_normalised(region_weights), reduction="sum")

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        regions = region_targets(target, logits.shape[1])
        return dice(logits, regions) / logits.shape[0] + F.binary_cross_entropy_with_logits(logits, regions)

    return loss


def make_loss(stage: StageConfig) -> Loss:
    """The stage's loss; with ``deep_supervision_loss`` it takes the list of logits at every scale."""
    base = _single_scale(stage)
    if not stage.deep_supervision_loss:
        return base

    def deep(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        weights = _normalised([0.5**i for i in range(len(outputs))])
        pairs = enumerate(zip(weights, outputs, strict=True))
        return sum(w * base(out, target[..., ::2**i, ::2**i, ::2**i]) for i, (w, out) in pairs)

    return deep


def _single_scale(stage: StageConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if stage.loss == "regions":
        return region_loss(stage.class_weights[1:])
    dice = weighted_dice_loss(stage.class_weights)
    if stage.loss == "dice":
        return dice
    ce_weight = _normalised(stage.class_weights) if stage.loss == "dice_wce" else None

    def dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice(logits, target) + _cross_entropy(logits, target[:, 0].long(), ce_weight)

    return dice_ce


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of each sample (its weighted mean over voxels, as torch's ``weight`` gives for one
    sample), averaged over the batch."""
    if weight is None:
        return F.cross_entropy(logits, target)
    weight = weight.to(logits.device)
    per_voxel = F.cross_entropy(logits, target, weight=weight, reduction="none").flatten(1)
    return (per_voxel.sum(1) / weight[target].flatten(1).sum(1)).mean()


def _normalised(weights) -> torch.Tensor:
    tensor = torch.tensor(weights, dtype=torch.float32)
    return tensor / tensor.sum()
