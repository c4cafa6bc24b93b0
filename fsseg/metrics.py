"""The few-shot segmentation metric as the field computes it (HSNet / PFENet protocol).

Per test class, intersections and unions are *pooled* over every episode of that class:
    IoU_c = sum_e I_{c,e} / max(sum_e U_{c,e}, 1)
mIoU   = mean over the fold's classes of the foreground IoU_c (classes never seen are left out);
FB-IoU = mean over {background, foreground} of (sum over classes of I) / (sum over classes of U).
Both are reported x100. Pixels whose target is 255 are excluded from prediction and ground truth.
This is not the mean of per-episode IoUs: a class with one large and one tiny object weighs them by
pixel count, as the benchmarks do.

Seeds: HDMNet's test protocol runs the episode list under several seeds and reports every seed's
mIoU/FB-IoU and their mean (HDMNet test.py:152-175). ``FewShotIoU(num_seeds=S)`` keeps one set of
pooled statistics per seed index; ``miou``/``fbiou`` are the mean over the seeds that received
episodes (with one seed: exactly the single-seed figures).

Scoring size: ``update_scored`` scores model-size logits against the label in the batch: the model
size label (``query_mask``) or, when the batch carries ``query_label_orig`` (docs/CONTRACTS.md), the
logits upsampled bilinearly to each label's own size, then thresholded (docs/protocols/scoring.md).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric

IGNORE_INDEX = 255


class FewShotIoU(Metric):
    """mIoU / FB-IoU over a fixed set of classes, pooled per class, reducible across DDP ranks.

    Args:
        num_classes: size of the class-id space (class ids are ``0..num_classes-1``); only classes
            that received at least one episode enter the mean.
        ignore_index: target value excluded from both prediction and ground truth.
        num_seeds: number of evaluation seeds (``update(..., seed_index=)``); statistics are pooled
            per seed and the reported figures are the mean over seeds.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, num_seeds: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"FewShotIoU needs num_classes >= 1, got {num_classes}")
        if num_seeds < 1:
            raise ValueError(f"FewShotIoU needs num_seeds >= 1, got {num_seeds}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.num_seeds = num_seeds
        # [seed, class, {background, foreground}] pooled intersections and unions; summed across ranks.
        self.add_state("intersection", torch.zeros(num_seeds, num_classes, 2, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_seeds, num_classes, 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("episodes", torch.zeros(num_seeds, num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, class_id: torch.Tensor,
               seed_index: Optional[torch.Tensor | Sequence[int]] = None) -> None:
        """``pred``, ``target``: integer ``[B,H,W]`` (0/1; target may hold ``ignore_index``);
        ``class_id``: integer ``[B]``; ``seed_index``: integer ``[B]`` (absent: all 0)."""
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"FewShotIoU.update: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                             "must both be [B,H,W]")
        class_id = class_id.reshape(-1).long()
        if class_id.numel() != pred.shape[0]:
            raise ValueError(f"FewShotIoU.update: {class_id.numel()} class ids for a batch of {pred.shape[0]}")
        if (class_id < 0).any() or (class_id >= self.num_classes).any():
            raise ValueError(f"FewShotIoU.update: class ids {class_id.tolist()} outside 0..{self.num_classes - 1}")
        if seed_index is None:
            seed_index = torch.zeros_like(class_id)
        # a LongTensor [B], or the plain list of ints a default collate leaves for int items
        seed_index = torch.as_tensor(seed_index).reshape(-1).long().to(class_id.device)
        if seed_index.numel() != class_id.numel() or (seed_index < 0).any() or (seed_index >= self.num_seeds).any():
            raise ValueError(f"FewShotIoU.update: seed indices {seed_index.tolist()} must be one per episode "
                             f"in 0..{self.num_seeds - 1}")
        valid = target != self.ignore_index
        pred_fg = (pred == 1) & valid
        target_fg = (target == 1) & valid
        pred_bg = (pred != 1) & valid
        target_bg = (target != 1) & valid
        dims = (1, 2)
        inter = torch.stack([(pred_bg & target_bg).sum(dims), (pred_fg & target_fg).sum(dims)], dim=1)
        union = torch.stack([(pred_bg | target_bg).sum(dims), (pred_fg | target_fg).sum(dims)], dim=1)
        flat = (seed_index * self.num_classes + class_id).to(self.intersection.device)
        self.intersection.view(-1, 2).index_add_(0, flat, inter.to(self.intersection))
        self.union.view(-1, 2).index_add_(0, flat, union.to(self.union))
        self.episodes.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.episodes.dtype))

    def _compute_seed(self, s: int) -> tuple[float, float, dict]:
        seen = self.episodes[s] > 0
        inter, union = self.intersection[s], self.union[s]
        iou = inter / union.clamp(min=1)  # [classes, 2]
        if not seen.any():
            return 0.0, 0.0, {}
        miou = iou[seen, 1].mean() * 100
        fbiou = (inter[seen].sum(0) / union[seen].sum(0).clamp(min=1)).mean() * 100
        per_class = {int(c): float(iou[c, 1] * 100) for c in torch.nonzero(seen).flatten().tolist()}
        return float(miou), float(fbiou), per_class

    def compute(self) -> dict:
        """``{"miou", "fbiou", "iou_per_class"}`` (x100, mean over the seeds that received episodes);
        when more than one seed received episodes, also ``miou_seed{s}`` / ``fbiou_seed{s}`` for each
        of them (a validation list scored under seed 0 only reads exactly as a one-seed metric)."""
        per_seed = [self._compute_seed(s) for s in range(self.num_seeds)]
        used = [s for s in range(self.num_seeds) if self.episodes[s].sum() > 0] or [0]
        miou = sum(per_seed[s][0] for s in used) / len(used)
        fbiou = sum(per_seed[s][1] for s in used) / len(used)
        classes = sorted({c for s in used for c in per_seed[s][2]})
        per_class = {c: sum(per_seed[s][2][c] for s in used if c in per_seed[s][2])
                     / sum(c in per_seed[s][2] for s in used) for c in classes}
        out = {"miou": miou, "fbiou": fbiou, "iou_per_class": per_class}
        if len(used) > 1:
            for s in used:
                out[f"miou_seed{s}"], out[f"fbiou_seed{s}"] = per_seed[s][0], per_seed[s][1]
        return out


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


def update_scored(metric: FewShotIoU, logits: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor],
                  target: torch.Tensor, class_id: torch.Tensor, labels: Optional[Sequence[torch.Tensor]] = None,
                  seed_index: Optional[torch.Tensor] = None) -> None:
    """Score one batch at the scoring size; shared by every module that reports ``FewShotIoU``.

    ``logits``: ``[B,H,W]`` (one foreground logit) or ``[B,C,H,W]`` at the model size;
    ``predict``: logits -> integer prediction ``[B,H,W]`` (1-way 0/1, or N-way class index 0..N when
    ``class_id`` is ``[B,N]``); ``target``: the model-size label ``[B,H,W]``.
    ``labels`` (the batch's ``query_label_orig``, one ``[H_i,W_i]`` per item): when given, each item's
    logits are upsampled bilinearly (``align_corners=True``) to its label's size and predicted there,
    and that label is the target -- the label is never resized here. This is HDMNet's
    ``F.interpolate(output, size=(H, W), mode='bilinear', align_corners=True)`` then argmax (test.py:244,
    250) and HSNet's ``--use_original_imgsize`` (model/hsnet.py:74-78); for one foreground logit,
    ``logit > 0`` equals the argmax of (background, foreground) logits with difference ``logit``,
    and bilinear interpolation commutes with that difference."""
    if seed_index is not None:
        seed_index = torch.as_tensor(seed_index, device=class_id.device).reshape(-1)

    def update(pred, tgt, cid, seeds):
        if cid.dim() == 2:  # N-way: every class of the episode pooled as its own class
            p, t, c = binarize_multiclass(pred, tgt, cid)
            metric.update(p, t, c, None if seeds is None else seeds.repeat_interleave(cid.shape[1]))
        else:
            metric.update(pred, tgt, cid, seeds)

    for pred, tgt, rows in scored_predictions(logits, predict, target, labels):
        update(pred, tgt, class_id[rows], None if seed_index is None else seed_index[rows])


def scored_predictions(logits: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor,
                       labels: Optional[Sequence[torch.Tensor]] = None):
    """``(prediction, target, rows)`` at the scoring size (see ``update_scored``): the whole batch at
    the model size without ``labels``, else one item at a time at its label's size."""
    if labels is None:
        yield predict(logits), target, slice(None)
        return
    if len(labels) != logits.shape[0]:
        raise ValueError(f"update_scored: {len(labels)} scoring labels for a batch of {logits.shape[0]}")
    for i, label in enumerate(labels):
        x = logits[i:i + 1]
        one_channel = x.dim() == 3
        x = x.unsqueeze(1) if one_channel else x
        size = tuple(label.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True)
        x = x[:, 0] if one_channel else x
        yield predict(x), label.to(x.device)[None], slice(i, i + 1)


def update_dataset_scored(metric: "DatasetForegroundIoU", logits: torch.Tensor,
                          predict: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor,
                          labels: Optional[Sequence[torch.Tensor]] = None) -> None:
    """``DatasetForegroundIoU`` at the same scoring size as ``update_scored``."""
    for pred, tgt, _ in scored_predictions(logits, predict, target, labels):
        metric.update(pred, tgt)


class DatasetForegroundIoU(Metric):
    """DistillFSS's reported score: per-class Jaccard pooled over the whole test set, averaged over
    the foreground classes (its ``MulticlassJaccardIndex_fg``), x100.

    DistillFSS (github pasqualedem/DistillFSS) accumulates torchmetrics'
    ``MulticlassJaccardIndex(num_classes=N+1, average="none")`` over every test image
    (``refine.py:234-237``, updated in ``distillfss/test.py:46``) and reports the mean of entries
    1..N (``distillfss/utils/utils.py:404``, ``linearize_metrics``): for class c,
    ``IoU_c = sum_images |P_c & G_c| / sum_images |P_c | G_c|`` (0 when the union is empty, as
    torchmetrics' ``zero_division=0``), not a mean of per-image IoUs. ``pred`` / ``target``:
    class-index maps ``[B,H,W]`` in 0..N (background 0); target pixels equal to ``ignore_index``
    are left out (the reference's datasets have none).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"DatasetForegroundIoU needs num_classes >= 1 (foreground classes), got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("intersection", torch.zeros(num_classes + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"DatasetForegroundIoU.update: pred {tuple(pred.shape)} != target {tuple(target.shape)}")
        valid = target != self.ignore_index
        bad = valid & ((target < 0) | (target > self.num_classes))
        if bad.any() or (pred < 0).any() or (pred > self.num_classes).any():
            raise ValueError(f"DatasetForegroundIoU.update: class indices outside 0..{self.num_classes}")
        p, t = pred[valid].long(), target[valid].long()
        n = self.num_classes + 1
        area_p = torch.bincount(p, minlength=n).double()
        area_t = torch.bincount(t, minlength=n).double()
        inter = torch.bincount(t[p == t], minlength=n).double()
        self.intersection += inter
        self.union += area_p + area_t - inter

    def compute(self) -> dict:
        iou = torch.where(self.union > 0, self.intersection / self.union.clamp(min=1), torch.zeros_like(self.union))
        return {"fg_iou": float(iou[1:].mean() * 100), "iou_all": float(iou.mean() * 100),
                "iou_per_class": {c: float(iou[c] * 100) for c in range(1, self.num_classes + 1)}}
