"""DistillFSS-style specialisation: distil a support set into a
support-free N-class student (``fsseg.models.SpecializedSegmenter``).

Teacher = the episodic FS-DINO (a ``FewShotModule`` checkpoint, or a random small one for tests),
frozen. Student = the teacher's frozen encoder + adapter (shared), a copy of its decoder, and the
dedicated per-class layer (``ClassSpecificPrompts``) initialised from the supports so it starts
where the teacher is.

Training data = the support images and augmentations of them (``SpecializationDataModule``).
Loss = ``distill_weight`` * T^2 * KL(teacher || student) over the N+1 classes (background logit 0
on both sides; the teacher's N-way logits come from its per-class decoding with the *other*
shots as supports, i.e. leave-one-out, when K > 1) + ``label_weight`` * (CE + Dice) on the
support labels. Only the dedicated layer trains unless ``train_decoder`` (fine-tuning).
Validation / test: ``FewShotIoU`` over the N classes (each class binarised, pooled over queries);
``eval_teacher`` also logs the episodic teacher's score with all K supports (``*/teacher_miou``).
``predict_step`` needs no supports.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F

from fsseg.losses import multiclass_ce_dice_loss
from fsseg.metrics import DatasetForegroundIoU, FewShotIoU, update_dataset_scored, update_scored
from fsseg.models.fsdino import FSDINO, ImageFeatures
from fsseg.models.segmenters import (
    build_segmenter,
    method_name,
    refuse_specialisation,
    segmenter_spec,
    spec_value,
)
from fsseg.models.specialized import SpecializedSegmenter, per_class_supports
from fsseg.modules.common import (
    GuardedStepMixin,
    NonFiniteLossGuard,
    PortableCheckpointMixin,
    SampleTrackingMixin,
)
from fsseg.modules.specialize_report import SpecializationReportMixin


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1)


def soft_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise T^2 * KL(softmax(teacher/T) || softmax(student/T)) over the class dim (dim 1),
    averaged over pixels. Both ``[B,N+1,H,W]``."""
    if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
        teacher_logits = F.interpolate(teacher_logits, size=student_logits.shape[-2:], mode="bilinear",
                                       align_corners=False)
    t = temperature
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return kl.mean() * t * t


