"""``fsseg davis-eval``: DAVIS-2017 semi-supervised scores (J, F, J&F) of a results folder.

    fsseg davis-eval --davis_root R --results_dir P [--set val] [--output_dir O]

Computes what the official evaluator (github davisvideochallenge/davis2017-evaluation, commit ac7c43f,
``evaluation_method.py --task semi-supervised``) computes, written here from its definitions; the
file:line references below are into that repository. Protocol card: docs/protocols/davis17.md.

* Frames: the annotated frames of each sequence minus the first and the last (``evaluation.py:85``).
* Objects: ids 1..max of the first annotation (void 255 removed first; ``davis.py:86-96``). The
  results must not hold a larger id than that (``evaluation.py:29-31``, an error); missing ids are
  empty masks (``evaluation.py:32-34``).
* Void (255) pixels: the semi-supervised task passes no void mask (``evaluation.py:90``), so void
  pixels of the annotation are background and a result's pixels on them count as false positives.
* J: per object and frame ``|R & G| / |R | G|``, 1 when the union is empty (``metrics.py:6-37``).
* F: boundary F-measure; boundaries as ``_seg2bmap`` (``metrics.py:122-178``), each dilated by a
  disk of radius ``ceil(0.008 * ||(H, W)||)`` (``metrics.py:77-89``), precision / recall with the
  empty-boundary cases of ``metrics.py:99-117``.
* Per object: mean, recall (fraction of frames > 0.5) and decay (mean of the first minus the last of
  four overlapping temporal bins) (``utils.py:135-161``).
* Global: mean of the per-object values; J&F-Mean = (J-Mean + F-Mean) / 2 (``evaluation_method.py:43``).
* CSVs ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv``, same columns and ``%.3f``
  as ``evaluation_method.py:42-59``. Unlike the reference (``evaluation_method.py:30-33``), a CSV
  already in the folder is never read back: the scores are always recomputed and the CSVs rewritten.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from data_modules.readers.davis import VOID_LABEL, read_index_png, read_sequence, read_sequence_names

BOUND_TH = 0.008
GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


# -- per-frame measures -----------------------------------------------------------------------------
def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity of binary masks ``[..., H, W]``; 1 where both are empty (metrics.py:29-36)."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    return np.where(union == 0, 1.0, j)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundaries of a binary mask, offset half a pixel towards the origin (metrics.py:154-165):
    a pixel is on the boundary if it differs from its east, south or south-east neighbour; on the last
    row only east counts, on the last column only south, the bottom-right pixel never."""
    seg = seg.astype(bool)
    east, south, south_east = (np.zeros_like(seg) for _ in range(3))
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * image diagonal)`` (metrics.py:77-78)."""
    return int(bound_th) if bound_th >= 1 else int(np.ceil(bound_th * np.linalg.norm(shape)))


def disk(radius: int) -> np.ndarray:
    """``uint8 [2r+1, 2r+1]``, 1 where ``x^2 + y^2 <= r^2``: skimage.morphology.disk(r) (its default
    ``strict_radius=True``), which the reference uses as the dilation kernel (metrics.py:84-89)."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    return (x ** 2 + y ** 2 <= radius ** 2).astype(np.uint8)


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure of one frame (metrics.py:57-119)."""
    kernel = disk(boundary_tolerance(gt.shape, bound_th))
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    # cv2.dilate with a symmetric kernel = max over the disk; pixels outside the image never count
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        precision = recall = 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.sum(pred_b & gt_dil) / float(n_pred)
        recall = np.sum(gt_b & pred_dil) / float(n_gt)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame values (utils.py:135-161): recall = fraction
    > 0.5; decay = mean of bin 1 - mean of bin 4, the 4 bins cut at
    ``round(linspace(1, n, 5)) - 1`` and each including its right edge (so neighbours share a frame)."""
    values = np.asarray(per_frame, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mean = float(np.nanmean(values)) if values.size else math.nan
        recall = float(np.nanmean(values > 0.5)) if values.size else math.nan
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [values[edges[i]:edges[i + 1] + 1] for i in range(4)]
    first, last = (float(np.nanmean(b)) if b.size else math.nan for b in (bins[0], bins[3]))
    return mean, recall, first - last


# -- one sequence -----------------------------------------------------------------------------------
@dataclass
class ObjectScores:
    name: str                 # "<sequence>_<object id>", as in the reference CSV
    j: np.ndarray             # per evaluated frame
    f: np.ndarray

    def stats(self) -> dict[str, float]:
        jm, jr, jd = statistics(self.j)
        fm, fr, fd = statistics(self.f)
        return {"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd}


def evaluate_sequence(name: str, gt_maps: np.ndarray, result_maps: np.ndarray,
                      result_paths: Optional[list] = None) -> list[ObjectScores]:
    """``gt_maps [T,H,W]`` (all annotated frames, first = the given one) and ``result_maps [T-2,H,W]``
    (the frames in between) -> one ``ObjectScores`` per ground-truth object."""
    gt = np.where(gt_maps == VOID_LABEL, 0, gt_maps).astype(np.int64)
    n_objects = int(gt[0].max())
    gt = gt[1:-1]
    if result_maps.shape != gt.shape:
        raise ValueError(f"{name}: results {result_maps.shape} do not match the annotations {gt.shape}")
    n_result = int(result_maps.max(initial=0))
    if n_result > n_objects:
        frame = int(np.argmax(result_maps.reshape(len(result_maps), -1).max(axis=1)))
        where = result_paths[frame] if result_paths else f"{name} frame {frame + 1}"
        raise ValueError(f"{where}: object id {n_result} in the results, but the first annotation of "
                         f"{name} has only {n_objects} object(s)")
    scores = []
    for k in range(1, n_objects + 1):
        g, r = gt == k, result_maps == k
        f = np.array([f_measure(g[t], r[t]) for t in range(len(g))])
        scores.append(ObjectScores(f"{name}_{k}", jaccard(g, r), f))
    return scores


def read_results(results_dir: Path, name: str, frame_ids: list[str], shape: tuple[int, int]):
    paths = [results_dir / name / f"{fid}.png" for fid in frame_ids]
    maps = np.zeros((len(paths), *shape), dtype=np.uint8)
    for i, p in enumerate(paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing result frame (one indexed PNG per annotated frame, "
                                    f"named like the annotation)")
        m = read_index_png(p)
        if m.shape != tuple(shape):
            raise ValueError(f"{p}: {m.shape[1]}x{m.shape[0]} result, the annotation is {shape[1]}x{shape[0]}")
        maps[i] = m
    return maps, paths


# -- a whole set ------------------------------------------------------------------------------------
@dataclass
class DavisScores:
    objects: list[ObjectScores] = field(default_factory=list)

    def per_object(self) -> list[dict[str, float]]:
        return [o.stats() for o in self.objects]

    def global_row(self) -> dict[str, float]:
        rows = self.per_object()
        with np.errstate(invalid="ignore"):
            g = {c: float(np.mean([r[c] for r in rows])) if rows else math.nan for c in GLOBAL_COLUMNS[1:]}
        return {"J&F-Mean": (g["J-Mean"] + g["F-Mean"]) / 2.0, **g}


def evaluate(davis_root: str | Path, results_dir: str | Path, subset: str = "val",
             sequences: Optional[list[str]] = None) -> DavisScores:
    """Scores of ``results_dir`` on the sequences of ``subset`` (or only ``sequences``, as ``fsseg
    davis --sequences`` segmented them)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"{results_dir}: results folder not found")
    scores = DavisScores()
    for name in sequences or read_sequence_names(davis_root, subset):
        seq = read_sequence(davis_root, name)
        if len(seq.annotation_paths) < 3:
            raise ValueError(f"{seq.annotation_paths[0].parent}: {len(seq.annotation_paths)} annotated "
                             "frame(s); the semi-supervised scores skip the first and the last, so at least 3 "
                             "are needed")
        gt = [read_index_png(p) for p in seq.annotation_paths]
        if any(g.shape != gt[0].shape for g in gt):
            raise ValueError(f"{seq.annotation_paths[0].parent}: annotations of different sizes")
        res, paths = read_results(results_dir, name, seq.annotation_ids[1:-1], gt[0].shape)
        scores.objects.extend(evaluate_sequence(name, np.stack(gt), res, paths))
    return scores


def _fmt(v: float) -> str:
    return "" if math.isnan(v) else "%.3f" % v  # pandas to_csv(float_format="%.3f"), NaN -> empty


def write_csvs(scores: DavisScores, output_dir: str | Path, subset: str) -> tuple[Path, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    g_path, s_path = out / f"global_results-{subset}.csv", out / f"per-sequence_results-{subset}.csv"
    g = scores.global_row()
    with open(g_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(GLOBAL_COLUMNS)
        w.writerow([_fmt(g[c]) for c in GLOBAL_COLUMNS])
    with open(s_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SEQUENCE_COLUMNS)
        for o, st in zip(scores.objects, scores.per_object()):
            w.writerow([o.name, _fmt(st["J-Mean"]), _fmt(st["F-Mean"])])
    return g_path, s_path


def add_davis_arguments(p: argparse.ArgumentParser) -> None:
    """``--davis_root``, ``--set`` and ``--sequences``, shared by ``fsseg davis`` and ``fsseg davis-eval``."""
    p.add_argument("--davis_root", required=True, help="folder with JPEGImages/, Annotations/, ImageSets/")
    p.add_argument("--set", default="val", help="sequence list: ImageSets/2017/<set>.txt, or a .txt file of "
                                                "sequence names (default val)")
    p.add_argument("--sequences", nargs="+", help="only these sequences (default: the whole set)")


def set_label(subset: str) -> str:
    """The set's name in the CSV file names: ``val``, or a list file's stem."""
    return Path(subset).stem if Path(subset).is_file() else str(subset)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(
        prog="fsseg davis-eval",
        description="DAVIS-2017 semi-supervised J / F / J&F of a results folder, as the official evaluator "
                    "computes them (first and last frames excluded; void pixels count as background). "
                    "CSVs already in the folder are never reused: scores are always recomputed.")
    add_davis_arguments(p)
    p.add_argument("--results_dir", required=True, help="results folder: <seq>/<frame>.png index maps")
    p.add_argument("--output_dir", help="where the two CSVs go (default: the results folder, as the reference)")
    a = p.parse_args(argv)
    try:
        scores = evaluate(a.davis_root, a.results_dir, a.set, a.sequences)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fsseg davis-eval: {e}") from None
    label = set_label(a.set)
    g_path, s_path = write_csvs(scores, a.output_dir or a.results_dir, label)
    g = scores.global_row()
    which = f"sequences {' '.join(a.sequences)}" if a.sequences else label
    print(f"DAVIS-2017 {which}, semi-supervised, {len(scores.objects)} object(s)")
    print("  ".join(f"{c}={_fmt(g[c])}" for c in GLOBAL_COLUMNS))
    for o, st in zip(scores.objects, scores.per_object()):
        print(f"  {o.name:<32} J-Mean={_fmt(st['J-Mean'])}  F-Mean={_fmt(st['F-Mean'])}")
    print(f"global results: {g_path.resolve()}\nper-sequence results: {s_path.resolve()}")


if __name__ == "__main__":
    main()
