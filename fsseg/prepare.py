"""Build the on-disk layouts the few-shot benchmarks are read from, out of the official downloads.

    fsseg prepare coco20i   COCO_ANNOTATIONS DST    HSNet's COCO-20i masks from instances_{train,val}2014.json
    fsseg prepare pascal5i  VOC2012 SBD_DATASET     VOC2012/SegmentationClassAug from VOC + SBD cls/*.mat
    fsseg prepare deepglobe SRC DST                 PATNet's Deepglobe tiles from the DeepGlobe land-cover train set

Every subcommand skips outputs that already exist (rerun it after an interruption: files are
published by rename, so a killed run never leaves a half-written one), shows a progress bar and ends
with a summary of what it wrote. Layouts and rules: README "Preparing the datasets",
docs/protocols/cdfss.md (Deepglobe).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
import warnings
from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm


# ----------------------------------------------------------------------------------------- helpers
def _save(img: Image.Image, path: str, **kwargs) -> None:
    """Encode in memory, then rename into place (same folder): an interrupted run leaves either no
    file or a whole one, so "exists" means "done". No fsync: this is restartability, not durability
    across power loss, and an fsync per file would dominate 100k+ small files."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format=kwargs.pop("format", None) or _format_of(path), **kwargs)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def _format_of(path: str) -> str:
    return "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"


def _bar(items, desc: str, quiet: bool):
    return tqdm(items, desc=desc, unit="file", disable=quiet, file=sys.stderr, mininterval=1.0)


# ----------------------------------------------------------------------------------------- COCO-20i
COCO_SPLITS = ("train2014", "val2014")


def coco_category_order(categories: List[dict]) -> Dict[int, int]:
    """COCO category id -> HSNet class value 1..80: the categories in increasing id order.

    HSNet's ``data/coco.py:92-93`` keeps value ``class_sample + 1`` for 0-based class ``class_sample``,
    its folds take classes ``fold + 4v`` (``:62``), i.e. the 80 categories numbered contiguously in
    id order (person = 1 ... toothbrush = 80). Checked against HSNet's own class pools in
    ``tests/test_prepare.py::test_hsnet_coco_pools_index_classes_in_coco_id_order``."""
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
        for image_id in _bar(sorted(coco.imgs), f"coco20i {split}", quiet):
            stem = os.path.splitext(coco.imgs[image_id]["file_name"])[0]
            path = os.path.join(out_dir, stem + ".png")
            if os.path.isfile(path):
                label = np.asarray(Image.open(path))
                skipped += 1
            else:
                label = coco_label_map(coco, image_id, value_of)
                _save(Image.fromarray(label, mode="L"), path)
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


# ----------------------------------------------------------------------------------------- PASCAL-5i
def read_sbd_segmentation(path: str) -> np.ndarray:
    """The class map of an SBD ``cls/<id>.mat`` file: struct ``GTcls`` field ``Segmentation``
    (uint8 0..20; SBD marks no boundary pixels). Field access as mmsegmentation's
    ``tools/dataset_converters/voc_aug.py`` (``data['GTcls'][0]['Segmentation'][0]``)."""
    from scipy.io import loadmat

    try:
        gt = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
        seg = np.asarray(gt.Segmentation)
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        raise ValueError(f"{path}: not an SBD cls file (expected struct GTcls with field Segmentation): {e}") from e
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 20:
        raise ValueError(f"{path}: GTcls.Segmentation must be a 2-D map of classes 0..20 "
                         f"(got shape {seg.shape}, values {np.unique(seg)[:10].tolist()})")
    return seg.astype(np.uint8)


def prepare_pascal5i(voc: str, sbd: str, output_dir: Optional[str] = None, quiet: bool = False) -> dict:
    """``SegmentationClassAug``: one grey class-index PNG per image of VOC2012 ``SegmentationClass``
    or SBD ``cls/``, 0 background, 1..20 classes, 255 = VOC's boundary/void (ignored by the few-shot
    evaluation, HSNet ``data/pascal.py`` ``extract_ignore_idx``).

    Where VOC2012 has its own mask, that one is used: it is the official annotation and carries the
    255 boundaries the evaluation ignores (SBD has none), and VOC val masks must stay VOC's for the
    1449-image val lists. SBD fills in the rest. The SegmentationClassAug archive the field downloads
    (published with DrSleep's tensorflow-deeplab-resnet) holds 12031 masks = train_aug's 10582 + VOC
    val's 1449, the union this builds; it could not be compared file by file here."""
    voc_dir = os.path.join(voc, "SegmentationClass")
    cls_dir = os.path.join(sbd, "cls")
    if not os.path.isdir(cls_dir) and os.path.isdir(os.path.join(sbd, "dataset", "cls")):
        cls_dir = os.path.join(sbd, "dataset", "cls")
    for d, what in ((voc_dir, "VOC2012 SegmentationClass"), (cls_dir, "SBD cls")):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{what} folder {d!r} not found")
    out_dir = output_dir or os.path.join(voc, "SegmentationClassAug")
    sources: Dict[str, Tuple[str, str]] = {}
    for p in sorted(glob.glob(os.path.join(cls_dir, "*.mat"))):
        sources[os.path.splitext(os.path.basename(p))[0]] = ("sbd", p)
    for p in sorted(glob.glob(os.path.join(voc_dir, "*.png"))):
        sources[os.path.splitext(os.path.basename(p))[0]] = ("voc", p)  # VOC takes precedence
    if not sources:
        raise FileNotFoundError(f"no masks found in {voc_dir!r} or {cls_dir!r}")
    counts = Counter()
    for image_id in _bar(sorted(sources), "pascal5i", quiet):
        kind, src = sources[image_id]
        path = os.path.join(out_dir, image_id + ".png")
        if os.path.isfile(path):
            counts["skipped"] += 1
            continue
        if kind == "voc":
            label = np.asarray(Image.open(src))  # palette indices: 0..20 and 255
            if label.ndim != 2:
                raise ValueError(f"{src}: expected a palette/grey class-index PNG, got shape {label.shape}")
        else:
            label = read_sbd_segmentation(src)
        _save(Image.fromarray(label.astype(np.uint8), mode="L"), path)
        counts[f"written_{kind}"] += 1
    return {"dir": out_dir, "written_voc": counts["written_voc"], "written_sbd": counts["written_sbd"],
            "skipped": counts["skipped"], "total": len(sources)}


