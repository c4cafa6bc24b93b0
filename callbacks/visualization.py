"""Qualitative panels during validation/test: saved as PNG, and logged to W&B / TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from fsseg.visualize import episode_panel


class PredictionPanels(L.Callback):
    """Every ``every_n_batches`` validation/test batches, draw the first ``max_per_batch`` episodes
    (supports with masks | query with ground truth | query with prediction).

    PNGs go to ``<run dir>/panels/<stage>/``; with a W&B logger they are logged as images, with
    TensorBoard as figures. Uses only the batch and the step's returned ``pred``.
    """

    def __init__(self, every_n_batches: int = 50, max_per_batch: int = 2, output_dir: Optional[str] = None) -> None:
        self.every_n_batches = max(1, every_n_batches)
        self.max_per_batch = max_per_batch
        self.output_dir = output_dir
        self.saved: list[str] = []

    def _dir(self, trainer: L.Trainer, stage: str) -> Path:
        root = Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or trainer.default_root_dir)
        d = root / "panels" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _draw(self, trainer, outputs, batch, batch_idx, stage: str) -> None:
        if batch_idx % self.every_n_batches or not isinstance(outputs, dict) or "pred" not in outputs:
            return
        if batch["support"].dim() != 5:
            return  # N-way panels: not drawn (class-index masks per support are 1-way here)
        if not trainer.is_global_zero:
            return  # one set of panels per run (DDP ranks draw the same first batches of their shares)
        images = []
        for i in range(min(self.max_per_batch, batch["query"].shape[0])):
            title = f"{stage} step {trainer.global_step} class {int(batch['class_id'][i])}"
            panel = episode_panel(batch["support"][i], batch["support_masks"][i], batch["query"][i],
                                  batch["query_mask"][i], outputs["pred"][i], title=title)
            path = self._dir(trainer, stage) / f"epoch{trainer.current_epoch:03d}_b{batch_idx:04d}_{i}.png"
            Image.fromarray(panel).save(path)
            self.saved.append(str(path))
            images.append(panel)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"{stage}/panels", images=images, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                for j, img in enumerate(images):
                    logger.experiment.add_image(f"{stage}/panel_{j}", img, trainer.global_step, dataformats="HWC")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._draw(trainer, outputs, batch, batch_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._draw(trainer, outputs, batch, batch_idx, "test")
