"""Disk caches for frozen computations, attached to modules through their public attributes."""

from __future__ import annotations

import sys
from typing import Literal, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from fsseg.cache import TensorDiskCache
from fsseg.precision import run_device

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TeacherEmbeddingCache(L.Callback):
    """Cache the frozen SAM teacher's embeddings on disk (stage 1's main cost lever: FS-DINO sec. 3.3.2 distils on 1% of SA-1B).

    The teacher always sees un-augmented images at its 1024 input, so an embedding is computed once
    and reused by every epoch and every curriculum stage. The namespace
    (``DistillationModule.teacher_namespace``) holds the teacher fingerprint (architecture +
    weights), the input size and the preprocessing (SAM's longest side + padding), so a changed teacher or
    view is never served stale.
    ``dtype``: storage of the embeddings. ``float16`` (default) halves the disk and the bytes read
    per step (SAM ViT-H's 64x64x256 embedding: 2.1 MB instead of 4.2 MB per image) and changes the
    distillation loss by far less than one step does (``python -m bench.teacher_cache``; the
    embeddings' magnitudes are well inside float16's range); ``float32`` keeps cached and uncached
    losses bit-identical; ``bfloat16`` has float16's size with 8x its rounding error. When a run
    starts, the projected size (training images x bytes per entry) is logged.
    """

    def __init__(self, cache_dir: str = ".cache/fsseg/teacher",
                 dtype: Literal["float32", "float16", "bfloat16"] = "float16",
                 input_size: Optional[int] = None) -> None:
        self.cache_dir = cache_dir
        self.dtype = dtype
        self.input_size = input_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the namespace names the teacher's dtype, so the trainer's precision is applied first (the
        # module's own setup runs after the callbacks')
        if trainer is not None:
            pl_module.set_precision(trainer.precision)
        size = self.input_size or pl_module.teacher.img_size
        ns = pl_module.teacher_namespace((size, size)) + f"|{self.dtype}"
        pl_module.teacher_cache = TensorDiskCache(self.cache_dir, ns, dtype=_DTYPES[self.dtype])
        if stage == "fit":
            # printed, not logged: the disk cost must show in fsseg's quiet default (Lightning's logger is
            # at WARNING there)
            _print_rank_zero(projected_size_line(pl_module.teacher_cache, pl_module.teacher, self.dtype,
                                                 _train_images(trainer)))


# The paper's stage 1: 1% of SA-1B, ~110k images (FS-DINO sec. 3.3.2 and 4.1)
SA1B_ONE_PERCENT = 110_000


def _train_images(trainer) -> Optional[int]:
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    indices = getattr(dm, "train_indices", None)
    return len(indices) if indices is not None else None


@rank_zero_only
def _print_rank_zero(line: str) -> None:
    print(f"fsseg: {line}", file=sys.stderr, flush=True)


def projected_size_line(cache: TensorDiskCache, teacher, dtype: str, images: Optional[int]) -> str:
    """``teacher cache: N images x B per entry (dtype) = S projected in DIR (110k images: S')``."""
    e = teacher.embedding_size
    per = cache.entry_bytes({"embedding": torch.zeros(teacher.out_chans, e, e)})
    head = f"teacher cache ({cache.dir}): {per / 1e6:.2f} MB per entry ({dtype}, {teacher.out_chans}x{e}x{e})"
    if images is not None:
        head += f", {images} training images -> {images * per / 1e9:.2f} GB projected on disk"
    return head + f"; {SA1B_ONE_PERCENT} images (1% of SA-1B) would take {SA1B_ONE_PERCENT * per / 1e9:.0f} GB"


class FrozenFeatureCache(L.Callback):
    """Cache frozen DINOv2 + adapter features of un-augmented images (stage 2). Which stages use it
    is the module's ``feature_cache`` argument (``eval``, the default when a store is attached, or ``all``)."""

    def __init__(self, cache_dir: str = ".cache/fsseg/features",
                 dtype: Literal["float32", "float16"] = "float32") -> None:
        self.cache_dir = cache_dir
        self.dtype = dtype

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer is not None:  # the namespace names the frozen parts' dtype
            pl_module.model.set_precision(trainer.precision, run_device(pl_module))
        ns = pl_module.feature_namespace() + f"|{self.dtype}"
        pl_module.feature_cache_store = TensorDiskCache(self.cache_dir, ns, dtype=_DTYPES[self.dtype])
