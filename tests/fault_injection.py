"""Test-only callbacks that simulate faults inside a real training process."""

import os
import signal

import lightning as L


class SigkillAtStep(L.Callback):
    """SIGKILL this very process after ``step`` optimizer steps: no cleanup, no checkpoint hook, like
    a node dying or an OOM kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
