"""``fsseg predict`` for the episodic model: encode a fixed support set once, segment every query.

``SupportSetPredictionMixin`` is mixed into ``FewShotModule`` (before ``L.LightningModule``):

* ``on_predict_start`` takes the data module's ``support_batch()`` (``SupportQueryFolderDataModule``:
  ``support [1,N,K,3,S,S]``, ``support_masks [1,N,K,S,S]``, ``class_names``) and encodes each of the
  N classes' K shots once (``FSDINO.encode_support``); ``support_encodings_computed`` counts these
  encodings (N per predict run), so tests can check supports are not re-encoded per query.
  A support set given earlier through ``set_support_set`` (e.g. the web demo, no data module) is
  used as is. Supports and queries of another size than the model's ``image_size`` are resized to it
  (bilinear; support masks nearest), so ``data.image_size`` cannot silently mismatch a checkpoint.
* ``predict_step`` decodes each query batch against the cached encodings
  (``FSDINO.segment_multiclass_encoded``) and returns the **prediction contract** shared with the
  support-free specialised module, which ``callbacks.PredictionWriter`` consumes:

  ====================== ==============================================================
  ``pred``               ``int64 [B,S,S]`` class index at model size (S = ``image_size``): 0 = background, c = class c
  ``logits``             ``float [B,N,S,S]`` per-class foreground logits (background logit = 0)
  ``probs``              ``float [B,N,S,S]`` ``sigmoid(logits)``
  ``query_path``         ``list[str]`` (B)
  ``query_original_size````int64 [B,2]`` (H, W) of each query file
  ``class_names``        ``list[str]`` (N), names of classes 1..N
  ``skipped_queries``    ``list[(path, reason)]`` unreadable queries skipped (``skip_bad_queries``)
  ``exif_orientation``   ``list[int]`` (B) EXIF orientation applied to each query (1 = none)
  ====================== ==============================================================
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from fsseg.models.fsdino import SupportEncoding


class SupportSetPredictionMixin:
    """Prediction with a fixed support set, encoded once per run (see the module docstring)."""

    support_encodings_computed: int = 0
    support_encodings: Optional[list[SupportEncoding]] = None
    support_class_names: Optional[list[str]] = None

    # -- the support set ----------------------------------------------------------------------------
    @torch.no_grad()
    def set_support_set(self, support: torch.Tensor, support_masks: torch.Tensor,
                        class_names: Optional[Sequence[str]] = None) -> list[SupportEncoding]:
        """Encode ``support [1,N,K,3,H,W]`` (or ``[N,K,3,H,W]``) with masks ``[1,N,K,H,W]`` (0/1),
        one ``SupportEncoding`` per class, and keep them for ``predict_step``."""
        if support.dim() == 5:
            support, support_masks = support[None], support_masks[None]
        if support.dim() != 6 or support_masks.dim() != 5:
            raise ValueError(f"support set must be [1,N,K,3,H,W] with masks [1,N,K,H,W], got "
                             f"{tuple(support.shape)}, {tuple(support_masks.shape)}")
        n = support.shape[1]
        names = list(class_names) if class_names is not None else [f"class{c + 1}" for c in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} class names for {n} support classes")
        p = next(self.model.parameters())  # images stay fp32 whatever dtype frozen weights are held in
        support = support.to(p.device, torch.float32)
        support_masks = support_masks.to(p.device, torch.float32)
        size = self._model_size()
        if size is not None and tuple(support.shape[-2:]) != size:
            lead = support.shape[:3]
            support = F.interpolate(support.flatten(0, 2), size=size, mode="bilinear",
                                    align_corners=False).unflatten(0, lead)
            support_masks = F.interpolate(support_masks.flatten(0, 2)[:, None], size=size,
                                          mode="nearest")[:, 0].unflatten(0, lead)
        encodings = []
        for c in range(n):
            encodings.append(self.model.encode_support(support[:, c], support_masks[:, c]))
            self.support_encodings_computed += 1
        self.support_encodings = encodings
        self.support_class_names = names
        return encodings

    support_set_info: Optional[dict] = None  # files and K per class, for the prediction summary

    def on_predict_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "support_batch"):
            batch = dm.support_batch()
            self.set_support_set(batch["support"], batch["support_masks"], batch.get("class_names"))
            describe = getattr(dm, "support_set_description", None)
            self.support_set_info = describe() if callable(describe) else None
        elif self.support_encodings is None:
            raise RuntimeError(
                "fsseg predict needs a support set: use data_modules.SupportQueryFolderDataModule "
                "(--data.support_dir ... --data.query_dir ...) or call set_support_set() first")
        super().on_predict_start()

    def _model_size(self) -> Optional[tuple[int, int]]:
        s = getattr(self, "hparams", {}).get("image_size")
        return (int(s), int(s)) if s else None

    # -- queries --------------------------------------------------------------------------------------
    @torch.no_grad()
    def segment_queries(self, query: torch.Tensor) -> dict:
        """``query [B,3,S,S]`` in [0,1] -> ``{"pred" [B,S,S], "logits" [B,N,S,S], "probs"}``."""
        if not self.support_encodings:
            raise RuntimeError("no support set encoded (set_support_set / on_predict_start)")
        size = self._model_size()
        p = next(self.model.parameters())
        query = query.to(p.device, torch.float32)
        if size is not None and tuple(query.shape[-2:]) != size:
            query = F.interpolate(query, size=size, mode="bilinear", align_corners=False)
        out = self.model.segment_multiclass_encoded(query, self.support_encodings)
        return {"pred": out["pred"], "logits": out["logits"], "probs": torch.sigmoid(out["logits"])}

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        query = batch["query"]
        extra = {"skipped_queries": list(batch.get("skipped_queries") or []),
                 "exif_orientation": list(batch.get("exif_orientation") or [])}
        if query.shape[0] == 0:  # every query of the batch was unreadable (skip mode)
            s = self._model_size() or (1, 1)
            n = len(self.support_encodings or [])
            return {"pred": torch.zeros(0, *s, dtype=torch.int64), "logits": torch.zeros(0, n, *s),
                    "probs": torch.zeros(0, n, *s), "query_path": [], "query_original_size": torch.zeros(0, 2),
                    "class_names": list(self.support_class_names or []), **extra}
        out = self.segment_queries(query)
        size = batch.get("query_original_size")
        if size is None:
            size = torch.tensor([list(query.shape[-2:])] * query.shape[0], dtype=torch.int64)
        paths = batch.get("query_path") or [f"query_{batch_idx}_{i}" for i in range(query.shape[0])]
        return {**out, "query_path": list(paths), "query_original_size": size,
                "class_names": list(self.support_class_names or []), **extra}
