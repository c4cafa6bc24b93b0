"""``ModelCheckpoint`` whose ``last.ckpt`` is the end of every epoch, so ``--ckpt_path last`` resumes
where the run stopped."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class LastAndBestCheckpoint(ModelCheckpoint):
    """The best checkpoint by ``monitor`` plus ``last.ckpt`` written at every checkpointing epoch.

    Lightning 2.6 writes ``last.ckpt`` only at a step where a top-k checkpoint was written
    (``lightning/pytorch/callbacks/model_checkpoint.py``, ``on_validation_end`` and
    ``on_train_epoch_end``: "Only save last checkpoint if a checkpoint was actually saved"): with
    ``save_top_k: 1`` and a monitor, ``last.ckpt`` stays at the best epoch and a resumed run would
    repeat every epoch after it. Same arguments as ``ModelCheckpoint``; ``save_last`` defaults to true."""

    def __init__(self, *args, save_last: bool = True, **kwargs) -> None:
        super().__init__(*args, save_last=save_last, **kwargs)
        self._last_written_step = -1

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def _write_last(self, trainer) -> None:
        if (not self.save_last or trainer.sanity_checking or trainer.fast_dev_run
                or trainer.state.fn != "fit" or self._last_written_step == trainer.global_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._write_last(trainer)
