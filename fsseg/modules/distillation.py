"""Stage 1 (paper sec. 3.3): distil SAM's image embedding into a bottleneck adapter on DINOv2 block 3.

Student = frozen DINOv2 blocks 1..3 + trainable ``BottleneckAdapter`` at the curriculum resolution
(126 -> 252 -> 518, switched by ``callbacks.ResolutionCurriculum`` through ``set_resolution``).
Teacher = frozen SAM image encoder, always at its own 1024x1024 input, so its embedding of an image
never changes: ``callbacks.TeacherEmbeddingCache`` attaches a disk cache through ``teacher_cache``.

Teacher preprocessing: the teacher gets what SAM's predictor gives its encoder -- the long side
resized to 1024 with SAM's rounding, normalised, zero padded at the bottom/right
(``SAMImageEncoder.preprocess_padded`` on the data's ``teacher_image``,
``UnlabelledDataModule(teacher_view='longest_side')``) -- and the student's target is the valid
(unpadded) part of the 64x64 embedding (``ceil(h/16) x ceil(w/16)`` cells) resampled to the student
grid; the student sees the whole image squashed to its square resolution, as in stage 2. A batch
without ``teacher_image`` (synthetic images, already square) gives the teacher the student's image.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F

from fsseg.cache import TensorDiskCache
from fsseg.models import BottleneckAdapter, DINOv2Encoder, SAMImageEncoder
from fsseg.models.build import load_adapter_state, require_previous_stage, resolve_adapter_settings
from fsseg.modules.common import (
    GuardedStepMixin,
    NonFiniteLossGuard,
    PortableCheckpointMixin,
    SampleTrackingMixin,
)
from fsseg.precision import (
    dtype_key,
    hold_frozen_in,
    precision_region,
    resolve_precision,
    run_device,
    teacher_precision,
)


class DistillationModule(GuardedStepMixin, SampleTrackingMixin, PortableCheckpointMixin, L.LightningModule):
    """Adapter distillation with an MSE (or GKD query-based soft distillation) objective.

    Args:
        backbone: DINOv2 architecture name (``dinov2_vitb14``, ..., ``dinov2_tiny`` for tests).
        dinov2_checkpoint: local path or URL of an official DINOv2 checkpoint (random weights if None).
        dinov2_sha256: expected sha256 of that file (checked when given).
        teacher: SAM image-encoder variant (``vit_h``, ``vit_l``, ``vit_b``, ``tiny``).
        sam_checkpoint: official SAM checkpoint, path or URL (its ``image_encoder.*`` keys are used).
        sam_sha256: expected sha256 of that file (checked when given).
        tap_block: DINOv2 block whose output feeds the adapter (3 in the paper, sec. 2.1).
        resolution: student input size at the start (the curriculum callback changes it).
        val_resolution: student size for validation (None: the current training size). Fixing it
            (e.g. 518) makes validation MSE comparable across curriculum stages.
        match_grid: where student and teacher meet. ``student``: the teacher's 64x64 embedding is
            area-resampled to the student grid (37x37 at 518), which is the grid the adapter output
            is used at in stage 2; ``teacher``: the student output is bilinearly upsampled to 64x64.
        objective: ``mse`` (paper) or ``gkd`` (seed 001: query-based soft distillation).
        gkd_attention: who trains GKD's W_q/W_k: ``retrieval`` (their own objective; the attention
            stays selective) or ``shared`` (the distillation loss; collapses to uniform attention).
        adapter_init: adapter weights to start from (a previous stage's checkpoint, for the three
            chained runs ``distill_126/252/518.yaml``); its adapter settings are taken with it.
        gkd_temperature: softmax temperature of the GKD objective.
        adapter_mid_dim: adapter width after the first 1x1 conv (256 in the paper).
        adapter_bottleneck_dim: adapter width of the attention blocks (128 in the paper).
        adapter_kwargs: further ``BottleneckAdapter`` options; ``{pos_encoding: none, conv_act:
            false}`` is the paper's adapter taken literally (``fsseg.models.build.PAPER_LITERAL_ADAPTER``);
            None: fsseg's adapter (sine position encoding, GELUs between the convs).
        tap_norm: apply DINOv2's final norm to the block tap (official ``get_intermediate_layers``
            default; the paper does not say). None: False, or what ``adapter_init`` was trained with.
        lr: AdamW learning rate (paper: 1e-3).
        weight_decay: AdamW weight decay.
        nonfinite: ``raise`` stops with the step and sample ids; ``skip`` drops the step.
    """

    # Portable checkpoints (fsseg.modules.checkpoints): both frozen networks are recorded by name +
    # sha256 and left out; the starting adapter's weights are in the state dict.
    FROZEN_WEIGHT_ARGS = {"dinov2_checkpoint": "encoder.", "sam_checkpoint": "teacher."}
    INIT_ONLY_WEIGHT_ARGS = ("adapter_init",)

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
        gkd_attention: Literal["retrieval", "shared"] = "retrieval",
        adapter_init: Optional[str] = None,
        adapter_mid_dim: int = 256,
        adapter_bottleneck_dim: int = 128,
        adapter_kwargs: Optional[dict[str, Any]] = None,
        tap_norm: Optional[bool] = None,
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
        # the adapter settings, resolved (from adapter_init when it records them), are stored with
        # the checkpoint so stage 2 and later chained runs rebuild the same adapter
        adapter_kwargs = dict(adapter_kwargs or {})
        for key, value in (("mid_dim", adapter_mid_dim), ("bottleneck_dim", adapter_bottleneck_dim)):
            if adapter_kwargs.setdefault(key, value) != value:
                raise ValueError(f"adapter_kwargs {key}={adapter_kwargs[key]!r} conflicts with adapter_{key}={value!r}")
        require_previous_stage("adapter_init", adapter_init)
        adapter_kwargs, tap_norm = resolve_adapter_settings(adapter_init, adapter_kwargs, tap_norm)
        self.hparams["adapter_kwargs"], self.hparams["tap_norm"] = adapter_kwargs, tap_norm
        self.encoder = DINOv2Encoder(arch=backbone, tap_block=tap_block, checkpoint=dinov2_checkpoint,
                                     sha256=dinov2_sha256, tap_norm=tap_norm)
        self.teacher = SAMImageEncoder(variant=teacher, checkpoint=sam_checkpoint, sha256=sam_sha256)
        self.adapter = BottleneckAdapter(in_dim=self.encoder.embed_dim, out_dim=self.teacher.out_chans,
                                         **adapter_kwargs)
        if adapter_init:
            load_adapter_state(self.adapter, adapter_init)
        self.gkd = None
        if objective == "gkd":
            from fsseg.models.gkd import QueryBasedSoftDistillation

            self.gkd = QueryBasedSoftDistillation(dim=self.teacher.out_chans, temperature=gkd_temperature,
                                                  attention_objective=gkd_attention)
        self.resolution = resolution
        self.teacher_cache: Optional[TensorDiskCache] = None  # set by callbacks.TeacherEmbeddingCache
        self.teacher_calls = 0  # number of images the teacher actually encoded (tests, benchmarks)
        self.guard = NonFiniteLossGuard(nonfinite)
        self.precision = "32"  # fsseg.precision setting, from the trainer's precision in setup()
        self.teacher_precision = "32"  # the SAM teacher's (fsseg.precision.teacher_precision)

    def setup(self, stage: str) -> None:
        self.set_precision(getattr(self.trainer, "precision", "32"))

    def set_precision(self, precision: str, device: Optional[Union[str, torch.device]] = None) -> "DistillationModule":
        """Frozen DINOv2 and SAM teacher held in the precision's dtype (``fsseg.precision``),
        resolved for ``device`` (default: where the trainer will run the module); the trainable
        adapter stays fp32 (Lightning's autocast runs it); the loss is fp32. Under ``16-mixed`` the
        teacher runs in bf16, or fp32 (``teacher_precision``: SAM overflows float16)."""
        device = run_device(self) if device is None else device
        self.precision = resolve_precision(precision, device)
        self.teacher_precision = teacher_precision(self.precision, device)
        hold_frozen_in(self.encoder, self.precision)
        hold_frozen_in(self.teacher, self.teacher_precision)
        return self

    # -- public hooks used by callbacks ------------------------------------------------------
    def set_resolution(self, resolution: int) -> None:
        patch = self.encoder.patch_size
        if resolution % patch:
            raise ValueError(f"student resolution {resolution} is not a multiple of the patch size {patch}")
        self.resolution = resolution

    def teacher_namespace(self, input_size: tuple[int, int]) -> str:
        """Everything a cached teacher embedding depends on besides the image itself."""
        ns = f"sam-teacher|{self.teacher.fingerprint}|input={input_size[0]}x{input_size[1]}|preprocess=sam-longest-side-pad"
        # the dtype the teacher ran in (fsseg.precision): bf16 and fp32 embeddings never mix
        return ns + dtype_key(next(self.teacher.parameters()).dtype)

    def _teacher_view(self, batch: dict) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What the teacher encodes: (images, valid sizes or None for whole square images)."""
        if "teacher_image" in batch:
            return batch["teacher_image"], batch["teacher_valid"]
        return batch["image"], None

    def _run_teacher(self, images: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        with precision_region(self.teacher_precision, images.device):  # the teacher's own dtype
            return self.teacher(images) if valid is None else self.teacher.forward_padded(images, valid)

    def teacher_valid_cells(self, batch: dict) -> Optional[list[tuple[int, int]]]:
        """Per image, the (rows, cols) of the teacher embedding that cover it (None: all)."""
        images, valid = self._teacher_view(batch)
        if valid is None:
            return None
        return [self.teacher.valid_embedding_size(h, w) for h, w in valid.tolist()]

    # -- computation --------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_embeddings(self, batch: dict) -> torch.Tensor:
        images, valid = self._teacher_view(batch)
        cache = self.teacher_cache
        if cache is None:
            self.teacher_calls += images.shape[0]
            return self._run_teacher(images, valid).float()
        keys = list(batch["path"])
        found = [cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            self.teacher_calls += len(missing)
            computed = self._run_teacher(images[missing], None if valid is None else valid[missing])
            for j, i in enumerate(missing):
                found[i] = {"embedding": computed[j]}
                cache.put(keys[i], found[i])
        return torch.stack([v["embedding"] for v in found]).to(images.device, torch.float32)

    def student_embeddings(self, images: torch.Tensor, resolution: Optional[int] = None) -> torch.Tensor:
        size = resolution or self.resolution
        x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            early = self.encoder.forward_early(x)
        return self.adapter(early)

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                          valid_cells: Optional[list[tuple[int, int]]] = None) -> torch.Tensor:
        """Loss between student maps and teacher embeddings; with ``valid_cells`` only each
        image's unpadded part of the teacher embedding is its target (mean over images)."""
        if valid_cells is not None:
            losses = [self._pair_loss(student[i:i + 1], teacher[i:i + 1, :, :h, :w])
                      for i, (h, w) in enumerate(valid_cells)]
            return torch.stack(losses).mean()
        return self._pair_loss(student, teacher)

    def _pair_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.hparams.match_grid == "student":
            teacher = F.adaptive_avg_pool2d(teacher, student.shape[-2:])
        else:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
        student, teacher = student.float(), teacher.float()  # fp32 loss under any precision
        with torch.autocast(student.device.type, enabled=False):
            if self.gkd is not None:
                return self.gkd(student, teacher)
            return F.mse_loss(student, teacher)

    def _step(self, batch: dict, resolution: Optional[int] = None) -> torch.Tensor:
        student = self.student_embeddings(batch["image"], resolution)
        return self.distillation_loss(student, self.teacher_embeddings(batch), self.teacher_valid_cells(batch))

    def training_step(self, batch: dict, batch_idx: int):
        loss = self._step(batch)
        if not self.guard.check(loss, self, batch):
            return self.guard.skipped_step(self)
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
