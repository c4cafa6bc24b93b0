"""What every DataModule's loaders share: this process's DDP rank and how batches travel to the GPU."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def rank_world(trainer) -> Tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def loader_transport(trainer, num_workers: int, pin_memory: Optional[bool] = None,
                     persistent_workers: Optional[bool] = None) -> dict:
    """A DataLoader's ``pin_memory`` and ``persistent_workers``: as given, or by default page-locked
    batches when the trainer runs on a CUDA GPU (asynchronous host-to-GPU copies) and workers kept
    across epochs and validations whenever there are workers (not restarted, re-importing torch and
    re-reading the split lists, every epoch)."""
    on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
    keep = num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0
    return {"pin_memory": on_cuda if pin_memory is None else pin_memory, "persistent_workers": keep}
