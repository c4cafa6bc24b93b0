"""Write ``fsseg predict`` results: masks and overlays at each query's original size, plus a summary.

Consumes only the prediction contract (``fsseg.modules.predict``): ``pred [B,S,S]`` class index at
model size, ``query_path``, ``query_original_size [B,2]`` (H, W) and ``class_names``; it never needs
supports, so it serves the episodic ``FewShotModule`` and the support-free specialised module alike.

Per query ``<stem>`` (``<stem>_<index>`` when two queries share a stem), in ``output_dir``:

* ``masks/<stem>.png``: single-channel ``uint8`` PNG at the photo's original size (the model-size
  prediction is resized with nearest neighbour). **One class: values 0 / 255** (background /
  foreground, viewable as is). **N > 1 classes: class index 0..N** (0 = background, c = the c-th
  entry of ``class_names``, the order of ``summary.jsonl``'s ``classes``). ``single_class_value``
  changes the 255.
* ``overlays/<stem>.png``: the photo with the classes coloured (``fsseg.visualize.overlay``).
* one summary line per image, printed (through the progress bar, so it stays intact) and appended
  to ``summary.csv`` (``image,height,width,mask,overlay,background,<class 1>,...``, pixel
  fractions) and ``summary.jsonl``. Both files are started afresh at the beginning of each predict
  run (one header); with several processes each rank writes ``summary.rank<r>.{csv,jsonl}``.
* ``summary.json`` at the end of the run: the support set actually used (files and K per class, the
  module's ``support_set_info``), the queries whose EXIF orientation was applied, and the unreadable
  queries skipped (``skip_bad_queries``), each also printed.

Photos with an EXIF orientation are segmented as every viewer shows them (turned); masks and
overlays are written in that orientation.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageOps

from fsseg.visualize import overlay


class PredictionWriter(BasePredictionWriter):
    """See the module docstring. ``output_dir`` is created when missing."""

    def __init__(self, output_dir: Optional[str] = None, single_class_value: int = 255,
                 write_overlays: bool = True, print_summary: bool = True) -> None:
        """
        Args:
            output_dir: folder for masks/, overlays/ and the summaries (``fsseg predict`` fills it in:
                ``--output_dir``, else ``<checkpoint's run folder>/predictions/<query folder>``).
            single_class_value: mask value of the foreground when there is one class (0/255).
            write_overlays: also write the photo with the classes coloured.
            print_summary: print one line per photo and the run's summary.
        """
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir if output_dir is not None else "predictions")
        self.single_class_value = int(single_class_value)
        self.write_overlays = write_overlays
        self.print_summary = print_summary
        self.written: list[dict] = []
        self._used: set[str] = set()
        self._csv_path: Optional[Path] = None
        self._jsonl_path: Optional[Path] = None
        self._header_written = False

    # -- files ----------------------------------------------------------------------------------
    def _start(self, rank: int, world: int) -> None:
        (self.output_dir / "masks").mkdir(parents=True, exist_ok=True)
        if self.write_overlays:
            (self.output_dir / "overlays").mkdir(parents=True, exist_ok=True)
        suffix = f".rank{rank}" if world > 1 else ""
        self._csv_path = self.output_dir / f"summary{suffix}.csv"
        self._jsonl_path = self.output_dir / f"summary{suffix}.jsonl"
        for p in (self._csv_path, self._jsonl_path):
            p.unlink(missing_ok=True)
        self._header_written = False
        self._used = set()
        self.written = []
        self.skipped: list = []
        self.exif_turned: list = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self._start(trainer.global_rank, trainer.world_size)

    def _stem(self, path: str, index: int) -> str:
        stem = Path(str(path)).stem or f"query{index}"
        if stem in self._used:
            stem = f"{stem}_{index}"
        self._used.add(stem)
        return stem

    # -- one image --------------------------------------------------------------------------------
    def write_one(self, pred: torch.Tensor, path: str, size: Sequence[int], class_names: Sequence[str],
                  index: int = 0, image: Optional[np.ndarray] = None, exif_orientation: int = 1) -> dict:
        """Write mask/overlay/summary of one query; ``pred [S,S]`` class index at model size."""
        if self._csv_path is None:
            self._start(0, 1)
        h, w = int(size[0]), int(size[1])
        n = max(len(class_names), 1)
        names = list(class_names) or ["foreground"]
        m = pred.detach().to("cpu", torch.int64)
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0]
        mask = m.round().clamp(0, 255).numpy().astype(np.uint8)
        stem = self._stem(path, index)
        mask_path = self.output_dir / "masks" / f"{stem}.png"
        saved = mask * np.uint8(self.single_class_value) if n == 1 else mask
        Image.fromarray(saved, mode="L").save(mask_path)
        overlay_path = None
        if self.write_overlays:
            if image is None:
                image = self._read(path, h, w)
            overlay_path = self.output_dir / "overlays" / f"{stem}.png"
            Image.fromarray(overlay(image, mask)).save(overlay_path)
        total = float(h * w)
        fractions = {"background": float((mask == 0).sum()) / total}
        for c, name in enumerate(names, start=1):
            fractions[name] = float((mask == c).sum()) / total
        record = {"image": str(path), "height": h, "width": w, "mask": str(mask_path),
                  "overlay": str(overlay_path) if overlay_path else "", "classes": names,
                  "fractions": fractions, "exif_orientation": int(exif_orientation or 1)}
        if record["exif_orientation"] != 1:
            self.exif_turned.append(str(path))
        self._append(record)
        self.written.append(record)
        return record

    @staticmethod
    def _read(path: str, h: int, w: int) -> np.ndarray:
        try:
            with Image.open(path) as im:  # EXIF orientation applied, as the data modules read the photo
                img = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except (OSError, ValueError):
            return np.full((h, w, 3), 127, np.uint8)
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        return img

    def _append(self, rec: dict) -> None:
        fr = rec["fractions"]
        with open(self._csv_path, "a", newline="") as f:
            wr = csv.writer(f)
            if not self._header_written:
                wr.writerow(["image", "height", "width", "mask", "overlay", *fr.keys()])
                self._header_written = True
            wr.writerow([rec["image"], rec["height"], rec["width"], rec["mask"], rec["overlay"],
                         *(f"{v:.6f}" for v in fr.values())])
        with open(self._jsonl_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    @staticmethod
    def summary_line(rec: dict) -> str:
        parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in rec["fractions"].items())
        return f"{os.path.basename(rec['image'])} ({rec['width']}x{rec['height']}): {parts}"

    # -- Lightning hook -------------------------------------------------------------------------------
    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if not isinstance(prediction, dict) or "pred" not in prediction:
            raise TypeError("PredictionWriter expects predict_step to return a dict with 'pred', "
                            "'query_path', 'query_original_size', 'class_names'")
        pred = prediction["pred"]
        sizes = prediction.get("query_original_size")
        paths = prediction.get("query_path") or [f"query{batch_idx}_{i}" for i in range(pred.shape[0])]
        names = prediction.get("class_names") or []
        indices = list(batch_indices) if batch_indices else list(range(pred.shape[0]))
        orientations = prediction.get("exif_orientation") or [1] * pred.shape[0]
        bar = getattr(trainer, "progress_bar_callback", None)
        for path, reason in prediction.get("skipped_queries") or []:
            self.skipped.append({"image": str(path), "reason": str(reason)})
            self._print(bar, f"skipped unreadable query {path}: {reason}")
        for i in range(pred.shape[0]):
            size = sizes[i].tolist() if sizes is not None else list(pred.shape[-2:])
            rec = self.write_one(pred[i], paths[i], size, names, index=int(indices[i]) if i < len(indices) else i,
                                 exif_orientation=orientations[i] if i < len(orientations) else 1)
            self._print(bar, self.summary_line(rec))

    def _print(self, bar, line: str) -> None:
        if not self.print_summary:
            return
        if bar is not None and hasattr(bar, "print"):
            bar.print(line)
        else:
            print(line)

    def on_predict_start_summary(self, pl_module) -> None:
        info = getattr(pl_module, "support_set_info", None)
        if info and self.print_summary:
            for name, c in info["classes"].items():
                files = ", ".join(os.path.basename(f) for f in c["files"])
                print(f"support set: class {name!r}: K={c['k']} of {c['available']} labelled ({files})")

    def summary(self, pl_module=None) -> dict:
        """What ``summary.json`` holds (see the module docstring)."""
        return {"output_dir": str(self.output_dir), "images": len(self.written),
                "support_set": getattr(pl_module, "support_set_info", None),
                "exif_orientation_applied": list(self.exif_turned),
                "skipped_queries": {"count": len(self.skipped), "files": list(self.skipped)}}

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self.on_predict_start_summary(pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.output_dir.is_dir():
            suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            (self.output_dir / f"summary{suffix}.json").write_text(json.dumps(self.summary(pl_module), indent=2))
        if self.print_summary and trainer.is_global_zero:
            extra = ""
            if self.exif_turned:
                extra += f"; EXIF orientation applied to {len(self.exif_turned)} photo(s)"
            if self.skipped:
                extra += f"; {len(self.skipped)} unreadable query(ies) skipped"
            print(f"predictions: {len(self.written)} masks in {self.output_dir / 'masks'}, summary in "
                  f"{self._csv_path} and {self.output_dir / 'summary.json'}{extra}")