# ----------------------------------------------------------------------------------------- Deepglobe
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
    for image_id, sat, mask_path in _bar(pairs, "deepglobe", quiet):
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
                _save(Image.fromarray(binary, mode="L"), gt_path)
                _save(Image.fromarray(image[y0:y1, x0:x1]), img_path, quality=95)  # cv2.imwrite's default
                counts["files written"] += 2
    return {"images": len(pairs), "tiles": counts["tiles"], "kept": counts["kept"],
            "dropped_single_colour": counts["single colour"], "dropped_small_colour": counts["a colour under 4.8%"],
            "off_palette": counts["kept tiles with off-palette colours"], "per_class": dict(sorted(per_class.items())),
            "files_written": counts["files written"], "files_skipped": counts["files skipped"], "dir": dst}


# ----------------------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="fsseg prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="dataset", required=True)
    c = sub.add_parser("coco20i", help="HSNet's COCO-20i masks from instances_{train,val}2014.json")
    c.add_argument("src", help="folder holding instances_train2014.json / instances_val2014.json (or its annotations/)")
    c.add_argument("dst", help="the COCO2014 root (train2014/, val2014/ images); masks go to DST/annotations/<split>/")
    c.add_argument("--splits", nargs="+", default=list(COCO_SPLITS), choices=COCO_SPLITS)
    v = sub.add_parser("pascal5i", help="SegmentationClassAug from VOC2012 + SBD cls/*.mat")
    v.add_argument("voc", help="VOCdevkit/VOC2012 (with SegmentationClass/)")
    v.add_argument("sbd", help="SBD's benchmark_RELEASE/dataset (with cls/)")
    v.add_argument("--output_dir", default=None, help="default: VOC/SegmentationClassAug")
    d = sub.add_parser("deepglobe", help="PATNet's Deepglobe tiles from the DeepGlobe land-cover train set")
    d.add_argument("src", help="folder with <id>_sat.jpg + <id>_mask.png (DeepGlobe train/)")
    d.add_argument("dst", help="output root: DST/<1..6>/test/{origin,groundtruth}/")
    a = p.parse_args(argv)
    try:
        _run(a)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line naming the file, no traceback
        raise SystemExit(f"fsseg prepare {a.dataset}: {e}") from e


def _run(a: argparse.Namespace) -> None:
    if a.dataset == "coco20i":
        s = prepare_coco20i(a.src, a.dst, a.splits, a.quiet)
        for split, r in s["splits"].items():
            print(f"coco20i {split}: {r['written']} masks written, {r['skipped']} already there "
                  f"({r['images']} images) in {r['dir']}")
        print(f"class list and class -> images index: {os.path.join(a.dst, 'classes.txt')}, "
              f"{os.path.join(a.dst, 'index.json')}")
    elif a.dataset == "pascal5i":
        s = prepare_pascal5i(a.voc, a.sbd, a.output_dir, a.quiet)
        print(f"pascal5i: {s['written_voc']} masks from VOC2012 SegmentationClass + {s['written_sbd']} from SBD "
              f"written, {s['skipped']} already there ({s['total']} images) in {s['dir']}")
    else:
        s = prepare_deepglobe(a.src, a.dst, a.quiet)
        print(f"deepglobe: {s['images']} images -> {s['tiles']} tiles of 1/6 x 1/6; kept {s['kept']} "
              f"(dropped {s['dropped_single_colour']} single-colour and {s['dropped_small_colour']} with a colour "
              f"covering <= 4.8% of the tile, PATNet data/preprocess.py step 2)")
        print(f"tiles per class folder 1..6 (agriculture, urban, rangeland, forest, water, barren): {s['per_class']}; "
              f"{s['files_written']} files written, {s['files_skipped']} already there in {s['dir']}")
        if s["off_palette"]:
            print(f"warning: {s['off_palette']} kept tile(s) hold colours outside DeepGlobe's 7-colour palette; "
                  f"those pixels belong to no class (PATNet matches colours exactly too)")


if __name__ == "__main__":
    main()
