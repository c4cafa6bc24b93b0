"""The few-shot segmentation metric as the field computes it (HSNet / PFENet protocol).

Per test class, intersections and unions are *pooled* over every episode of that class:
    IoU_c = sum_e I_{c,e} / max(sum_e U_{c,e}, 1)
mIoU   = mean over the fold's classes of the foreground IoU_c (classes never seen are left out);
FB-IoU = mean over {background, foreground} of (sum over classes of I) / (sum over classes of U).
Both are reported x100. Pixels whose target is 255 are excluded from prediction and ground truth.
This is not the mean of per-episode IoUs: a class with one large and one tiny object weighs them by
pixel count, as the benchmarks do.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

IGNORE_INDEX = 255


class FewShotIoU(Metric):
    """mIoU / FB-IoU over a fixed set of classes, pooled per class, reducible across DDP ranks.

    Args:
        num_classes: size of the class-id space (class ids are ``0..num_classes-1``); only classes
            that received at least one episode enter the mean.
        ignore_index: target value excluded from both prediction and ground truth.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"FewShotIoU needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # [class, {background, foreground}] pooled intersections and unions; summed across ranks.
        self.add_state("intersection", torch.zeros(num_classes, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("episodes", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_id: torch.Tensor) -> None:
        """``pred``, ``target``: integer ``[B,H,W]`` (0/1; target may hold ``ignore_index``);
        ``class_id``: integer ``[B]``."""
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"FewShotIoU.update: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                             "must both be [B,H,W]")
        class_id = class_id.reshape(-1).long()
        if class_id.numel() != pred.shape[0]:
            raise ValueError(f"FewShotIoU.update: {class_id.numel()} class ids for a batch of {pred.shape[0]}")
        if (class_id < 0).any() or (class_id >= self.num_classes).any():
            raise ValueError(f"FewShotIoU.update: class ids {class_id.tolist()} outside 0..{self.num_classes - 1}")
        valid = target != self.ignore_index
        pred_fg = (pred == 1) & valid
        target_fg = (target == 1) & valid
        pred_bg = (pred != 1) & valid
        target_bg = (target != 1) & valid
        dims = (1, 2)
        inter = torch.stack([(pred_bg & target_bg).sum(dims), (pred_fg & target_fg).sum(dims)], dim=1)
        union = torch.stack([(pred_bg | target_bg).sum(dims), (pred_fg | target_fg).sum(dims)], dim=1)
        self.intersection.index_add_(0, class_id, inter.to(self.intersection.dtype))
        self.union.index_add_(0, class_id, union.to(self.union.dtype))
        self.episodes.index_add_(0, class_id, torch.ones_like(class_id, dtype=self.episodes.dtype))

    def compute(self) -> dict:
        seen = self.episodes > 0
        iou = self.intersection / self.union.clamp(min=1)  # [classes, 2]
        if seen.any():
            miou = iou[seen, 1].mean() * 100
            fb = self.intersection[seen].sum(0) / self.union[seen].sum(0).clamp(min=1)
            fbiou = fb.mean() * 100
        else:
            miou = torch.tensor(0.0, dtype=torch.float64)
            fbiou = torch.tensor(0.0, dtype=torch.float64)
        per_class = {int(c): float(iou[c, 1] * 100) for c in torch.nonzero(seen).flatten().tolist()}
        return {"miou": float(miou), "fbiou": float(fbiou), "iou_per_class": per_class}


def binarize_multiclass(pred: torch.Tensor, target: torch.Tensor, class_ids: torch.Tensor):
    """Split N-way class-index maps (values 0..N, target may be 255) into N binary episodes each,
    so that ``FewShotIoU`` pools every class of a multi-class episode as its own class.

    Returns ``(pred [B*N,H,W], target [B*N,H,W], class_id [B*N])``."""
    b, n = class_ids.shape
    k = torch.arange(1, n + 1, device=pred.device).view(1, n, 1, 1)
    p = (pred.unsqueeze(1) == k).long()
    t = (target.unsqueeze(1) == k).long()
    t = torch.where(target.unsqueeze(1) == IGNORE_INDEX, torch.full_like(t, IGNORE_INDEX), t)
    return p.flatten(0, 1), t.flatten(0, 1), class_ids.reshape(-1)
