"""Write ``fsseg predict`` results: masks and overlays at each query's original size, plus a summary.

Consumes only the prediction contract (``fsseg.modules.predict``): ``pred [B,S,S]`` class index at
model size, ``query_path``, ``query_original_size [B,2]`` (H, W) and ``class_names``; it never needs
supports, so it serves the episodic ``FewShotModule`` and the support-free specialised module alike.

Per query ``<stem>`` (``<stem>_<index>`` when two queries share a stem), in ``output_dir``:

* ``masks/<stem>.png``: single-channel ``uint8`` PNG at the photo's original size (the model-size
  prediction is resized with nearest neighbour, row by row: ``torch``'s ``nearest`` indices, never a
  float copy of the full-size mask, so an 8000x6000 photo costs its uint8 mask). **One class: values
  0 / 255** (background / foreground, viewable as is). **N > 1 classes: class index 0..N** (0 =
  background, c = ``classes[c]`` of ``summary.json``, the order the classes were given in).
  ``single_class_value`` changes the 255. ``per_class_masks``: also ``masks/<stem>/<class>.png``,
  one 0/255 mask per class.
* ``overlays/<stem>.png``: the photo with the classes coloured (``fsseg.visualize.overlay``), with a
  legend when there are several classes, at most ``overlay_max_side`` pixels on its long side.
* one summary line per image, printed (through the progress bar, so it stays intact) and appended
  to ``summary.csv`` (``image,height,width,mask,overlay,background,<class 1>,...``, pixel
  fractions) and ``summary.jsonl``. Both files are started afresh at the beginning of each predict
  run (one header); with several processes each rank writes ``summary.rank<r>.{csv,jsonl}``.
* ``summary.json`` at the end of the run, and also when the run stops on an error (``status``
  ``"stopped"``, the error, and what was written until then): absolute paths, the checkpoint, image
  size and precision, the index -> class name map, the support set actually used (files and K per
  class, the module's ``support_set_info``), the queries whose EXIF orientation was applied, the
  unreadable queries skipped (``skip_bad_queries``) and every other file left out with its reason
  (non-image files, support images without a mask: the data module's ``skipped_files``).

The output folder never mixes runs: one that already holds predictions (``masks/``, ``overlays/`` or
a summary) is refused unless ``overwrite``, which deletes those first.

Photos with an EXIF orientation are segmented as every viewer shows them (turned); masks and
overlays are written in that orientation.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageOps

from fsseg.visualize import overlay, with_legend


def upsample_nearest(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """``small [S,S]`` -> ``[h,w]`` as ``F.interpolate(mode="nearest")`` on the CPU picks its sources
    (aten UpSample.h ``nearest_idx``: ``min(floor(i * float32(S / n)), S - 1)``), by indexing: the result
    is the only full-size array."""
    def index(n: int, s: int) -> np.ndarray:
        if n == s:
            return np.arange(n)
        scale = np.float32(s) / np.float32(n)
        return np.minimum(np.floor(np.arange(n, dtype=np.float32) * scale).astype(np.int64), s - 1)

    rows, cols = index(h, small.shape[0]), index(w, small.shape[1])
    return small[rows][:, cols]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or "class"


class PredictionWriter(BasePredictionWriter):
    """See the module docstring. ``output_dir`` is created when missing."""

    def __init__(self, output_dir: Optional[str] = None, single_class_value: int = 255,
                 write_overlays: bool = True, print_summary: bool = True, overwrite: bool = False,
                 per_class_masks: bool = False, overlay_max_side: int = 2048) -> None:
        """
        Args:
            output_dir: folder for masks/, overlays/ and the summaries (``fsseg predict`` fills it in:
                ``--output_dir``, else ``<checkpoint's run folder>/predictions/<query folder>``).
            single_class_value: mask value of the foreground when there is one class (0/255).
            write_overlays: also write the photo with the classes coloured.
            print_summary: print one line per photo and the run's summary.
            overwrite: replace the predictions of an earlier run in ``output_dir`` (else refused).
            per_class_masks: also write one 0/255 mask per class (``masks/<stem>/<class>.png``).
            overlay_max_side: overlays larger than this (long side) are written scaled down.
        """
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir if output_dir is not None else "predictions")
        self.single_class_value = int(single_class_value)
        self.write_overlays = write_overlays
        self.print_summary = print_summary
        self.overwrite = overwrite
        self.per_class_masks = per_class_masks
        self.overlay_max_side = int(overlay_max_side)
        self.written: list[dict] = []
        self.skipped: list = []
        self.exif_turned: list = []
        self.run_info: dict = {}
        self._used: set[str] = set()
        self._csv_path: Optional[Path] = None
        self._jsonl_path: Optional[Path] = None
        self._header_written = False

    # -- files ----------------------------------------------------------------------------------
    def _earlier_outputs(self) -> list[Path]:
        d = self.output_dir
        if not d.is_dir():
            return []
        return [p for p in (d / "masks", d / "overlays") if p.is_dir() and any(p.iterdir())] + \
            sorted(d.glob("summary*.json")) + sorted(d.glob("summary*.jsonl")) + sorted(d.glob("summary*.csv"))

    def _clear(self, rank: int) -> None:
        earlier = self._earlier_outputs()
        if not earlier or rank != 0:
            return
        if not self.overwrite:
            n = len(list((self.output_dir / "masks").glob("*.png"))) if (self.output_dir / "masks").is_dir() else 0
            raise ValueError(f"{self.output_dir.resolve()} already holds the predictions of an earlier run ({n} "
                             "masks): give a new --output_dir, or --overwrite true to replace them")
        import shutil

        for p in earlier:
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _start(self, rank: int, world: int) -> None:
        self._clear(rank)
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
        hp = getattr(pl_module, "hparams", {})
        ckpt = getattr(trainer, "ckpt_path", None)
        dm = getattr(trainer, "datamodule", None)
        self.run_info = {"checkpoint": str(Path(ckpt).resolve()) if ckpt and Path(str(ckpt)).is_file() else ckpt,
                         "model": type(pl_module).__name__, "image_size": hp.get("image_size"),
                         "precision": str(getattr(trainer, "precision", None)),
                         "skipped_files": list(getattr(dm, "skipped_files", None) or [])}

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
        small = pred.detach().to("cpu", torch.int64).clamp(0, 255).numpy().astype(np.uint8)
        mask = upsample_nearest(small, h, w)
        stem = self._stem(path, index)
        mask_path = (self.output_dir / "masks" / f"{stem}.png").resolve()
        saved = mask * np.uint8(self.single_class_value) if n == 1 else mask
        Image.fromarray(saved, mode="L").save(mask_path)
        del saved
        class_masks = {}
        if self.per_class_masks:
            (self.output_dir / "masks" / stem).mkdir(exist_ok=True)
            for c, name in enumerate(names, start=1):
                p = (self.output_dir / "masks" / stem / f"{_safe(name)}.png").resolve()
                Image.fromarray((mask == c).astype(np.uint8) * np.uint8(255), mode="L").save(p)
                class_masks[name] = str(p)
        overlay_path = None
        if self.write_overlays:
            overlay_path = (self.output_dir / "overlays" / f"{stem}.png").resolve()
            self._write_overlay(overlay_path, path, small, h, w, names, image)
        total = float(h * w)
        counts = np.bincount(mask.ravel(), minlength=n + 1)
        fractions = {"background": float(counts[0]) / total}
        for c, name in enumerate(names, start=1):
            fractions[name] = float(counts[c]) / total
        record = {"image": str(Path(str(path)).resolve()) if Path(str(path)).exists() else str(path),
                  "height": h, "width": w, "mask": str(mask_path),
                  "overlay": str(overlay_path) if overlay_path else "", "classes": names,
                  "fractions": fractions, "exif_orientation": int(exif_orientation or 1)}
        if class_masks:
            record["class_masks"] = class_masks
        if record["exif_orientation"] != 1:
            self.exif_turned.append(str(path))
        self._append(record)
        self.written.append(record)
        return record

    def _write_overlay(self, out: Path, path: str, small: np.ndarray, h: int, w: int, names: list,
                       image: Optional[np.ndarray]) -> None:
        """The overlay at most ``overlay_max_side`` on its long side: the photo is read reduced and the
        mask upsampled to that size only (a huge photo never gets a full-size float copy)."""
        scale = min(1.0, self.overlay_max_side / max(h, w))
        oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
        if image is None:
            image = self._read(path, oh, ow)
        elif image.shape[:2] != (oh, ow):
            image = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
        view = overlay(image, upsample_nearest(small, oh, ow))
        if len(names) > 1:
            view = with_legend(view, names)
        Image.fromarray(view).save(out)

    @staticmethod
    def _read(path: str, h: int, w: int) -> np.ndarray:
        try:
            with Image.open(path) as im:  # EXIF orientation applied, as the data modules read the photo
                im.draft("RGB", (w, h))  # JPEG: decode at a reduced scale when that is enough
                img = ImageOps.exif_transpose(im).convert("RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                return np.asarray(img)
        except (OSError, ValueError):
            return np.full((h, w, 3), 127, np.uint8)

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

    def summary(self, pl_module=None, status: str = "complete", error: Optional[str] = None) -> dict:
        """What ``summary.json`` holds (see the module docstring)."""
        names = list(self.written[-1]["classes"]) if self.written else list(
            getattr(pl_module, "support_class_names", None) or
            getattr(getattr(pl_module, "student", None), "class_names", None) or [])
        out = {"status": status, "output_dir": str(self.output_dir.resolve()), **self.run_info,
               "classes": {"0": "background", **{str(c): n for c, n in enumerate(names, start=1)}},
               "mask_values": (f"0 = background, {self.single_class_value} = {names[0]}" if len(names) == 1 else
                               "class index (see classes)"),
               "images": len(self.written),
               "written": [{k: r[k] for k in ("image", "mask", "overlay") if r.get(k)} for r in self.written],
               "support_set": getattr(pl_module, "support_set_info", None),
               "exif_orientation_applied": list(self.exif_turned),
               "skipped_queries": {"count": len(self.skipped), "files": list(self.skipped)}}
        if error is not None:
            out["error"] = error
        return out

    def _write_summary(self, trainer, pl_module, **kw) -> Path:
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        path = self.output_dir / f"summary{suffix}.json"
        path.write_text(json.dumps(self.summary(pl_module, **kw), indent=2))
        return path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # the run stopped: summary.json still says what was written, and why it stopped
        if self.output_dir.is_dir() and self._csv_path is not None:
            msg = " ".join(str(exception).split()) or type(exception).__name__
            path = self._write_summary(trainer, pl_module, status="stopped", error=msg)
            if trainer.is_global_zero:
                print(f"predictions: stopped after {len(self.written)} masks; {path.resolve()} lists them",
                      file=sys.stderr)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self.on_predict_start_summary(pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.output_dir.is_dir():
            self._write_summary(trainer, pl_module)
        if self.print_summary and trainer.is_global_zero:
            extra = ""
            if self.exif_turned:
                extra += f"; EXIF orientation applied to {len(self.exif_turned)} photo(s)"
            if self.skipped:
                extra += f"; {len(self.skipped)} unreadable query(ies) skipped"
            if self.run_info.get("skipped_files"):
                extra += f"; {len(self.run_info['skipped_files'])} other file(s) left out (listed there)"
            print(f"predictions: {len(self.written)} masks in {(self.output_dir / 'masks').resolve()}, summary in "
                  f"{self._csv_path.resolve()} and {(self.output_dir / 'summary.json').resolve()}{extra}")
