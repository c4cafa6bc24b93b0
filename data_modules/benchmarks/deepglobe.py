"""Deepglobe land cover as PATNet's CD-FSS reads it (github slei109/PATNet ``data/deepglobe.py``).

Layout (PATNet's preprocessed release, or ``fsseg prepare deepglobe``)::

    root/<1..6>/test/origin/<name>.jpg        408x408 satellite tiles
    root/<1..6>/test/groundtruth/<name>.png   binary mask of that folder's class (0/255, any channels)

Class folder k is PATNet's ``labelset[k-1]`` (``data/preprocess.py:65``), compared against masks read
with ``cv2.imread`` (BGR), so in RGB terms: 1 agriculture (255,255,0), 2 urban (0,255,255),
3 rangeland (255,0,255), 4 forest (0,255,0), 5 water (0,0,255), 6 barren (255,255,255). A tile is in
every class folder whose colour it contains. Masks are thresholded at 128 (``data/deepglobe.py:73-77``).
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import Counter
from typing import List, Tuple

import numpy as np
from PIL import Image

from ..readers.patnet import PatnetFileDataset, patnet_jpg
from .benchmark import BENCHMARKS, CrossDomainTarget
from .converting import progress, save_whole

DEEPGLOBE_CLASSES = ("agriculture", "urban", "rangeland", "forest", "water", "barren")


class Deepglobe(PatnetFileDataset):
    """PATNet's Deepglobe (6 classes; only a ``test`` split exists: CD-FSS never trains on it)."""

    name = "deepglobe"

    def __init__(self, root: str, split: str = "test") -> None:
        super().__init__()
        self.root = root
        self.class_ids = list(range(len(DEEPGLOBE_CLASSES)))
        self.class_names = dict(enumerate(DEEPGLOBE_CLASSES))
        self.samples_by_class = {}
        for c in self.class_ids:
            folder = os.path.join(root, str(c + 1), "test")
            origin, truth = os.path.join(folder, "origin"), os.path.join(folder, "groundtruth")
            if not os.path.isdir(origin):
                raise FileNotFoundError(f"Deepglobe: missing folder {origin!r} (expected "
                                        f"<root>/<1..6>/test/{{origin,groundtruth}}, PATNet's layout)")
            # data/deepglobe.py:109-112: sorted glob, '.jpg' by PATNet's split('.')[1] test.
            images = [p for p in sorted(glob.glob(os.path.join(origin, "*"))) if patnet_jpg(p)]
            # data/deepglobe.py:62-66: groundtruth/<id>.png, id = name up to the first '.'
            self.samples_by_class[c] = [self._add(p, os.path.join(truth, os.path.basename(p).split(".")[0] + ".png"))
                                        for p in images]
        self._require_files(f"Deepglobe {root!r}")


# PATNet data/preprocess.py:65 labelset, in the BGR order cv2.imread gives; as RGB colours:
DEEPGLOBE_CLASS_COLOURS = ((255, 255, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255))
DEEPGLOBE_GRID = 6  # preprocess.py:22: 6 x 6 tiles per image
DEEPGLOBE_MIN_FRACTION = 0.048  # preprocess.py:57: every colour must cover more than 4.8% of the tile


def deepglobe_tiles(h: int, w: int, grid: int = DEEPGLOBE_GRID):
    """(row, col, y0, y1, x0, x1) of PATNet's tiles (``preprocess.py:23-30``: ``int(i * h / num)``)."""
    for i in range(grid):
        for j in range(grid):
            yield i, j, int(i * h / grid), int((i + 1) * h / grid), int(j * w / grid), int((j + 1) * w / grid)


def deepglobe_keep(mask_tile: np.ndarray) -> Tuple[bool, str]:
    """PATNet's filter (``preprocess.py:45-59``): keep a tile whose mask has more than one colour and
    whose rarest colour covers more than 4.8% of it. PATNet divides by 166464 = 408 x 408, the tile
    area of the standard 2448-px images; the tile's own area is used here (the same number there).
    Returns (keep, reason)."""
    _, counts = np.unique(mask_tile.reshape(-1, mask_tile.shape[-1]), axis=0, return_counts=True)
    if len(counts) < 2:
        return False, "single colour"
    if counts.min() / float(mask_tile.shape[0] * mask_tile.shape[1]) <= DEEPGLOBE_MIN_FRACTION:
        return False, "a colour under 4.8%"
    return True, "kept"


