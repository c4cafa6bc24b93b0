"""``fsseg davis``: one-shot video object segmentation on DAVIS-2017 (seed 003, Table 3).

    fsseg davis --ckpt_path best.ckpt --davis_root R --output_dir P [--set val] [--memory]
    fsseg davis --small --davis_root R --output_dir P          # built-in small untrained model (smoke test)

Per sequence: each object of the first annotation is one support class (the first frame with that
object's mask, 1 shot), encoded once (one backbone pass over the first frame, then
``FSDINO.encode_support_features`` per object, as ``fsseg predict`` encodes its support set); every later
frame is segmented against all objects at once and merged into one index map: background 0, the
object with the largest logit wins where that logit is > 0 (the ``segment_multiclass`` rule). Logits
are upsampled (bilinear) to the frame's own size before the merge. Written as DAVIS-palette PNGs,
``P/<seq>/<frame>.png``; the first frame is the given annotation (void 255 written as 0), as the
semi-supervised protocol expects. Score with ``fsseg davis-eval``. Protocol card: docs/protocols/davis17.md.

``--memory``: the previous frame with each object's predicted mask is a second support shot beside
the first frame (whose features stay cached); an object predicted empty there keeps its first-frame
support only. Frames then go one at a time.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from data_modules.readers.davis import (
    VOID_LABEL,
    DavisSequence,
    read_frame,
    read_index_png,
    read_sequence,
    read_sequence_names,
    write_index_png,
)
from fsseg.davis_eval import add_davis_arguments
from fsseg.models.fsdino import SupportEncoding


def _frame_tensor(frame: np.ndarray, size: int) -> torch.Tensor:
    """``uint8 [H,W,3]`` -> ``float [3,S,S]`` in [0,1] (bilinear, as ``fsseg predict`` resizes)."""
    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div(255.0)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0]


def merge_objects(logits: torch.Tensor, object_ids: list[int]) -> np.ndarray:
    """``logits [N,H,W]`` -> ``uint8 [H,W]`` object ids: 0 unless some logit > 0, then the largest (the
    first on ties, as argmax over [background 0, logits]; a loop, because torch's argmax over a short
    leading dimension of a full-size frame is slow on CPU)."""
    best = torch.zeros(logits.shape[-2:], dtype=logits.dtype)
    index = torch.zeros(logits.shape[-2:], dtype=torch.uint8)
    for k, obj_logits in zip(object_ids, logits.cpu()):
        wins = obj_logits > best
        index[wins] = k
        best = torch.maximum(best, obj_logits)
    return index.numpy()


class VideoObjectSegmenter:
    """One sequence at a time with a ``FewShotModule`` (its ``model``, an ``FSDINO``, does the work)."""

    def __init__(self, module, batch_size: int = 8, memory: bool = False) -> None:
        self.model = module.eval().model
        self.size = int(module.hparams.image_size)
        self.batch_size = max(1, int(batch_size))
        self.memory = memory
        self.support_encodings_computed = 0  # first-frame encodings: one per object per sequence

    @torch.no_grad()
    def segment(self, frames: list[np.ndarray], first_annotation: np.ndarray) -> list[np.ndarray]:
        """``frames`` (RGB, any sizes), ``first_annotation [H0,W0]`` ids -> one id map per frame at
        that frame's size; the first is the annotation itself (void -> 0)."""
        first = np.where(first_annotation == VOID_LABEL, 0, first_annotation).astype(np.uint8)
        if first.shape != frames[0].shape[:2]:
            raise ValueError(f"first annotation {first.shape[::-1]} and first frame {frames[0].shape[1::-1]} "
                             "differ in size")
        object_ids = [int(k) for k in np.unique(first) if k != 0]
        outputs = [first]
        if not object_ids:  # nothing to track: every later frame is background
            return outputs + [np.zeros(f.shape[:2], np.uint8) for f in frames[1:]]
        encodings = self._encode_first_frame(frames[0], first, object_ids)
        step = 1 if self.memory else self.batch_size
        previous: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (semantic [C,h,w], pred [S,S])
        for start in range(1, len(frames), step):
            batch = frames[start:start + step]
            query = self._to_model(torch.stack([_frame_tensor(f, self.size) for f in batch]))
            feats = self.model.extract(query)
            encodings_now = encodings if previous is None else self._with_previous(encodings, previous)
            # the FSDINO.segment_multiclass_encoded decoding, keeping the query features for --memory
            logits = torch.stack([self.model.decode(feats, enc, out_size=query.shape[-2:])["logits"]
                                  for enc in encodings_now], dim=1)
            for i, frame in enumerate(batch):
                up = F.interpolate(logits[i:i + 1].float(), size=frame.shape[:2], mode="bilinear",
                                   align_corners=False)[0]
                outputs.append(merge_objects(up, object_ids))
            if self.memory:
                pred = torch.cat([logits.new_zeros(1, 1, *logits.shape[-2:]), logits], dim=1).argmax(dim=1)
                previous = (feats.semantic[0], pred[0])
        return outputs

    def _to_model(self, t: torch.Tensor) -> torch.Tensor:
        # fp32 inputs whatever dtype the frozen parts are held in (FSDINO casts for them, fsseg.precision)
        return t.to(next(self.model.parameters()).device, torch.float32)

    def _encode_first_frame(self, frame: np.ndarray, first: np.ndarray, object_ids: list[int]) -> list[SupportEncoding]:
        """One ``SupportEncoding`` per object (1 shot: the first frame, that object's mask), from one
        backbone pass over the first frame (``FSDINO.encode_support_features``)."""
        s = self.size
        masks = torch.from_numpy(np.stack([first == k for k in object_ids]).astype(np.float32))
        masks = self._to_model(F.interpolate(masks[:, None], size=(s, s), mode="nearest")[:, 0])
        semantic = self.model.extract(self._to_model(_frame_tensor(frame, s)[None]), with_embedding=False).semantic
        encodings = [self.model.encode_support_features(semantic[None], m[None, None]) for m in masks]
        self.support_encodings_computed += len(encodings)
        return encodings

    def _with_previous(self, encodings: list[SupportEncoding], previous) -> list[SupportEncoding]:
        """``--memory``: shot 1 = the first frame (features kept in its encoding), shot 2 = the
        previous frame with that object's predicted mask; an object predicted empty there keeps
        its first-frame support only."""
        semantic, pred = previous
        two_shot = []
        for n, first in enumerate(encodings, start=1):
            mask = (pred == n).to(first.masks.dtype)
            two_shot.append(first if not mask.any() else self.model.encode_support_features(
                torch.cat([first.semantic, semantic[None, None]], dim=1),
                torch.cat([first.masks, mask[None, None]], dim=1)))
        return two_shot


