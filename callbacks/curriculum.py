"""Coarse-to-fine resolution curriculum for adapter distillation (paper sec. 3.3.2)."""

from __future__ import annotations

from typing import Optional, Union

import lightning as L


class ResolutionCurriculum(L.Callback):
    """Switch the student's input size by epoch inside one run: 126 -> 252 -> 518 by default,
    ``epochs_per_stage`` epochs each (15 in the paper).

    The stage is a pure function of ``trainer.current_epoch``, which Lightning restores on resume,
    so a run resumed from ``last.ckpt`` continues in the right stage; the schedule itself is saved in
    the checkpoint and a resume with a different schedule is refused rather than silently mixed.
    Uses only the module's public ``set_resolution`` hook.
    """

    def __init__(self, resolutions: list[int] = [126, 252, 518],  # noqa: B006 (jsonargparse default)
                 epochs_per_stage: Union[int, list[int]] = 15) -> None:
        if not resolutions:
            raise ValueError("ResolutionCurriculum needs at least one resolution")
        self.resolutions = list(resolutions)
        if isinstance(epochs_per_stage, int):
            epochs_per_stage = [epochs_per_stage] * len(self.resolutions)
        if len(epochs_per_stage) != len(self.resolutions):
            raise ValueError(f"epochs_per_stage {epochs_per_stage} does not match resolutions {self.resolutions}")
        self.epochs_per_stage = list(epochs_per_stage)
        self._restored: Optional[dict] = None

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs_per_stage)

    def resolution_at(self, epoch: int) -> int:
        end = 0
        for res, n in zip(self.resolutions, self.epochs_per_stage):
            end += n
            if epoch < end:
                return res
        return self.resolutions[-1]

    def stage_at(self, epoch: int) -> int:
        return self.resolutions.index(self.resolution_at(epoch))

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.set_resolution(self.resolution_at(trainer.current_epoch))

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._restored is not None:
            saved = (self._restored.get("resolutions"), self._restored.get("epochs_per_stage"))
            if saved != (self.resolutions, self.epochs_per_stage):
                raise ValueError(f"resuming a curriculum {saved} with a different one "
                                 f"{(self.resolutions, self.epochs_per_stage)}")
        self._apply(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"resolutions": self.resolutions, "epochs_per_stage": self.epochs_per_stage}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict)
