"""Stage 1 (paper sec. 3.3): distil SAM's image embedding into a bottleneck adapter on DINOv2 block 3.

Student = frozen DINOv2 blocks 1..3 + trainable ``BottleneckAdapter`` at the curriculum resolution
(126 -> 252 -> 518, switched by ``callbacks.ResolutionCurriculum`` through ``set_resolution``).
Teacher = frozen SAM image encoder, always at its own 1024x1024 input, so its embedding of an image
never changes: ``callbacks.TeacherEmbeddingCache`` attaches a disk cache through ``teacher_cache``.
"""

from __future__ import annotations

from typing import Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F

from fsseg.cache import TensorDiskCache
from fsseg.models import BottleneckAdapter, DINOv2Encoder, SAMImageEncoder
from fsseg.models.build import load_adapter_state
from fsseg.modules.common import LeanCheckpointMixin, NonFiniteLossGuard


class DistillationModule(LeanCheckpointMixin, L.LightningModule):
    """Adapter distillation with an MSE (or GKD query-based soft distillation) objective.

    Args:
        backbone: DINOv2 architecture name (``dinov2_vitb14``, ..., ``dinov2_tiny`` for tests).
        dinov2_checkpoint: local path or URL of an official DINOv2 checkpoint (random weights if None).
        dinov2_sha256: expected sha256 of that file (checked when given).
        teacher: SAM image-encoder variant (``vit_h``, ``vit_l``, ``vit_b``, ``tiny``).
        sam_checkpoint / sam_sha256: official SAM checkpoint (its ``image_encoder.*`` keys are used).
        tap_block: DINOv2 block whose output feeds the adapter (3 in the paper, sec. 2.1).
        resolution: student input size at the start (the curriculum callback changes it).
        val_resolution: student size for validation (None: the current training size). Fixing it
            (e.g. 518) makes validation MSE comparable across curriculum stages.
        match_grid: where student and teacher meet. ``student``: the teacher's 64x64 embedding is
            area-resampled to the student grid (37x37 at 518), which is the grid the adapter output
            is used at in stage 2; ``teacher``: the student output is bilinearly upsampled to 64x64.
        objective: ``mse`` (paper) or ``gkd`` (seed 001: query-based soft distillation).
        adapter_init: adapter weights to start from (a previous stage's checkpoint, for the three
            chained runs ``distill_126/252/518.yaml``).
        lr / weight_decay: AdamW (paper: lr 1e-3).
        nonfinite: ``raise`` stops with the step and sample ids; ``skip`` drops the step.
    """

    def __init__(
        self,
        backbone: str = "dinov2_vitb14",
        dinov2_checkpoint: Optional[str] = None,
        dinov2_sha256: Optional[str] = None,
        teacher: str = "vit_h",
        sam_checkpoint: Optional[str] = None,
        sam_sha256: Optional[str] = None,
        tap_block: int = 3,
        resolution: int = 518,
        val_resolution: Optional[int] = None,
        match_grid: Literal["student", "teacher"] = "student",
        objective: Literal["mse", "gkd"] = "mse",
        gkd_temperature: float = 1.0,
        adapter_init: Optional[str] = None,
        adapter_mid_dim: int = 256,
        adapter_bottleneck_dim: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Frozen weights loaded from a file are not repeated in checkpoints; random ones (tests) are.
        self.frozen_prefixes = tuple(p for p, ckpt in (("encoder.", dinov2_checkpoint),
                                                       ("teacher.", sam_checkpoint)) if ckpt)
        self.strict_loading = False
        self.encoder = DINOv2Encoder(arch=backbone, tap_block=tap_block, checkpoint=dinov2_checkpoint,
                                     sha256=dinov2_sha256)
        self.teacher = SAMImageEncoder(variant=teacher, checkpoint=sam_checkpoint, sha256=sam_sha256)
        self.adapter = BottleneckAdapter(in_dim=self.encoder.embed_dim, out_dim=self.teacher.out_chans,
                                         mid_dim=adapter_mid_dim, bottleneck_dim=adapter_bottleneck_dim)
        if adapter_init:
            load_adapter_state(self.adapter, adapter_init)
        self.gkd = None
        if objective == "gkd":
            from fsseg.models.gkd import QueryBasedSoftDistillation

            self.gkd = QueryBasedSoftDistillation(dim=self.teacher.out_chans, temperature=gkd_temperature)
        self.resolution = resolution
        self.teacher_cache: Optional[TensorDiskCache] = None  # set by callbacks.TeacherEmbeddingCache
        self.teacher_calls = 0  # number of images the teacher actually encoded (tests, benchmarks)
        self.guard = NonFiniteLossGuard(nonfinite)

    # -- public hooks used by callbacks ------------------------------------------------------
    def set_resolution(self, resolution: int) -> None:
        patch = self.encoder.patch_size
        if resolution % patch:
            raise ValueError(f"student resolution {resolution} is not a multiple of the patch size {patch}")
        self.resolution = resolution

    def teacher_namespace(self, input_size: tuple[int, int]) -> str:
        """Everything a cached teacher embedding depends on besides the image itself."""
        return f"sam-teacher|{self.teacher.fingerprint}|input={input_size[0]}x{input_size[1]}"

    # -- computation --------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_embeddings(self, batch: dict) -> torch.Tensor:
        images = batch["image"]
        cache = self.teacher_cache
        if cache is None:
            self.teacher_calls += images.shape[0]
            return self.teacher(images)
        keys = list(batch["path"])
        found = [cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            self.teacher_calls += len(missing)
            computed = self.teacher(images[missing])
            for j, i in enumerate(missing):
                found[i] = {"embedding": computed[j]}
                cache.put(keys[i], found[i])
        return torch.stack([v["embedding"] for v in found]).to(images.device, images.dtype)

    def student_embeddings(self, images: torch.Tensor, resolution: Optional[int] = None) -> torch.Tensor:
        size = resolution or self.resolution
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            early = self.encoder.forward_early(x)
        return self.adapter(early)

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.hparams.match_grid == "student":
            teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
        else:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        if self.gkd is not None:
            return self.gkd(student, teacher)
        return F.mse_loss(student, teacher)

    def _step(self, batch: dict, resolution: Optional[int] = None) -> torch.Tensor:
        student = self.student_embeddings(batch["image"], resolution)
        return self.distillation_loss(student, self.teacher_embeddings(batch))

    def training_step(self, batch: dict, batch_idx: int):
        loss = self._step(batch)
        if not self.guard.check(loss, self, batch):
            return None
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        self.log("train/resolution", float(self.resolution), batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int):
        loss = self._step(batch, self.hparams.val_resolution)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch["image"].shape[0])
        return loss

    def configure_optimizers(self):
        params = list(self.adapter.parameters()) + (list(self.gkd.parameters()) if self.gkd else [])
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen parts stay in eval mode (no dropout / stochastic depth) whatever Lightning asks
        self.encoder.eval()
        self.teacher.eval()
        return self
