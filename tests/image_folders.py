"""Image/mask folders written by the tests in the layouts users give ``fsseg`` (``<root>/images``,
``<root>/masks``, one such folder per class), and the summary files ``fsseg predict`` writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def make_folder(root, n=4, size=(40, 50), mask_fn=None) -> None:
    """``n`` random photos ``images/<i>.jpg`` with one 15x20 box each in ``masks/<i>.png`` (0/255);
    ``mask_fn(i, mask)`` may replace a mask."""
    rng = np.random.default_rng(0)
    for i in range(n):
        save_image(f"{root}/images/{i}.jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        m = np.zeros(size, np.uint8)
        m[5:20, 10:30] = 255
        save_image(f"{root}/masks/{i}.png", mask_fn(i, m) if mask_fn else m)


def save_exif_jpeg(path: Path, stored: np.ndarray, orientation: int) -> None:
    """A JPEG whose EXIF orientation tag says how viewers turn the stored pixels (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=100)


def synthetic_two_class(root: Path) -> tuple[Path, Path]:
    """Two support classes (a red and a blue square, 2 shots each) and 3 queries of other sizes showing both."""
    rng = np.random.default_rng(0)
    for name, colour in [("red_square", (220, 30, 30)), ("blue_disc", (30, 30, 220))]:
        (root / "support" / name / "images").mkdir(parents=True)
        (root / "support" / name / "masks").mkdir(parents=True)
        for k in range(2):
            img = rng.integers(0, 80, (96, 96, 3), dtype=np.uint8)
            mask = np.zeros((96, 96), np.uint8)
            y, x = 20 + 10 * k, 30 - 5 * k
            mask[y:y + 40, x:x + 40] = 255
            img[mask > 0] = colour
            Image.fromarray(img).save(root / "support" / name / "images" / f"{k}.png")
            Image.fromarray(mask).save(root / "support" / name / "masks" / f"{k}.png")
    (root / "query").mkdir()
    for i, (h, w) in enumerate([(70, 130), (150, 90), (64, 64)]):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[5:h // 2, 5:w // 2] = (220, 30, 30)
        img[h // 2:h - 5, w // 2:w - 5] = (30, 30, 220)
        Image.fromarray(img).save(root / "query" / f"q{i}.png")
    return root / "support", root / "query"


def read_summary(out: Path) -> tuple[list[dict], list[dict]]:
    """The rows of ``summary.csv`` and the records of ``summary.jsonl`` a predict run wrote into ``out``."""
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "summary.jsonl") as f:
        recs = [json.loads(line) for line in f]
    return rows, recs
