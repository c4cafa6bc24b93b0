"""WeedMap (agriculture: crop and weed in multispectral field tiles), as DistillFSS reads it.

Layout (``root`` = ``0_rotations_processed_003_test/RedEdge`` of the official
``0_rotations_processed_003_test.zip``, unzipped as DistillFSS's README says, ``README.md:58-64``):
``<field>/tile/{R,G,B}/<name>.png`` (one 8-bit grey file per channel, the same name in the three
folders) and ``<field>/groundtruth/<field>_<name up to its first dot>_GroundTruth_iMap.png``. The
reference trains on field ``000`` and tests on field ``003`` (``parameters/distill/WeedMap.yaml:14-15``).
Classes ``crop`` (1) and ``weed`` (2) (``weedmap.py:14``), both labelled in every image. Reference:
DistillFSS ``distillfss/data/weedmap.py``: the images of a field are the entries of its ``tile/R``
folder (l.48-49); the image is R, G, B stacked (l.120-127); the ground truth's first channel is the
class index, with value 10000 read as crop (l.129-137); ``remove_black_images`` drops the training
tiles with more than 10 pixels whose R + G + B is 0 (l.54-65; off in the distillation runs,
``WeedMap.yaml:38``); the supports are K images of the training field, hierarchical-uniform over its
list (l.76-80; fsseg sorts it by name, the reference takes ``os.listdir``'s order), each with both
classes' masks (l.91-105); every test tile is scored (l.68-69, 158-159).
"""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np

from ..image_io import BadSampleError, _open, check_same_size, is_image_file
from ..readers.pool import PooledDataset, first_channel
from .benchmark import BENCHMARKS, PooledBenchmark

CLASS_NAMES = ["crop", "weed"]
CHANNELS = ("R", "G", "B")  # weedmap.py:38
CROP_16BIT = 10000  # weedmap.py:135-136
BLACK_PIXELS_ABOVE = 10  # weedmap.py:59-63


def ground_truth_name(field: str, filename: str) -> str:
    """weedmap.py:130-131: the field folder's name, the tile name cut at its first dot."""
    return f"{field}_{filename.split('.')[0]}_GroundTruth_iMap.png"


class WeedMap(PooledDataset):
    name = "weedmap"

    def __init__(self, root: str, train_field: str = "000", test_field: str = "003",
                 remove_black_images: bool = False) -> None:
        super().__init__()
        if train_field == test_field:
            raise ValueError(f"WeedMap: train_field and test_field are both {train_field!r} (--data.train_field / --data.test_field)")
        self.channel_paths = {}
        test: List[str] = []
        for field in (train_field, test_field):
            tile_dirs = [os.path.join(root, field, "tile", c) for c in CHANNELS]
            gt_dir = os.path.join(root, field, "groundtruth")
            for d in (*tile_dirs, gt_dir):
                if not os.path.isdir(d):
                    raise FileNotFoundError(f"WeedMap: {d!r} missing (expected <root>/<field>/tile/{{R,G,B}}/ and "
                                            f"<root>/<field>/groundtruth/; fields: --data.train_field / --data.test_field)")
            for f in sorted(os.listdir(tile_dirs[0])):
                path = os.path.join(tile_dirs[0], f)
                if not is_image_file(f):
                    raise BadSampleError(path, "not an image; DistillFSS reads every entry of tile/R as a tile "
                                               "(weedmap.py:48-49): remove it")
                paths = [os.path.join(d, f) for d in tile_dirs]
                gt = os.path.join(gt_dir, ground_truth_name(os.path.basename(os.path.normpath(os.path.join(root, field))), f))
                for p in (*paths[1:], gt):
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"WeedMap: tile {path!r} has no {p!r}")
                key = f"{field}/{f}"
                self.records[key] = (paths[0], gt)
                self.channel_paths[key] = paths
                self.label_of[key] = 0
                if field == test_field:
                    test.append(key)
        if remove_black_images:  # weedmap.py:51-52, 54-65: training tiles only
            for key in [k for k in self.label_of if k.startswith(f"{train_field}/")]:
                if self.black_pixels(key) > BLACK_PIXELS_ABOVE:
                    del self.label_of[key], self.records[key], self.channel_paths[key]
        # every image is indexed under class 0 (crop) and labels both classes (mask_value below)
        self._index(CLASS_NAMES)
        self.published_test = test

    def black_pixels(self, key: str) -> int:
        return int((self.load_image(key).astype(np.int64).sum(axis=2) == 0).sum())

    def load_image(self, key: str) -> np.ndarray:
        channels = []
        for p in self.channel_paths[key]:
            img = _open(p)
            if img.mode != "L":  # torchvision read_image of an 8-bit grey PNG: one channel (weedmap.py:124)
                raise BadSampleError(p, f"WeedMap channel file of mode {img.mode}; expected one 8-bit grey channel")
            channels.append(np.asarray(img))
        if len({c.shape for c in channels}) != 1:
            raise BadSampleError(self.channel_paths[key][0], f"channels R, G, B differ in size: {[c.shape for c in channels]}")
        return np.stack(channels, axis=2)

    def read_classes(self, key: str) -> np.ndarray:
        """Class-index ground truth: 0 background, 1 crop, 2 weed."""
        path = self.records[key][1]
        gt = first_channel(path).astype(np.int64)
        gt[gt == CROP_16BIT] = 1
        bad = sorted(set(np.unique(gt).tolist()) - {0, 1, 2})
        if bad:  # the reference one-hot encodes 3 classes (weedmap.py:103)
            raise BadSampleError(path, f"ground-truth values {bad[:5]} outside 0 (background), 1 (crop), 2 (weed)")
        return gt

    def mask_value(self, key: str, class_id: int):
        return class_id + 1  # every mask labels both classes

    def read_foreground(self, key: str) -> np.ndarray:
        return self.read_classes(key) > 0

    def load_mask(self, key: str, class_id: int) -> np.ndarray:
        return (self.read_classes(key) == class_id + 1).astype(np.uint8)

    def load(self, key: str, class_ids: Sequence[int]):
        image, gt = self.load_image(key), self.read_classes(key)
        check_same_size(image, gt, self.channel_paths[key][0], self.records[key][1])
        return image, [(gt == c + 1).astype(np.uint8) for c in class_ids]


@BENCHMARKS.register("weedmap")
class WeedmapBenchmark(PooledBenchmark):
    reader = WeedMap


__all__ = ["WeedMap", "ground_truth_name"]
