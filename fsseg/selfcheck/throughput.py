"""Training throughput as the self-check measures it: episodes/s, the loader's share of the step time,
peak GPU memory."""

from __future__ import annotations

import json
import time
from typing import Optional

import lightning as L


class Throughput(L.Callback):
    """Times the training batches after the first (warm-up): episodes/s, the time the step waited
    for the loader (from one batch's end to the next's start) against the step's own time, and the
    peak GPU memory; rank 0 writes them to ``path`` (JSON) when training ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.episodes, self.data_wait, self.compute, self.batches = 0, 0.0, 0.0, 0
        self._last_end: Optional[float] = None
        self._start = 0.0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            import torch

            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the loader's start-up is not counted as waiting

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(trainer)
        now = time.perf_counter()
        if self._last_end is not None and self.batches:
            self.data_wait += now - self._last_end
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(trainer)
        now = time.perf_counter()
        if trainer.global_step > 1:  # the first step (allocation, autotuning) is warm-up
            self.compute += now - self._start
            self.episodes += int(batch["query"].shape[0]) * trainer.world_size
            self.batches += 1
        self._last_end = now

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        peak = None
        if trainer.strategy.root_device.type == "cuda":
            import torch

            peak = torch.cuda.max_memory_allocated(trainer.strategy.root_device)
        seconds = self.compute + self.data_wait
        with open(self.path, "w") as f:
            json.dump({"episodes": self.episodes, "batches": self.batches, "compute_s": self.compute,
                       "data_wait_s": self.data_wait, "episodes_per_s": self.episodes / seconds if seconds else None,
                       "peak_gpu_bytes": peak}, f)



def _throughput_text(t: dict) -> str:
    if not t or not t.get("episodes_per_s"):
        return ""
    text = f"{t['episodes_per_s']:.1f} episodes/s"
    busy = t["compute_s"] + t["data_wait_s"]
    if busy:
        text += f" (loader wait {100 * t['data_wait_s'] / busy:.0f}% of the step time)"
    if t.get("peak_gpu_bytes"):
        text += f", peak GPU memory {t['peak_gpu_bytes'] / 2**20:.0f} MiB"
    return text