def run_davis(module, davis_root: str | Path, output_dir: str | Path, subset: str = "val",
              memory: bool = False, batch_size: int = 8, sequences: Optional[list[str]] = None) -> list[Path]:
    """Segment every sequence of ``ImageSets/2017/<subset>.txt`` (or ``sequences``) into ``output_dir``."""
    segmenter = VideoObjectSegmenter(module, batch_size=batch_size, memory=memory)
    names = sequences or read_sequence_names(davis_root, subset)
    out_dirs = []
    for name in names:
        seq: DavisSequence = read_sequence(davis_root, name)
        if seq.annotation_ids[0] != seq.frame_ids[0]:
            raise ValueError(f"{seq.annotation_paths[0]}: the first annotation is not of the first frame "
                             f"{seq.frame_paths[0].name}")
        frames = [read_frame(p) for p in seq.frame_paths]
        maps = segmenter.segment(frames, read_index_png(seq.annotation_paths[0]))
        out = Path(output_dir) / name
        for fid, m in zip(seq.frame_ids, maps):
            write_index_png(m, out / f"{fid}.png")
        out_dirs.append(out)
        print(f"{name}: {len(frames)} frames, {len(np.unique(maps[0])) - 1} object(s) -> {out}")
    return out_dirs


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(
        prog="fsseg davis",
        description="One-shot DAVIS-2017 video object segmentation: each object's first-frame mask is its "
                    "support (encoded once), later frames are segmented and merged into index PNGs in the "
                    "official results layout <output_dir>/<seq>/<frame>.png. Score with fsseg davis-eval.")
    p.add_argument("--ckpt_path", help="FewShotModule checkpoint (as for fsseg predict)")
    p.add_argument("--small", action="store_true",
                   help="use the small built-in model with random weights instead (smoke tests only)")
    add_davis_arguments(p)
    p.add_argument("--output_dir", required=True, help="results folder to write")
    p.add_argument("--memory", action="store_true",
                   help="add the previous predicted frame as a second support shot (the 'memory' variant; "
                        "default: first frame only, the paper's one-shot setting); frames then run one by one")
    p.add_argument("--batch_size", type=int, default=8, help="frames per forward pass (without --memory)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when one is visible, else the CPU) | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="32",
                   help="32 | bf16-mixed | 16-mixed (GPU) | auto: as in `fsseg fit` (fsseg.precision)")
    a = p.parse_args(argv)
    if not a.ckpt_path and not a.small:
        raise SystemExit("fsseg davis: give --ckpt_path (a trained FewShotModule checkpoint), or --small for the "
                         "built-in small model with random weights")
    from fsseg.inference import inference_device, load_module, place_module

    try:
        device = inference_device(a.device)
        module = place_module(load_module(None if a.small else a.ckpt_path, small=a.small), device, a.precision)
    except ValueError as e:
        raise SystemExit(f"fsseg davis: {e}") from None
    print(f"fsseg davis: model on {device} at precision {module.model.precision} (--device, --precision)")
    try:
        with torch.inference_mode():  # scoped: a global switch would leak into the caller (tests run tools in-process)
            dirs = run_davis(module, a.davis_root, a.output_dir, a.set, memory=a.memory,
                             batch_size=a.batch_size, sequences=a.sequences)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fsseg davis: {e}") from None
    print(f"{len(dirs)} sequence(s) written under {Path(a.output_dir).resolve()}\n"
          f"score: fsseg davis-eval --davis_root {a.davis_root} --results_dir {a.output_dir} --set {a.set}"
          + (f" --sequences {' '.join(a.sequences)}" if a.sequences else ""))


if __name__ == "__main__":
    main()
