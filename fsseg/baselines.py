"""Parameter-free reference points that trained models must beat.

``PCSThreshold``: the prototype cosine similarity map of FS-DINO's PCS branch (eq. 2), upsampled to
the image and thresholded. It uses the very same frozen DINOv2 features as the trained model, so
the gap between the two is what episodic training adds. The threshold is chosen on *base-class*
episodes (never on the novel classes it is tested on).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from fsseg.metrics import FewShotIoU
from fsseg.models.prompts import PrototypeSimilarity, masked_average_pool


class PCSThreshold:
    def __init__(self, model, threshold: float = 0.5) -> None:
        self.model = model  # an FSDINO; only its frozen encoder is used
        self.threshold = threshold
        self.pcs = PrototypeSimilarity()

    @torch.no_grad()
    def similarity(self, query: torch.Tensor, support: torch.Tensor, support_masks: torch.Tensor) -> torch.Tensor:
        """``[B,H,W]`` cosine similarity between the K-shot prototype and every query pixel."""
        b, k = support.shape[:2]
        semantic_q = self.model.extract(query).semantic
        semantic_s = self.model.extract(support.flatten(0, 1)).semantic
        protos = masked_average_pool(semantic_s, support_masks.flatten(0, 1)).view(b, k, -1)
        sim = self.pcs(semantic_q, self.pcs.prototype(protos))
        return F.interpolate(sim, size=query.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def predict(self, query, support, support_masks) -> torch.Tensor:
        return (self.similarity(query, support, support_masks) > self.threshold).long()

    @torch.no_grad()
    def fit_threshold(self, batches: Iterable[dict], num_classes: int,
                      candidates: Sequence[float] = tuple(x / 20 for x in range(-4, 20))) -> float:
        """Pick the threshold with the best mIoU on the given (base-class) episodes."""
        metrics = {t: FewShotIoU(num_classes) for t in candidates}
        for batch in batches:
            sim = self.similarity(batch["query"], batch["support"], batch["support_masks"])
            for t, m in metrics.items():
                m.update((sim > t).long(), batch["query_mask"], batch["class_id"])
        scores = {t: m.compute()["miou"] for t, m in metrics.items()}
        self.threshold = max(scores, key=scores.get)
        return self.threshold

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict], num_classes: int) -> dict:
        metric = FewShotIoU(num_classes)
        for batch in batches:
            metric.update(self.predict(batch["query"], batch["support"], batch["support_masks"]),
                          batch["query_mask"], batch["class_id"])
        return metric.compute()
