"""Disk caches for frozen computations, attached to modules through their public attributes."""

from __future__ import annotations

from typing import Literal, Optional

import lightning as L
import torch

from fsseg.cache import TensorDiskCache
from fsseg.precision import run_device

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TeacherEmbeddingCache(L.Callback):
    """Cache the frozen SAM teacher's embeddings on disk (stage 1's main cost lever, SPEC sec. 2).

    The teacher always sees un-augmented images at its 1024 input, so an embedding is computed once
    and reused by every epoch and every curriculum stage. The namespace
    (``DistillationModule.teacher_namespace``) holds the teacher fingerprint (architecture +
    weights), the input size and the preprocessing (``teacher_preprocess``: SAM's longest side +
    padding, or the squashed square image), so a changed teacher or view is never served stale.
    ``dtype=float32`` (default) keeps cached and uncached losses identical; ``float16`` halves the disk.
    """

    def __init__(self, cache_dir: str = ".cache/fsseg/teacher", dtype: Literal["float32", "float16"] = "float32",
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
