"""A built-in synthetic few-shot segmentation dataset: no files, deterministic by seed.

Design
------
* 120 classes = 6 shapes x 5 textures x 4 colours
  (shapes: circle, square, triangle, ring, cross, star; textures: solid, horizontal stripes,
  vertical stripes, checker, dots; colours: red, green, blue, yellow).
  ``class_id = (shape * 5 + texture) * 4 + colour``.
* An image of class c, index j is rendered from ``np.random.default_rng([seed, c, j])``:
  a two-colour gradient background with Gaussian noise, 2-4 distractor objects of *other* classes,
  then 1-2 objects of class c on top. The foreground mask is exactly the pixels of the class-c
  objects (objects of c are drawn last, never occluded).
* Base/novel split: 4 folds like PASCAL-5i. A fixed permutation (``np.random.default_rng(2024)``)
  of the 120 class ids is cut into 4 interleaved slices: ``novel(fold) = sorted(perm[fold::4])``
  (30 novel classes; the other 90 are base). ``split='train'`` uses base classes, ``'val'``/``'test'``
  novel classes. Novel classes may appear as distractors in training images (as in PASCAL).
  Train images use indices ``0..images_per_class-1``; val/test use indices offset by 1_000_000
  (val) and 2_000_000 (test), so they are different pictures.
* Rendering is numpy-only; ~1 ms per 112x112 image, a few ms at 518.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .base import FewShotDataset

SHAPES = ("circle", "square", "triangle", "ring", "cross", "star")
TEXTURES = ("solid", "hstripes", "vstripes", "checker", "dots")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
COLOUR_NAMES = tuple(COLOURS)
NUM_CLASSES = len(SHAPES) * len(TEXTURES) * len(COLOURS)  # 120
NUM_FOLDS = 4
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def class_attributes(class_id: int) -> Tuple[str, str, str]:
    k = class_id % len(COLOURS)
    t = (class_id // len(COLOURS)) % len(TEXTURES)
    s = class_id // (len(COLOURS) * len(TEXTURES))
    return SHAPES[s], TEXTURES[t], COLOUR_NAMES[k]


def class_name(class_id: int) -> str:
    return "-".join(class_attributes(class_id))


def novel_classes(fold: int) -> List[int]:
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"synthetic fold must be in 0..{NUM_FOLDS - 1}, got {fold}")
    perm = np.random.default_rng(2024).permutation(NUM_CLASSES)
    return sorted(int(c) for c in perm[fold::NUM_FOLDS])


def base_classes(fold: int) -> List[int]:
    novel = set(novel_classes(fold))
    return [c for c in range(NUM_CLASSES) if c not in novel]


_GRID_CACHE: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int):
    if size not in _GRID_CACHE:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRID_CACHE[size] = (yy, xx)
    return _GRID_CACHE[size]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "triangle":  # equilateral, pointing "up" in local coordinates
        return (v <= 0.5 * r) & (np.sqrt(3.0) * u - v <= r) & (-np.sqrt(3.0) * u - v <= r)
    if shape == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.3 * r) & (b <= r)) | ((b <= 0.3 * r) & (a <= r))
    if shape == "star":
        theta = np.arctan2(v, u)
        rad = r * (0.5 + 0.5 * np.abs(np.cos(2.5 * theta)))
        return u * u + v * v <= rad * rad
    raise ValueError(shape)


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, period: float) -> np.ndarray:
    if texture == "solid":
        return np.ones(yy.shape, dtype=bool)
    if texture == "hstripes":
        return (yy // period) % 2 == 0
    if texture == "vstripes":
        return (xx // period) % 2 == 0
    if texture == "checker":
        return ((yy // period) + (xx // period)) % 2 == 0
    if texture == "dots":
        h = period
        dy = (yy % (2 * h)) - h
        dx = (xx % (2 * h)) - h
        return dy * dy + dx * dx > (0.55 * h) ** 2  # coloured body with dark dots
    raise ValueError(texture)


def render(class_id: int, index: int, seed: int = 0, image_size: int = 112,
           num_classes: int = NUM_CLASSES) -> Tuple[np.ndarray, np.ndarray]:
    """Render image ``uint8 [S,S,3]`` and the class's binary mask ``uint8 [S,S]`` (never empty)."""
    img, label = render_with_labels(class_id, index, seed, image_size, num_classes)
    return img, (label == class_id).astype(np.uint8)