class SpecializeModule(SpecializationReportMixin, GuardedStepMixin, SampleTrackingMixin, PortableCheckpointMixin,
                       L.LightningModule):
    """Specialise the episodic FS-DINO on a support set into a support-free N-class segmenter.

    Args:
        teacher_ckpt: a ``FewShotModule`` checkpoint (the episodic teacher). Without it the teacher
            is built from the arguments below (random weights unless checkpoints are given: tests,
            demo).
        segmenter: the teacher's model spec, as ``FewShotModule`` (with ``teacher_ckpt``: replaced by the
            teacher's, so the saved hyper-parameters say what the model is). A method registered
            without a student initialiser is refused.
        image_size: the size the student trains and predicts at. None: the teacher checkpoint's
            ``image_size`` (``teacher_ckpt``), else 518. The data module's ``image_size`` follows it
            when that is None.
        dinov2_checkpoint: as ``FewShotModule`` (ignored when ``teacher_ckpt`` is set).
        sam_checkpoint: as ``FewShotModule`` (ignored when ``teacher_ckpt`` is set).
        adapter_checkpoint: as ``FewShotModule`` (ignored when ``teacher_ckpt`` is set).
        class_names: the classes, when the student must be built before any data is seen (loading a
            checkpoint outside a Trainer); normally taken from the data module's support set.
        distill_weight: weight of the soft teacher term.
        label_weight: weight of CE + Dice on the support labels (0 = pure distillation).
        temperature: softmax temperature of the distillation term.
        leave_one_out: teacher targets for support k use the other K-1 shots (when K > 1).
        train_decoder: also fine-tune the decoder / mask downscaling / PE (a copy; the teacher's
            stays intact). Otherwise only the dedicated layer trains.
        num_tokens: sparse tokens per class in the dedicated layer.
        init_from_supports: start from the teacher's SVP tokens and prototypes (else random).
        eval_teacher: also score the episodic teacher (all K supports) in validation / test.
        lr: AdamW learning rate of the trainable student parameters.
        weight_decay: AdamW weight decay.
        lr_schedule: ``cosine`` decay over the run, or ``none``.
        nonfinite: ``raise`` stops naming the step and samples; ``skip`` drops the step.
    """

    def __init__(
        self,
        teacher_ckpt: Optional[str] = None,
        segmenter: Optional[dict[str, Any]] = None,
        image_size: Optional[int] = None,
        dinov2_checkpoint: Optional[str] = None,
        sam_checkpoint: Optional[str] = None,
        adapter_checkpoint: Optional[str] = None,
        class_names: Optional[list[str]] = None,
        distill_weight: float = 1.0,
        label_weight: float = 0.5,
        temperature: float = 1.0,
        leave_one_out: bool = True,
        train_decoder: bool = False,
        num_tokens: int = 1,
        init_from_supports: bool = True,
        eval_teacher: bool = True,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        lr_schedule: Literal["none", "cosine"] = "none",
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.strict_loading = False
        if not teacher_ckpt:
            refuse_specialisation(segmenter_spec(segmenter))  # before a teacher checkpoint is read
        if teacher_ckpt:
            from fsseg.modules.fewshot import FewShotModule

            teacher_module = FewShotModule.load_from_checkpoint(teacher_ckpt, map_location="cpu", weights_only=True)
            teacher = teacher_module.model
            # the teacher (and the encoder/adapter the student shares with it) come from that file
            self.frozen_prefixes = ("teacher.", "student.encoder.", "student.adapter.")
            # the architecture is the teacher's: recorded, so the hyper-parameters say what runs
            self.hparams["segmenter"] = dict(teacher_module.hparams["segmenter"])
            refuse_specialisation(self.hparams["segmenter"])
            self.teacher_image_size = int(teacher_module.hparams["image_size"])
            self.image_size_source = (f"the teacher checkpoint {teacher_ckpt}" if image_size is None
                                      else "model.image_size")
            self.hparams["image_size"] = int(image_size or self.teacher_image_size)
        else:
            image_size = int(image_size or 518)
            self.hparams["image_size"] = self.teacher_image_size = image_size
            self.image_size_source = "model.image_size (no teacher_ckpt: a random teacher)"
            self.hparams["segmenter"] = segmenter_spec(segmenter)
            teacher = build_segmenter(self.hparams["segmenter"], image_size=image_size,
                                      dinov2_checkpoint=dinov2_checkpoint, sam_checkpoint=sam_checkpoint,
                                      adapter_checkpoint=adapter_checkpoint)
            self.frozen_prefixes = ("teacher.encoder.", "student.encoder.") if dinov2_checkpoint else ()
        self.teacher: FSDINO = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.student: Optional[SpecializedSegmenter] = None
        self._support: Optional[dict] = None  # cached support features for teacher targets
        self.guard = NonFiniteLossGuard(nonfinite)
        self.val_metric = FewShotIoU(1)
        self.test_metric = FewShotIoU(1)
        self.val_teacher_metric = FewShotIoU(1)
        self.test_teacher_metric = FewShotIoU(1)
        self.val_dataset_iou, self.test_dataset_iou = DatasetForegroundIoU(1), DatasetForegroundIoU(1)
        self.val_teacher_dataset_iou, self.test_teacher_dataset_iou = DatasetForegroundIoU(1), DatasetForegroundIoU(1)
        if class_names:
            self.build_student(list(class_names))

    # -- construction ---------------------------------------------------------------------------
    def build_student(self, class_names: list[str], support_set: Optional[dict] = None) -> SpecializedSegmenter:
        """Student for ``class_names``; ``support_set`` (``{"support" [N,K,3,H,W], "support_masks"}``)
        initialises the dedicated layer from the teacher and is cached for teacher targets."""
        hp = self.hparams
        # saved with the hyper-parameters, so `fsseg predict --ckpt_path` rebuilds the student in
        # __init__ and needs no support folder at all
        hp["class_names"] = list(class_names)
        init = support_set if (support_set is not None and hp.init_from_supports) else None
        self.student = SpecializedSegmenter.from_fsdino(
            self.teacher, class_names, init_from_supports=init, num_tokens=hp.num_tokens,
            train_decoder=hp.train_decoder).to(self.device)
        n = len(class_names)
        for name in ("val_metric", "test_metric", "val_teacher_metric", "test_teacher_metric"):
            setattr(self, name, FewShotIoU(n).to(self.device))
            setattr(self, name.replace("metric", "dataset_iou"), DatasetForegroundIoU(n).to(self.device))
        if support_set is not None:
            self.set_support(support_set)
        return self.student

    @torch.no_grad()
    def set_support(self, support_set: dict) -> None:
        """Cache the support set's frozen features (the teacher's conditioning). Classes may hold
        different shot counts (per-class lists, see ``per_class_supports``)."""
        images, masks = per_class_supports(support_set["support"], support_set["support_masks"])
        counts = [int(x.shape[0]) for x in images]
        sem = self.teacher.extract(torch.cat(images).to(self.device), with_embedding=False).semantic
        self._support = {"semantic": list(sem.split(counts)), "masks": [m.to(self.device).float() for m in masks],
                         "images": images,
                         "class_names": list(support_set.get("class_names") or self.student.class_names)}

    def bundle_hparams(self) -> dict:
        """Constructor arguments that rebuild this module from its full state dict alone (no teacher
        file, no weight file): the teacher's architecture, built with random weights, then loaded."""
        if int(self.hparams.image_size) != self.teacher_image_size:
            raise ValueError(f"a model specialised at {self.hparams.image_size} px from a teacher built at "
                             f"{self.teacher_image_size} px cannot be bundled (its teacher is rebuilt at one size); "
                             "export without --bundle")
        hp = dict(self.hparams)
        hp.update(teacher_ckpt=None, dinov2_checkpoint=None, sam_checkpoint=None, adapter_checkpoint=None)
        if self.student is not None:
            hp["class_names"] = list(self.student.class_names)
        return hp

    def describe_size(self) -> str:
        hp = self.hparams
        method, backbone = method_name(hp.segmenter), spec_value(hp.segmenter, "backbone")
        return (f"image_size {hp.image_size}, backbone {backbone}, method {method} (size from "
                f"{self.image_size_source}; --model.image_size N overrides it)")

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.student is not None:
            return  # support-free: the student (and its class names) came from the checkpoint
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "image_size"):
            if dm.image_size is None:
                dm.image_size = int(self.hparams.image_size)
            elif int(dm.image_size) != int(self.hparams.image_size):
                raise ValueError(f"data.image_size {dm.image_size} differs from the model's image_size "
                                 f"{self.hparams.image_size} (the size the specialised model predicts at): "
                                 "--data.image_size null follows the model, or give the same --model.image_size")
        if stage == "fit" and self.trainer.is_global_zero:
            print(f"specialising at {self.describe_size()}", file=sys.stderr)
        support_set = dm.support_set() if dm is not None and hasattr(dm, "support_set") else None
        if self.student is None:
            if support_set is None:
                return  # built from the checkpoint in on_load_checkpoint
            self.build_student(list(support_set["class_names"]), support_set)
        elif support_set is not None and self._support is None and stage in ("fit", "validate", "test"):
            self.set_support(support_set)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen teacher: no dropout / batch-stat updates
        return self

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["fsseg_class_names"] = list(self.student.class_names) if self.student is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        names = checkpoint.get("fsseg_class_names")
        if names and (self.student is None or self.student.class_names != list(names)):
            self.build_student(list(names), None)
        super().on_load_checkpoint(checkpoint)

    # -- teacher signal -------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_logits(self, feats: ImageFeatures, out_size, shot_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Episodic teacher's N-way logits ``[B,N+1,H,W]`` (background 0) on query features;
        with ``shot_index`` (and ``leave_one_out``) sample b's supports exclude shot ``shot_index[b]``
        of every class that has that shot and more than one (so a support image never conditions its
        own target). Classes may hold different shot counts K_c."""
        if self._support is None:
            raise RuntimeError("no support set cached (set_support)")
        b = feats.semantic.shape[0]
        loo = shot_index is not None and self.hparams.leave_one_out
        out = []
        for sem, masks in zip(self._support["semantic"], self._support["masks"]):
            k = sem.shape[0]
            own = (shot_index.to(sem.device) < k) if loo and k > 1 else torch.zeros(b, dtype=torch.bool, device=sem.device)
            logits = sem.new_empty(b, *tuple(out_size))
            rest = (~own).nonzero().flatten()
            if len(rest):  # all K_c shots, one encoding broadcast over these samples
                enc = self.teacher.encode_support_features(sem[None], masks[None])
                logits[rest] = self.teacher.decode(feats[rest], enc, out_size=tuple(out_size))["logits"]
            idx = own.nonzero().flatten()
            if len(idx):  # the other K_c - 1 shots
                keep = torch.stack([torch.tensor([j for j in range(k) if j != int(shot_index[i])]) for i in idx.tolist()])
                keep = keep.to(sem.device)
                enc = self.teacher.encode_support_features(sem[keep], masks[keep])
                logits[idx] = self.teacher.decode(feats[idx], enc, out_size=tuple(out_size))["logits"]
            out.append(logits)
        logits = torch.stack(out, 1)
        return torch.cat([logits.new_zeros(b, 1, *logits.shape[-2:]), logits], 1)

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, query: torch.Tensor) -> dict:
        return self.student(query)

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        feats = self.student.extract(images)
        out = self.student.decode(feats, out_size=images.shape[-2:])
        hp = self.hparams
        parts: dict = {}
        loss = images.new_zeros(())
        if hp.distill_weight:
            t = self.teacher_logits(feats, images.shape[-2:], batch.get("shot_index"))
            kd = soft_distillation_loss(out["logits"], t, hp.temperature)
            loss = loss + hp.distill_weight * kd
            parts["distill"] = kd.detach()
            parts["agreement"] = (out["pred"] == t.argmax(1)).float().mean()
        if hp.label_weight and "label" in batch:
            lab = multiclass_ce_dice_loss(out["logits"], batch["label"])
            loss = loss + hp.label_weight * lab
            parts["label"] = lab.detach()
            valid = batch["label"] != 255
            parts["label_acc"] = ((out["pred"] == batch["label"]) & valid).sum() / valid.sum().clamp(min=1)
        return loss, parts

    def training_step(self, batch: dict, batch_idx: int):
        loss, parts = self.losses(batch)
        if not self.guard.check(loss, self, batch):
            return self.guard.skipped_step(self)
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=bs)
        return loss

    def _eval_step(self, batch: dict, stage: str, metric: FewShotIoU, teacher_metric: FewShotIoU) -> dict:
        query, target = batch["query"], batch["query_mask"]
        feats = self.student.extract(query)
        out = self.student.decode(feats, out_size=query.shape[-2:])
        # class-index logits [B,N+1,H,W] (channel 0 background): scored at the batch's scoring size
        labels = batch.get("query_label_orig")
        update_scored(metric, out["logits"], _argmax, target, batch["class_id"], labels=labels)
        update_dataset_scored(getattr(self, f"{stage}_dataset_iou"), out["logits"], _argmax, target, labels)
        if self.hparams.eval_teacher and self._support is not None:
            t = self.teacher_logits(feats, query.shape[-2:])
            update_scored(teacher_metric, t, _argmax, target, batch["class_id"], labels=labels)
            update_dataset_scored(getattr(self, f"{stage}_teacher_dataset_iou"), t, _argmax, target, labels)
        return {"pred": out["pred"], "logits": out["logits"]}

    def validation_step(self, batch: dict, batch_idx: int):
        return self._eval_step(batch, "val", self.val_metric, self.val_teacher_metric)

    def test_step(self, batch: dict, batch_idx: int):
        return self._eval_step(batch, "test", self.test_metric, self.test_teacher_metric)

    def _log_metrics(self, stage: str, metric: FewShotIoU, teacher_metric: FewShotIoU) -> None:
        res = metric.compute()
        self.log(f"{stage}/miou", res["miou"], prog_bar=True)
        self.log(f"{stage}/fbiou", res["fbiou"])
        self.last_metrics = {f"{stage}/{k}": v for k, v in res.items()}
        metric.reset()
        # DistillFSS's figure (dataset-pooled foreground Jaccard), beside FewShotIoU
        self._log_dataset_iou(f"{stage}/dataset_fg_iou", getattr(self, f"{stage}_dataset_iou"))
        if teacher_metric.episodes.sum() > 0:
            tr = teacher_metric.compute()
            self.log(f"{stage}/teacher_miou", tr["miou"])
            self.last_metrics[f"{stage}/teacher_miou"] = tr["miou"]
            teacher_metric.reset()
            self._log_dataset_iou(f"{stage}/teacher_dataset_fg_iou", getattr(self, f"{stage}_teacher_dataset_iou"))

    def _log_dataset_iou(self, name: str, metric: DatasetForegroundIoU) -> None:
        value = metric.compute()["fg_iou"]
        self.log(name, value)
        self.last_metrics[name] = value
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metric, self.val_teacher_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metric, self.test_teacher_metric)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if self.student is None:
            raise RuntimeError("no specialised student: give --ckpt_path of a SpecializeModule run, or a data "
                               "module with a support set")
        extra = {"skipped_queries": list(batch.get("skipped_queries") or []),
                 "exif_orientation": list(batch.get("exif_orientation") or [])}
        names = list(self.student.class_names)
        if batch["query"].shape[0] == 0:  # every photo of the batch was unreadable (skip_bad_queries)
            s = int(self.hparams.image_size)
            return {"pred": torch.zeros(0, s, s, dtype=torch.int64), "logits": torch.zeros(0, len(names) + 1, s, s),
                    "query_path": [], "query_original_size": torch.zeros(0, 2), "class_names": names, **extra}
        out = self.student(batch["query"])
        return {"pred": out["pred"], "logits": out["logits"], "query_path": batch.get("query_path"),
                "query_original_size": batch.get("query_original_size"), "class_names": names, **extra}

    def configure_optimizers(self):
        if self.student is None:
            raise RuntimeError("the student is built in setup() from the data module's support_set()")
        params = self.student.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return opt
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
