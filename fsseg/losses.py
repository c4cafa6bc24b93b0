"""Segmentation losses used by the few-shot and specialisation stages (paper eq. 6-8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
              eps: float = 1.0) -> torch.Tensor:
    """Soft Dice on sigmoid(logits) against a 0/1 target ``[B,H,W]``; ignore pixels excluded.
    Averaged over the batch (one Dice per image, as SAM-style decoders are trained)."""
    valid = (target != ignore_index).float()
    prob = torch.sigmoid(logits) * valid
    tgt = (target == 1).float() * valid
    inter = (prob * tgt).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + tgt.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    valid = (target != ignore_index).float()
    loss = F.binary_cross_entropy_with_logits(logits, (target == 1).float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits.unsqueeze(1), size=target.shape[-2:], mode="bilinear",
                               align_corners=False).squeeze(1)
    return dice_loss(logits, target, ignore_index) + bce_loss(logits, target, ignore_index)


def multiclass_ce_dice_loss(logits: torch.Tensor, target: torch.Tensor,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy + mean per-class soft Dice for ``logits [B,C,H,W]`` (C includes background)
    against class-index ``target [B,H,W]``."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    valid = (target != ignore_index)
    prob = logits.softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1) * valid, logits.shape[1]).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid.unsqueeze(1)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return ce + dice.mean()