def render_with_labels(class_id: int, index: int, seed: int = 0, image_size: int = 112,
                       num_classes: int = NUM_CLASSES) -> Tuple[np.ndarray, np.ndarray]:
    """Image and the int32 label map (visible class id per pixel, -1 = background)."""
    S = int(image_size)
    rng = np.random.default_rng([int(seed), int(class_id), int(index)])
    yy, xx = _grid(S)
    # background: gradient between two muted colours + noise
    c0 = rng.uniform(40, 200, 3).astype(np.float32)
    c1 = rng.uniform(40, 200, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * xx + np.sin(ang) * yy) / S
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    img = c0 + (c1 - c0) * g[..., None]
    label = np.full((S, S), -1, dtype=np.int32)
    period = max(2.0, S / 18.0)

    def draw(cid: int, cx: float, cy: float, r: float, rot: float) -> None:
        shape, texture, colour = class_attributes(cid)
        x0, x1 = int(max(0, cx - r - 1)), int(min(S, cx + r + 2))
        y0, y1 = int(max(0, cy - r - 1)), int(min(S, cy + r + 2))
        if x1 <= x0 or y1 <= y0:
            return
        wy, wx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
        du, dv = wx - cx, wy - cy
        cr, sr = np.cos(rot), np.sin(rot)
        u, v = cr * du + sr * dv, -sr * du + cr * dv
        m = _shape_mask(shape, u, v, r)
        if not m.any():
            return
        base = np.asarray(COLOURS[colour], np.float32) * rng.uniform(0.85, 1.1)
        tex = _texture(texture, wy, wx, period)
        col = np.where(tex[..., None], base, base * 0.3)
        region = img[y0:y1, x0:x1]
        region[m] = col[m]
        label[y0:y1, x0:x1][m] = cid

    for _ in range(int(rng.integers(2, 5))):
        other = int(rng.integers(0, num_classes - 1))
        other = other + 1 if other >= class_id else other
        r = rng.uniform(0.08, 0.18) * S
        draw(other, rng.uniform(0, S), rng.uniform(0, S), r, rng.uniform(0, 2 * np.pi))
    n_targets = 1 if rng.random() < 0.75 else 2
    for _ in range(n_targets):
        r = rng.uniform(0.14, 0.28) * S
        cx, cy = rng.uniform(r * 0.6, S - r * 0.6, 2)
        draw(class_id, cx, cy, r, rng.uniform(0, 2 * np.pi))
    if not (label == class_id).any():  # cannot happen with the ranges above; keep the guarantee
        draw(class_id, S / 2, S / 2, 0.25 * S, 0.0)
    img += rng.standard_normal((S, S, 3), dtype=np.float32) * 8.0
    return np.clip(img, 0, 255).astype(np.uint8), label


class SyntheticFewShot(FewShotDataset):
    """Synthetic few-shot dataset (see module docstring). Keys: ``'synthetic/c<id>/<index>'``."""

    name = "synthetic"

    def __init__(self, fold: int = 0, split: str = "train", seed: int = 0, image_size: int = 112,
                 images_per_class: int = 50, classes: Optional[List[int]] = None) -> None:
        super().__init__()
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"split must be one of {tuple(_SPLIT_OFFSET)}, got {split!r}")
        self.fold, self.split, self.seed = fold, split, seed
        self.image_size, self.images_per_class = image_size, images_per_class
        if classes is None:
            classes = base_classes(fold) if split == "train" else novel_classes(fold)
        self.class_ids = list(classes)
        self.class_names = {c: class_name(c) for c in range(NUM_CLASSES)}
        off = _SPLIT_OFFSET[split]
        self.samples_by_class = {
            c: [f"synthetic/c{c:03d}/{off + j}" for j in range(images_per_class)] for c in self.class_ids
        }
        self._cache_key: Optional[str] = None
        self._cache = None

    @staticmethod
    def parse_key(key: str) -> Tuple[int, int]:
        _, c, j = key.split("/")
        return int(c[1:]), int(j)

    def _render(self, key: str):
        if key != self._cache_key:
            c, j = self.parse_key(key)
            self._cache = render_with_labels(c, j, self.seed, self.image_size)
            self._cache_key = key
        return self._cache

    def load_image(self, key: str) -> np.ndarray:
        return self._render(key)[0]

    def load_mask(self, key: str, class_id: int) -> np.ndarray:
        """Exact mask of any class: distractors of other classes are labelled too (N-way)."""
        return (self._render(key)[1] == class_id).astype(np.uint8)
