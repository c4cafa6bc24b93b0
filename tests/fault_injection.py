"""Test-only callbacks that simulate faults inside a real training process."""

import os
import signal

import lightning as L
import torch


class SigkillAtStep(L.Callback):
    """SIGKILL this very process after ``step`` optimizer steps: no cleanup, no checkpoint hook, like
    a node dying or an OOM kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NaNQueryOnRank(L.Callback):
    """Poison the query images of training batch ``at`` on DDP rank ``rank`` only (its loss turns
    NaN, the other ranks' stay finite); at the end each rank writes ``rank<r>.json`` to
    ``record_dir``: its skipped-step count, its last optimizer step, and whether that batch's step
    left every trainable weight unchanged."""

    def __init__(self, at: int, rank: int, record_dir: str) -> None:
        self.at, self.rank, self.record_dir = at, rank, record_dir
        self.before, self.unchanged = None, None

    def _trainable(self, pl_module):
        return {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            self.before = self._trainable(pl_module)
            if trainer.global_rank == self.rank:
                batch["query"][0, :, :8, :8] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.at:
            after = self._trainable(pl_module)
            self.unchanged = all(torch.equal(self.before[n], after[n]) for n in after)

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        with open(os.path.join(self.record_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"skipped": pl_module.guard.skipped, "global_step": trainer.global_step,
                       "unchanged": self.unchanged}, f)


class StallAtStep(L.Callback):
    """At training batch ``at``, write ``marker`` and wait for ever in a native read that retries
    after every signal (as a rank waiting in a collective whose peers are gone): Lightning's SIGTERM
    handler runs, sets its flag, and the run still never reaches a batch boundary."""

    def __init__(self, at: int, marker: str) -> None:
        self.at, self.marker = at, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            never, _ = os.pipe()
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os.read(never, 1)


class RecordRankState(L.Callback):
    """Each DDP rank writes ``rank<r>.json`` to ``record_dir`` at the end of training: the student
    resolution of every training epoch and how many images its teacher encoded."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = record_dir
        self.resolutions: list = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.resolutions.append(int(pl_module.resolution))

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        with open(os.path.join(self.record_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"resolutions": self.resolutions, "teacher_calls": pl_module.teacher_calls}, f)
