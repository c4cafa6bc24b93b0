"""The exported graphs' modules: ``query [B,3,S,S] -> (logits [B,N,S,S], pred [B,S,S])`` of an episodic
FS-DINO with its support encodings baked in as buffers, or of a support-free specialised student; and
the trained (non-frozen) weights written next to them."""

from __future__ import annotations

import torch
from torch import nn

from fsseg.models.fsdino import FSDINO, SupportEncoding


class EncodedSegmenter(nn.Module):
    """``query [B,3,S,S] -> (logits [B,N,S,S], pred [B,S,S])`` with the support encodings as buffers."""

    def __init__(self, model: FSDINO, encodings: list[SupportEncoding]) -> None:
        super().__init__()
        self.model = model
        self.n = len(encodings)
        fields = ("semantic", "masks", "shot_prototypes", "prototype", "sparse")
        for c, enc in enumerate(encodings):
            for f in fields:
                self.register_buffer(f"enc{c}_{f}", getattr(enc, f).detach().clone(), persistent=False)

    def encodings(self) -> list[SupportEncoding]:
        return [SupportEncoding(*(getattr(self, f"enc{c}_{f}") for f in
                                  ("semantic", "masks", "shot_prototypes", "prototype", "sparse")))
                for c in range(self.n)]

    def forward(self, query: torch.Tensor):
        out = self.model.segment_multiclass_encoded(query, self.encodings())
        return out["logits"], out["pred"]


class StudentSegmenter(nn.Module):
    """``query [B,3,S,S] -> (logits [B,N,S,S], pred [B,S,S])`` of the support-free specialised model
    (the same outputs as ``EncodedSegmenter``: per-class foreground logits, background logit 0)."""

    def __init__(self, student) -> None:
        super().__init__()
        self.student = student

    def forward(self, query: torch.Tensor):
        out = self.student(query)
        return out["logits"][:, 1:], out["pred"]


def trained_state_dict(model: FSDINO) -> dict[str, torch.Tensor]:
    """``FSDINO`` state dict without the frozen parts (encoder; adapter when frozen)."""
    frozen = ("encoder.",) + (("adapter.",) if model.freeze_adapter else ())
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(frozen)}
