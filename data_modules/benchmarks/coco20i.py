"""COCO-20i (as HSNet's data/coco.py): coco128-style or standard 2014 layout with class-index masks;
``fsseg prepare coco20i`` builds HSNet's masks from the instances JSON."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import warnings
from typing import Dict, Iterable, List, Optional, Union

import numpy as np
from PIL import Image

from ..hdmnet_augment import HDMNET_SCALE
from ..readers.base import FileFewShotDataset, stem
from ..readers.layout import SPLIT_ALIASES, classes_from_areas, pair_folder, read_lines
from ..readers.mask_index import mask_areas
from .benchmark import BENCHMARKS, EpisodicBenchmark, ReaderSettings
from .converting import progress, save_whole


class Coco20i(FileFewShotDataset):
    """COCO-20i. Fold i tests the 0-based classes {i, i+4, ..., i+76}; train uses the other 60
    (HSNet data/coco.py:60-66; HDMNet's ``use_split_coco``, util/dataset.py:129-143).

    Layouts (class-index masks, value k = class k 1-based, 0 = background):
    * coco128 style: ``root/images/<id>.jpg``, ``root/masks/<id>.png``, optional ``classes.txt``
      (80 names) and ``index.json`` (class name -> image ids; otherwise derived from the masks);
    * standard: ``root/{train2014,val2014}/<name>.jpg`` + ``root/annotations/{train2014,val2014}/<name>.png``
      (train split reads train2014, val/test read val2014).

    ``list_dir``: HSNet's class pools ``{trn,val}/fold{i}.pkl`` (a pickled dict {0..79: [image path
    relative to root, e.g. ``val2014/COCO_val2014_000000507081.jpg``]}, read without executing
    anything, see ``read_pool_pickle``); sample keys are those paths, masks
    ``root/annotations/<path>.png`` (HSNet data/coco.py:79-81). Reading the pools opens no image.
    ``min_pixels`` and ``exclude_novel_images`` apply BAM's rule (``readers.layout.classes_by_area``) to each
    mask's class areas: from ``index.json`` when it carries them (``fsseg prepare coco20i`` writes
    ``{class name: {image stem: pixels}}``; no mask is opened), else counted from the masks once and
    kept in ``mask_index_dir`` (``readers.mask_index.mask_areas``). An ``index.json`` of plain lists
    (``{class name: [image stem]}``, coco128's) serves only the unfiltered pools. Classes with fewer
    than K+1 images stay listed but the episode sampler never draws them.
    """

    name = "coco20i"

    def __init__(self, root: str, fold: int = 0, split: str = "train", mask_encoding: str = "auto",
                 index_file: Optional[str] = None, list_dir: Optional[str] = None, min_pixels: int = 0,
                 exclude_novel_images: bool = False, mask_index_dir: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        if not 0 <= fold < 4:
            raise ValueError(f"COCO-20i fold must be 0..3, got {fold}")
        self.root, self.fold, self.split = root, fold, SPLIT_ALIASES[split]
        names_file = os.path.join(root, "classes.txt")
        names = read_lines(names_file) if os.path.isfile(names_file) else [str(i) for i in range(80)]
        if len(names) != 80:
            raise ValueError(f"{names_file}: expected 80 COCO class names, got {len(names)}")
        self.class_names = dict(enumerate(names))
        novel = list(range(fold, 80, 4))
        self.class_ids = novel if self.split != "trn" else [c for c in range(80) if c not in novel]
        self.list_format = "hsnet" if list_dir else "masks"
        if list_dir:
            path = os.path.join(list_dir, "trn" if self.split == "trn" else "val", f"fold{fold}.pkl")
            pools = read_pool_pickle(path)
            self.samples_by_class = {c: list(pools.get(c, [])) for c in self.class_ids}
            for keys in self.samples_by_class.values():
                for key in keys:
                    self.records.setdefault(key, (os.path.join(root, key), os.path.join(
                        root, "annotations", os.path.splitext(key)[0] + ".png")))
            return
        if os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(root, "masks")):
            image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        else:
            sub = "train2014" if self.split == "trn" else "val2014"
            image_dir, mask_dir = os.path.join(root, sub), os.path.join(root, "annotations", sub)
            if not (os.path.isdir(image_dir) and os.path.isdir(mask_dir)):
                raise FileNotFoundError(
                    f"COCO-20i: {root!r} has neither images/+masks/ nor {sub}/+annotations/{sub}/")
        self.records = pair_folder(image_dir, mask_dir)
        by_stem = {stem(k): k for k in self.records}
        index_file = index_file or os.path.join(root, "index.json")
        members: Dict[int, List[str]] = {c: [] for c in range(80)}
        index = read_coco_index(index_file, names) if os.path.isfile(index_file) else None
        filtered = bool(min_pixels or exclude_novel_images)
        if index is not None and not filtered:
            for c, ids in index.items():
                members[c] = [by_stem[i] for i in ids if i in by_stem]
        else:
            keys = list(self.records)
            with_areas = index is not None and all(isinstance(v, dict) for v in index.values())
            if with_areas:  # prepare's areas: no mask opened
                areas: List[Dict[int, int]] = [{} for _ in keys]
                row = {stem(k): i for i, k in enumerate(keys)}
                for c, pixels in index.items():
                    for i, n in pixels.items():
                        if i in row:
                            areas[row[i]][c + 1] = int(n)
            else:
                areas = mask_areas([self.records[k][1] for k in keys], mask_index_dir, desc="COCO masks").areas
            wanted = {c + 1 for c in self.class_ids}
            for key, a in zip(keys, areas):
                for v in classes_from_areas(a, wanted, min_pixels, exclude_novel_images):
                    members[v - 1].append(key)
        self.samples_by_class = {c: sorted(members[c]) for c in self.class_ids}

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return class_id + 1


def read_coco_index(path: str, names: List[str]) -> Dict[int, Union[List[str], Dict[str, int]]]:
    """``index.json`` by class id: ``{class name: [image stem]}`` (coco128, older ``fsseg prepare``)
    or ``{class name: {image stem: pixels of the class}}`` (``fsseg prepare coco20i``)."""
    with open(path) as f:
        index = json.load(f)
    name_to_id = {n: i for i, n in enumerate(names)}
    out: Dict[int, Union[List[str], Dict[str, int]]] = {}
    for cname, ids in index.items():
        if cname not in name_to_id:
            raise ValueError(f"{path}: unknown class name {cname!r}")
        if not isinstance(ids, (list, dict)):
            raise ValueError(f"{path}: class {cname!r} maps to a {type(ids).__name__}; expected a list of image "
                             "stems or {image stem: pixels} (rewrite it with `fsseg prepare coco20i`)")
        out[name_to_id[cname]] = ids
    return out


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Refuses every global (class, function) a pickle names, so loading cannot run code: only the
    pickle protocol's own dict/list/str/int/tuple opcodes can build objects."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def read_pool_pickle(path: str) -> Dict[int, List[str]]:
    """HSNet's COCO-20i pools (data/coco.py:68-71 ``pickle.load``s them): {class 0..79: [image path]}.
    Read with an unpickler that allows no globals, then checked to be exactly that shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO-20i pool file {path!r} not found (expected <list_dir>/{{trn,val}}/fold<i>.pkl)")
    with open(path, "rb") as f:
        try:
            pools = _NoGlobalsUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a plain pickled dict of class -> [image path] ({e})") from e
    if not isinstance(pools, dict) or not all(
            isinstance(c, int) and isinstance(v, list) and all(isinstance(p, str) for p in v) for c, v in pools.items()):
        raise ValueError(f"{path}: expected a dict {{class id (int): [image path (str), ...]}}")
    return pools


COCO_SPLITS = ("train2014", "val2014")


def coco_category_order(categories: List[dict]) -> Dict[int, int]:
    """COCO category id -> HSNet class value 1..80: the categories in increasing id order.

    HSNet's ``data/coco.py:92-93`` keeps value ``class_sample + 1`` for 0-based class ``class_sample``,
    its folds take classes ``fold + 4v`` (``:62``), i.e. the 80 categories numbered contiguously in
    id order (person = 1 ... toothbrush = 80). Checked against HSNet's own class pools in
    ``tests/test_fsseg_prepare.py::test_hsnet_coco_pools_index_classes_in_coco_id_order``."""
    ids = sorted(int(c["id"]) for c in categories)
    return {cid: i + 1 for i, cid in enumerate(ids)}


def coco_label_map(coco, image_id: int, value_of: Dict[int, int]) -> np.ndarray:
    """Class-index mask of one image: 0 background, 1..80 objects.

    Rule of the COCO-Stuff converter (github nightrome/cocostuffapi
    ``PythonAPI/pycocotools/cocostuffhelper.py``, ``cocoSegmentationToSegmentationMap`` with its
    default ``includeCrowd=False``): crowd annotations are left out (their pixels stay background
    unless a non-crowd object covers them), the other annotations are painted in the file's order
    and a later object overwrites an earlier one where they overlap (``labelMap[labelMask] =
    newLabel``; we do not raise on overlap as its ``checkUniquePixelLabel`` would, since instance
    masks of COCO do overlap)."""
    info = coco.imgs[image_id]
    out = np.zeros((info["height"], info["width"]), np.uint8)
    with warnings.catch_warnings():  # pycocotools 2.0.x vs numpy 2 "copy keyword" notice, harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            out[coco.annToMask(ann) == 1] = value_of[int(ann["category_id"])]
    return out


def _find_instances(src: str, split: str) -> str:
    for cand in (os.path.join(src, f"instances_{split}.json"), os.path.join(src, "annotations", f"instances_{split}.json")):
        if os.path.isfile(cand):
            return cand
    raise FileNotFoundError(f"instances_{split}.json not found in {src!r} or {os.path.join(src, 'annotations')!r} "
                            f"(from http://images.cocodataset.org/annotations/annotations_trainval2014.zip)")


def prepare_coco20i(src: str, dst: str, splits: Iterable[str] = COCO_SPLITS, quiet: bool = False) -> dict:
    """Write ``dst/annotations/<split>/<image name>.png`` (HSNet's layout, ``data/coco.py:79-82``),
    plus ``dst/classes.txt`` (80 names, line k = value k) and ``dst/index.json`` (class name ->
    {image stem: pixels of the class in its mask}), which fsseg's ``Coco20i`` reader uses instead of
    opening every mask, also for BAM/HDMNet's area rule (``protocol: hdmnet``)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - a dependency of fsseg
        raise SystemExit("fsseg prepare coco20i needs pycocotools (pip install pycocotools)") from e
    summary = {"written": 0, "skipped": 0, "splits": {}}
    names: Optional[List[str]] = None
    members: Dict[str, Dict[str, int]] = {}
    for split in splits:
        if split not in COCO_SPLITS:
            raise ValueError(f"unknown COCO split {split!r}; choose from {COCO_SPLITS}")
        coco = COCO(_find_instances(src, split))
        value_of = coco_category_order(coco.dataset["categories"])
        if len(value_of) != 80:
            raise ValueError(f"instances_{split}.json has {len(value_of)} categories, COCO-20i needs 80")
        split_names = [coco.cats[cid]["name"] for cid in sorted(value_of)]
        if names is not None and names != split_names:
            raise ValueError(f"instances_{split}.json lists other categories than the previous split")
        names = split_names
        out_dir = os.path.join(dst, "annotations", split)
        written = skipped = 0
        for image_id in progress(sorted(coco.imgs), f"coco20i {split}", quiet):
            stem = os.path.splitext(coco.imgs[image_id]["file_name"])[0]
            path = os.path.join(out_dir, stem + ".png")
            if os.path.isfile(path):
                label = np.asarray(Image.open(path))
                skipped += 1
            else:
                label = coco_label_map(coco, image_id, value_of)
                save_whole(Image.fromarray(label, mode="L"), path)
                written += 1
            counts = np.bincount(label.ravel(), minlength=256)
            for v in np.flatnonzero(counts[1:81]) + 1:
                members.setdefault(names[int(v) - 1], {})[stem] = int(counts[v])
        summary["splits"][split] = {"written": written, "skipped": skipped, "images": len(coco.imgs), "dir": out_dir}
        summary["written"] += written
        summary["skipped"] += skipped
    with open(os.path.join(dst, "classes.txt"), "w") as f:
        f.write("".join(n + "\n" for n in names or []))
    tmp = os.path.join(dst, "index.json.tmp")
    with open(tmp, "w") as f:
        json.dump({n: dict(sorted(members.get(n, {}).items())) for n in names or []}, f)
    os.replace(tmp, os.path.join(dst, "index.json"))
    return summary


@BENCHMARKS.register("coco20i", aliases=("coco",))  # "coco": HSNet's name, in its episode files
class Coco20iBenchmark(EpisodicBenchmark):
    hdmnet_area_rule = True
    hdmnet_scale = HDMNET_SCALE["coco"]
    hsnet_draw = "class_uniform"
    patnet_as_hsnet = True
    prepare_help = "HSNet's COCO-20i masks from instances_{train,val}2014.json"

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> Coco20i:
        return Coco20i(settings.root, settings.fold, split, mask_encoding=settings.mask_encoding,
                       list_dir=settings.split_dir, mask_index_dir=settings.mask_index_dir, **options)

    @classmethod
    def add_prepare_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("src", help="folder holding instances_train2014.json / instances_val2014.json "
                                        "(or its annotations/)")
        parser.add_argument("dst", help="the COCO2014 root (train2014/, val2014/ images); masks go to "
                                        "DST/annotations/<split>/")
        parser.add_argument("--splits", nargs="+", default=list(COCO_SPLITS), choices=COCO_SPLITS)

    @classmethod
    def prepare(cls, a: argparse.Namespace) -> None:
        s = prepare_coco20i(a.src, a.dst, a.splits, a.quiet)
        for split, r in s["splits"].items():
            print(f"coco20i {split}: {r['written']} masks written, {r['skipped']} already there "
                  f"({r['images']} images) in {r['dir']}")
        print(f"class list and class -> images index: {os.path.join(a.dst, 'classes.txt')}, "
              f"{os.path.join(a.dst, 'index.json')}")
