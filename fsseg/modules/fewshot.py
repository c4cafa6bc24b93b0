"""Stage 2 (paper sec. 3.4.3): episodic training of the prompt generator and SAM mask decoder.

DINOv2 and the distilled adapter are frozen; SVP, the PCS path, the 4D correlation (or UINO-FSS's
MHCM), the learnable positional encoding and the decoder are trained on base classes with
Dice + BCE on the prior mask and on the final mask (eq. 6-8). Validation/test report the field's
mIoU and FB-IoU (``fsseg.metrics.FewShotIoU``) on novel classes, at the data module's scoring size
(``query_label_orig``, docs/protocols/scoring.md) and per evaluation seed (``eval_seed``).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import lightning as L
import torch

from data_modules.episodes import batch_to_model_dtypes
from fsseg.cache import TensorDiskCache, module_fingerprint
from fsseg.losses import dice_bce_loss
from fsseg.metrics import FewShotIoU, update_scored
from fsseg.models.build import require_previous_stage, resolve_adapter_settings
from fsseg.models.fsdino import ImageFeatures
from fsseg.models.segmenters import build_segmenter, check_spec, segmenter_spec
from fsseg.modules.common import (
    GuardedStepMixin,
    NonFiniteLossGuard,
    PortableCheckpointMixin,
    SampleTrackingMixin,
)
from fsseg.modules.predict import SupportSetPredictionMixin
from fsseg.precision import dtype_key, run_device


class FewShotModule(SupportSetPredictionMixin, GuardedStepMixin, SampleTrackingMixin, PortableCheckpointMixin,
                    L.LightningModule):
    """Episodic few-shot segmentation with FS-DINO / UINO-FSS.

    Args:
        segmenter: the model spec: ``{"name": <method>, <its builder's arguments>}``, e.g. ``{name:
            compact, backbone: dinov2_vitb14, decoder_dim: 256}``; methods ``ba_pcs`` | ``compact`` |
            ``full`` | ``uino`` | ``uino_large`` (or the paper's row names ``BA+PCS``, ``BA+SVP+PCS``,
            ``BA+SVP+PCS+4D``, ``UINO-FSS``), the preset ``tiny`` (``{name: tiny, method: compact}``) or
            ``package.module:name`` (``fsseg.models.segmenters``). Default ``{name: full}``.
        image_size: model input size (518 in the paper); ``fsseg predict/test --ckpt_path`` take it
            from the checkpoint unless given.
        dinov2_checkpoint: official DINOv2 weights, path or URL (random weights if None). Recorded in
            checkpoints by file name and sha256, found again by name on another machine.
        sam_checkpoint: official SAM weights, path or URL: initialise the mask decoder, mask
            downscaling and PE at the first build only (a checkpoint holds the trained decoder).
        adapter_checkpoint: stage 1's output (a distillation ``.ckpt`` or a plain adapter state dict);
            read at the first build only (a checkpoint holds the adapter).
        num_classes: size of the benchmark's class-id space (linked from ``data.num_classes``).
        prior_loss_weight: weight of L_prior in L = L_prior + L_final (1 in the paper).
        lr: AdamW learning rate (paper: 1e-3).
        weight_decay: AdamW weight decay (HDMNet: 0.01).
        lr_schedule: per optimizer step ``none``, ``cosine`` decay over the run, or ``poly``: HDMNet's
            ``lr * (1 - it/max_it) ** poly_power`` (``poly_lr_factor``).
        poly_power: exponent of the ``poly`` schedule (HDMNet config ``power: 0.9``).
        feature_cache: ``off`` (``eval`` once a ``FrozenFeatureCache`` is attached); ``eval`` caches
            frozen features of val/test images (never augmented); ``all`` also of training images
            (only valid with training augmentation off).
        nonfinite: ``raise`` stops naming the step and samples; ``skip`` drops the step.
    """

    # Portable checkpoints (fsseg.modules.checkpoints): DINOv2 is recorded by name + sha256 and left
    # out; SAM (decoder init) and the stage-1 adapter are only read at first build: their weights
    # are in the state dict, so a model rebuilt from a checkpoint needs neither file.
    FROZEN_WEIGHT_ARGS = {"dinov2_checkpoint": "model.encoder."}
    INIT_ONLY_WEIGHT_ARGS = ("sam_checkpoint", "adapter_checkpoint")

    def __init__(
        self,
        segmenter: Optional[dict[str, Any]] = None,
        image_size: int = 518,
        dinov2_checkpoint: Optional[str] = None,
        sam_checkpoint: Optional[str] = None,
        adapter_checkpoint: Optional[str] = None,
        num_classes: int = 1000,
        prior_loss_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        lr_schedule: Literal["none", "cosine", "poly"] = "cosine",
        poly_power: float = 0.9,
        feature_cache: Literal["off", "eval", "all"] = "off",
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = segmenter_spec(segmenter)
        check_spec(spec)  # a wrong key fails here, before any weight file is read
        # Frozen weights loaded from a file are not repeated in checkpoints; random ones (tests) are.
        self.frozen_prefixes = ("model.encoder.",) if dinov2_checkpoint else ()
        self.strict_loading = False
        if adapter_checkpoint:
            # The adapter settings read from the stage-1 checkpoint are written into the
            # hyper-parameters: a model rebuilt from this module's checkpoint never reads that file.
            require_previous_stage("adapter_checkpoint", adapter_checkpoint)
            spec["adapter_kwargs"], spec["tap_norm"] = resolve_adapter_settings(
                adapter_checkpoint, spec.get("adapter_kwargs"), spec.get("tap_norm"))
        self.hparams["segmenter"] = spec
        self.model = self._build_model()
        self.val_metric = FewShotIoU(num_classes)
        self.test_metric = FewShotIoU(num_classes)
        self.feature_cache_store: Optional[TensorDiskCache] = None  # set by callbacks.FrozenFeatureCache
        self.guard = NonFiniteLossGuard(nonfinite)

    def _build_model(self):
        hp = self.hparams
        return build_segmenter(hp.segmenter, image_size=hp.image_size, dinov2_checkpoint=hp.dinov2_checkpoint,
                               sam_checkpoint=hp.sam_checkpoint, adapter_checkpoint=hp.adapter_checkpoint)

    def setup(self, stage: str) -> None:
        # The metric's class-id space and seed list follow the benchmark the data module serves.
        dm = getattr(self.trainer, "datamodule", None)
        n = getattr(dm, "num_classes", None) or self.val_metric.num_classes
        self.eval_seeds = list(getattr(dm, "eval_seeds", None) or [0])
        seeds = len(self.eval_seeds)
        if n != self.val_metric.num_classes or seeds != self.val_metric.num_seeds:
            self.val_metric = FewShotIoU(int(n), num_seeds=seeds).to(self.device)
            self.test_metric = FewShotIoU(int(n), num_seeds=seeds).to(self.device)
        # The trainer's precision (fsseg.precision: 32 / bf16-mixed / 16-mixed) decides the frozen
        # parts' dtype; Lightning's autocast runs the rest.
        self.model.set_precision(getattr(self.trainer, "precision", "32"), run_device(self))
        # The metric's class-id space follows the benchmark the data module serves.
        n = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        if n and n != self.val_metric.num_classes:
            self.val_metric = FewShotIoU(int(n))
            self.test_metric = FewShotIoU(int(n))

    # -- frozen features, optionally cached -----------------------------------------------------
    def feature_namespace(self) -> str:
        m = self.model
        # settings that change the features without being weights (not in the fingerprint)
        settings = (f"pos=official|tap_norm={m.encoder.tap_norm}|"
                    f"adapter_pe={m.adapter.pos_encoding}|adapter_act={type(m.adapter.reduce[1]).__name__}")
        return (f"fsdino-frozen|{m.encoder.arch}|adapter-frozen={m.freeze_adapter}|{settings}|"
                f"{module_fingerprint(m.encoder, m.adapter)}{dtype_key(m.encoder_dtype)}")

    def _use_cache(self) -> bool:
        # An attached store with feature_cache "off" means "eval": derived here rather than written
        # back into the saved hyper-parameters.
        if self.feature_cache_store is None or not self.model.freeze_adapter:
            return False
        return self.hparams.feature_cache == "all" or not self.training

    def extract(self, images: torch.Tensor, names: Optional[list[str]] = None) -> ImageFeatures:
        """Frozen features of ``images [N,3,H,W]``; served from the cache when allowed."""
        if names is None or not self._use_cache():
            return self.model.extract(images)
        cache = self.feature_cache_store
        size = f"{images.shape[-2]}x{images.shape[-1]}"
        keys = [f"{n}|{size}" for n in names]
        found = [cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            feats = self.model.extract(images[missing])
            for j, i in enumerate(missing):
                found[i] = {"embedding": feats.embedding[j], "semantic": feats.semantic[j]}
                cache.put(keys[i], found[i])
        # served in the dtype they were computed and stored in (the namespace names it)
        dev = images.device
        return ImageFeatures(embedding=torch.stack([v["embedding"] for v in found]).to(dev),
                             semantic=torch.stack([v["semantic"] for v in found]).to(dev))

    # -- forward on an episode batch --------------------------------------------------------------
    def forward_episode(self, batch: dict) -> dict:
        """1-way batch -> ``{"logits", "prior"}`` ``[B,H,W]``; N-way -> ``{"logits" [B,N,H,W], "pred"}``."""
        query, support, masks = batch["query"], batch["support"], batch["support_masks"]
        if support.dim() == 6:  # N-way: [B,N,K,3,H,W]
            return self.model.segment_multiclass(query, support, masks)
        b, k = support.shape[:2]
        q_feats = self.extract(query, batch.get("query_name"))
        s_names = None
        if "support_names" in batch:
            s_names = [n for names in batch["support_names"] for n in names]
        s_feats = self.extract(support.flatten(0, 1), s_names)
        s_feats = ImageFeatures(embedding=s_feats.embedding.unflatten(0, (b, k)),
                                semantic=s_feats.semantic.unflatten(0, (b, k)))
        encoded = self.model.encode_support_features(s_feats, masks)
        return self.model.decode(q_feats, encoded, out_size=query.shape[-2:])

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_masks: torch.Tensor) -> dict:
        return self.model(query, support, support_masks)

    def episode_loss(self, out: dict, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        final = dice_bce_loss(out["logits"], target)
        prior = dice_bce_loss(out["prior"], target)
        loss = self.hparams.prior_loss_weight * prior + final
        return loss, {"loss_final": final.detach(), "loss_prior": prior.detach()}

    def training_step(self, batch: dict, batch_idx: int):
        # uint8 training batches (EpisodicDataModule's ``input_path``) become float32 here, on the device
        batch = batch_to_model_dtypes(batch)
        if batch["support"].dim() == 6:
            raise ValueError("episodic training uses 1-way episodes (data.n_way=1); N-way is for evaluation")
        out = self.forward_episode(batch)
        loss, parts = self.episode_loss(out, batch["query_mask"])
        if not self.guard.check(loss, self, batch):
            return self.guard.skipped_step(self)
        bs = batch["query"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=bs)
        return loss

    @staticmethod
    def predict_from_logits(logits: torch.Tensor) -> torch.Tensor:
        """1-way ``[B,H,W]`` -> foreground where the logit is > 0; N-way ``[B,N,H,W]`` -> class index
        0..N, the ``FSDINO.segment_multiclass`` rule (background logit fixed at 0)."""
        if logits.dim() == 3:
            return (logits > 0).long()
        return torch.cat([logits.new_zeros(logits.shape[0], 1, *logits.shape[-2:]), logits], dim=1).argmax(1)

    @classmethod
    def predictions(cls, out: dict) -> torch.Tensor:
        if "pred" in out:
            return out["pred"]
        return cls.predict_from_logits(out["logits"])

    def _eval_step(self, batch: dict, metric: FewShotIoU, stage: str) -> dict:
        out = self.forward_episode(batch)
        pred = self.predictions(out)
        target = batch["query_mask"]
        update_scored(metric, out["logits"], self.predict_from_logits, target, batch["class_id"],
                      labels=batch.get("query_label_orig"), seed_index=batch.get("eval_seed"))
        if batch["class_id"].dim() == 1:
            loss, _ = self.episode_loss(out, target)
            self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=pred.shape[0])
        return {"pred": pred, "logits": out["logits"]}

    def validation_step(self, batch: dict, batch_idx: int):
        return self._eval_step(batch, self.val_metric, "val")

    def test_step(self, batch: dict, batch_idx: int):
        return self._eval_step(batch, self.test_metric, "test")

    def _log_metric(self, metric: FewShotIoU, stage: str) -> dict:
        result = metric.compute()  # states already summed over DDP ranks: no sync_dist
        self.log(f"{stage}/miou", result["miou"], prog_bar=True, sync_dist=False)
        self.log(f"{stage}/fbiou", result["fbiou"], sync_dist=False)
        # HDMNet's protocol: every seed's figures besides their mean (test.py:165-175); seed index s
        # is position s in the data module's ``eval_seeds``.
        for key in [k for k in result if "_seed" in k]:
            self.log(f"{stage}/{key}", result[key], sync_dist=False)
        self.last_metrics = {f"{stage}/{k}": v for k, v in result.items()}
        metric.reset()
        return result

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if self.hparams.lr_schedule == "poly":
            power = self.hparams.poly_power
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: poly_lr_factor(step, total, power))
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def poly_lr_factor(step: int, total_steps: int, power: float = 0.9) -> float:
    """LR multiplier of optimizer step ``step`` (0-based) in HDMNet's poly schedule: its train.py:299-301
    sets ``lr = base_lr * (1 - current_iter / max_iter) ** power`` with ``current_iter = step + 1``
    before each step (util/util.py:52-57), so the last of ``max_iter`` steps runs at lr 0."""
    return max(0.0, 1.0 - (step + 1) / total_steps) ** power