def _deepglobe_pairs(src: str) -> List[Tuple[str, str, str]]:
    for folder in (src, os.path.join(src, "train")):
        sats = sorted(glob.glob(os.path.join(folder, "*_sat.jpg")))
        if sats:
            pairs = []
            for s in sats:
                image_id = os.path.basename(s)[: -len("_sat.jpg")]
                m = os.path.join(folder, image_id + "_mask.png")
                if not os.path.isfile(m):
                    raise FileNotFoundError(f"{s}: no mask {m!r} (DeepGlobe train layout: <id>_sat.jpg + <id>_mask.png)")
                pairs.append((image_id, s, m))
            return pairs
    raise FileNotFoundError(f"no <id>_sat.jpg images in {src!r} or {os.path.join(src, 'train')!r} "
                            "(the DeepGlobe land-cover train set; valid/test have no masks)")


def prepare_deepglobe(src: str, dst: str, quiet: bool = False) -> dict:
    """Tile, filter and split by class as PATNet's ``data/preprocess.py`` (steps 1-3) does, into
    ``dst/<1..6>/test/{origin/<id>_<row><col>.jpg, groundtruth/<id>_<row><col>.png}`` (0/255 mask of
    that folder's class; a kept tile goes to every class folder whose colour it contains)."""
    pairs = _deepglobe_pairs(src)
    counts = Counter()
    per_class = Counter()
    palette = {(0, 0, 0), *DEEPGLOBE_CLASS_COLOURS}  # + unknown (black)
    for image_id, sat, mask_path in progress(pairs, "deepglobe", quiet):
        image = np.asarray(Image.open(sat).convert("RGB"))
        mask = np.asarray(Image.open(mask_path).convert("RGB"))
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"{mask_path}: size {mask.shape[:2]} differs from {sat} {image.shape[:2]}")
        for i, j, y0, y1, x0, x1 in deepglobe_tiles(*mask.shape[:2]):
            m = mask[y0:y1, x0:x1]
            counts["tiles"] += 1
            keep, reason = deepglobe_keep(m)
            counts[reason] += 1
            if not keep:
                continue
            colours = {tuple(int(v) for v in c) for c in np.unique(m.reshape(-1, 3), axis=0)}
            if colours - palette:
                counts["kept tiles with off-palette colours"] += 1
            name = f"{image_id}_{i}{j}"
            for k, colour in enumerate(DEEPGLOBE_CLASS_COLOURS, 1):
                if colour not in colours:
                    continue
                per_class[k] += 1
                folder = os.path.join(dst, str(k), "test")
                img_path = os.path.join(folder, "origin", name + ".jpg")
                gt_path = os.path.join(folder, "groundtruth", name + ".png")
                if os.path.isfile(img_path) and os.path.isfile(gt_path):
                    counts["files skipped"] += 2
                    continue
                binary = ((m == np.asarray(colour, np.uint8)).all(axis=2) * 255).astype(np.uint8)
                save_whole(Image.fromarray(binary, mode="L"), gt_path)
                save_whole(Image.fromarray(image[y0:y1, x0:x1]), img_path, quality=95)  # cv2.imwrite's default
                counts["files written"] += 2
    return {"images": len(pairs), "tiles": counts["tiles"], "kept": counts["kept"],
            "dropped_single_colour": counts["single colour"], "dropped_small_colour": counts["a colour under 4.8%"],
            "off_palette": counts["kept tiles with off-palette colours"], "per_class": dict(sorted(per_class.items())),
            "files_written": counts["files written"], "files_skipped": counts["files skipped"], "dir": dst}


@BENCHMARKS.register("deepglobe")
class DeepglobeBenchmark(CrossDomainTarget):
    reader = Deepglobe
    prepare_help = "PATNet's Deepglobe tiles from the DeepGlobe land-cover train set"

    @classmethod
    def add_prepare_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("src", help="folder with <id>_sat.jpg + <id>_mask.png (DeepGlobe train/)")
        parser.add_argument("dst", help="output root: DST/<1..6>/test/{origin,groundtruth}/")

    @classmethod
    def prepare(cls, a: argparse.Namespace) -> None:
        s = prepare_deepglobe(a.src, a.dst, a.quiet)
        print(f"deepglobe: {s['images']} images -> {s['tiles']} tiles of 1/6 x 1/6; kept {s['kept']} "
              f"(dropped {s['dropped_single_colour']} single-colour and {s['dropped_small_colour']} with a colour "
              f"covering <= 4.8% of the tile, PATNet data/preprocess.py step 2)")
        print(f"tiles per class folder 1..6 (agriculture, urban, rangeland, forest, water, barren): {s['per_class']}; "
              f"{s['files_written']} files written, {s['files_skipped']} already there in {s['dir']}")
        if s["off_palette"]:
            print(f"warning: {s['off_palette']} kept tile(s) hold colours outside DeepGlobe's 7-colour palette; "
                  f"those pixels belong to no class (PATNet matches colours exactly too)")
