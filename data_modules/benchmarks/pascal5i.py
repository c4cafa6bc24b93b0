"""PASCAL-5i (as HSNet's data/pascal.py): VOC2012 + SBD layout, the literature's fold split lists;
``fsseg prepare pascal5i`` builds SegmentationClassAug from VOC2012 + SBD."""

from __future__ import annotations

import argparse
import ast
import glob
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..readers.base import FileFewShotDataset, stem
from ..readers.layout import SPLIT_ALIASES, classes_from_areas, read_lines
from ..readers.mask_index import mask_areas
from .benchmark import BENCHMARKS, EpisodicBenchmark, ReaderSettings
from .converting import progress, save_whole

ALL_CLASSES_FOLD = 4  # Pascal5i(fold=4): every class in every split (PATNet's source training)


class Pascal5i(FileFewShotDataset):
    """PASCAL-5i: ``root/JPEGImages/<id>.jpg`` + ``root/SegmentationClassAug/<id>.png`` (class-index,
    1..20, 255 boundary = ignore). Fold i tests 0-based classes 5i..5i+4; sample keys are VOC ids.

    ``list_dir`` holds one of the field's list formats (detected):

    * HSNet/PATNet ``{trn,val}/fold{j}.txt`` of ``<voc id>__<class 1..20>`` lines. ``trn/fold{j}``
      lists the training images of fold j's *own* classes, so fold i trains on ``trn/fold{j}`` for
      every j != i (HSNet data/pascal.py:117-131); val/test read ``val/fold{i}.txt``.
    * BAM/HDMNet's pre-filtered ``fss_list/{train,val}/data_list_{i}.txt`` +
      ``sub_class_file_list_{i}.txt`` (``list_dir`` = the folder holding ``fss_list`` or ``fss_list``
      itself); the dict file is parsed as a literal, never executed.
    * PFENet's ``voc_sbd_merge_noduplicate.txt`` (train) / ``val.txt`` (``JPEGImages/<id>.jpg
      SegmentationClassAug/<id>.png`` lines): the classes of each image come from its mask.

    Without ``list_dir`` the pairs are derived from the masks, using
    ``root/ImageSets/Segmentation/{train_aug,train,val}.txt`` to choose images when present, else all
    masks. Wherever classes come from masks, ``min_pixels`` and ``exclude_novel_images`` apply BAM's
    rule (``readers.layout.classes_by_area``) on areas counted once and kept in ``mask_index_dir``
    (``readers.mask_index.mask_areas``). Train split = base classes, val/test = the fold's novel classes.

    ``fold=4`` (``ALL_CLASSES_FOLD``): all 20 classes in every split -- the source training of
    cross-domain FSS, where PATNet trains with ``--fold 4`` (github slei109/PATNet ``data/pascal.py:106-108``:
    fold 4's validation classes 20..24 do not exist, so every class is a training class, and training
    reads ``trn/fold{j}`` for every j != 4, i.e. all four, ``:125-129``). PATNet's fold-4 validation list
    is empty (``:131-133``); here val/test read all four ``val/fold{j}.txt``, so a validation set
    exists. BAM's lists have no fold 4.

    ``list_pairs`` keeps the (id, class) pairs in list order (duplicates kept) and
    ``samples_by_class`` the class pools in list order, as the reference code iterates them.
    Reading lists never opens an image; missing image folders only fail when a sample is loaded.
    """

    name = "pascal5i"
    CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
    PFENET_LISTS = {"trn": "voc_sbd_merge_noduplicate.txt", "val": "val.txt", "test": "val.txt"}

    def __init__(self, root: str, fold: int = 0, split: str = "train", list_dir: Optional[str] = None,
                 mask_encoding: str = "auto", image_dir: str = "JPEGImages",
                 mask_dir: str = "SegmentationClassAug", min_pixels: int = 0,
                 exclude_novel_images: bool = False, mask_index_dir: Optional[str] = None) -> None:
        super().__init__(mask_encoding)
        self.mask_index_dir = mask_index_dir
        if not 0 <= fold <= ALL_CLASSES_FOLD:
            raise ValueError(f"PASCAL-5i fold must be 0..3 (or {ALL_CLASSES_FOLD} = all 20 classes), got {fold}")
        self.root, self.fold, self.split = root, fold, SPLIT_ALIASES[split]
        self.image_dir, self.mask_dir = os.path.join(root, image_dir), os.path.join(root, mask_dir)
        self.min_pixels, self.exclude_novel_images = min_pixels, exclude_novel_images
        novel = [] if fold == ALL_CLASSES_FOLD else list(range(5 * fold, 5 * fold + 5))
        self.class_ids = novel if self.split != "trn" else [c for c in range(20) if c not in novel]
        if fold == ALL_CLASSES_FOLD:
            self.class_ids = list(range(20))
        self.class_names = dict(enumerate(self.CLASSES))
        if list_dir is None:
            self.list_format, pairs = "masks", self._derive_pairs(self._image_set_ids())
        elif self._bam_dir(list_dir):
            self.list_format, pairs = "bam", self._read_bam(self._bam_dir(list_dir))
        elif os.path.isfile(os.path.join(list_dir, self.PFENET_LISTS[self.split])):
            ids = self._read_pfenet(os.path.join(list_dir, self.PFENET_LISTS[self.split]))
            self.list_format, pairs = "pfenet", self._derive_pairs(ids)
        else:
            self.list_format, pairs = "hsnet", self._read_hsnet(list_dir)
        wanted = set(self.class_ids)
        self.list_pairs = [(i, c) for i, c in pairs if c in wanted]
        self.samples_by_class = {c: [] for c in self.class_ids}
        for img_id, c in self.list_pairs:
            if img_id not in self.records:
                self.records[img_id] = (os.path.join(self.image_dir, img_id + ".jpg"),
                                        os.path.join(self.mask_dir, img_id + ".png"))
            if img_id not in self.samples_by_class[c]:
                self.samples_by_class[c].append(img_id)

    # -- list formats ------------------------------------------------------------------------
    def _bam_dir(self, list_dir: str) -> Optional[str]:
        for d in (os.path.join(list_dir, "fss_list"), list_dir):
            if os.path.isdir(os.path.join(d, "train")) and os.path.isdir(os.path.join(d, "val")):
                return d
        return None

    def _read_hsnet(self, list_dir: str):
        if self.split == "trn" or self.fold == ALL_CLASSES_FOLD:
            folds = [j for j in range(4) if j != self.fold]
        else:
            folds = [self.fold]
        split = "trn" if self.split == "trn" else "val"
        pairs = []
        for j in folds:
            path = os.path.join(list_dir, split, f"fold{j}.txt")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"PASCAL-5i split list {path!r} not found (expected HSNet's <list_dir>/{split}/fold{j}.txt, "
                    f"BAM's <list_dir>/fss_list/ or PFENet's {self.PFENET_LISTS[self.split]})")
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        img_id, c = line.rsplit("__", 1)
                        pairs.append((img_id, int(c) - 1))
                    except ValueError as e:
                        raise ValueError(f"{path}:{n}: expected '<voc id>__<class 1..20>', got {line!r}") from e
        return pairs

    def _read_bam(self, bam_dir: str):
        if self.fold == ALL_CLASSES_FOLD:
            raise ValueError(f"PASCAL-5i fold {ALL_CLASSES_FOLD} (all classes) has no BAM list in {bam_dir!r}; "
                             f"give HSNet's or PFENet's lists as list_dir")
        split = "train" if self.split == "trn" else "val"
        data_list = os.path.join(bam_dir, split, f"data_list_{self.fold}.txt")
        dict_file = os.path.join(bam_dir, split, f"sub_class_file_list_{self.fold}.txt")
        image_ids = [stem(line.split()[0]) for line in read_lines(data_list)]
        pools = read_class_file_dict(dict_file)
        classes_of: Dict[str, List[int]] = {i: [] for i in image_ids}
        for value in sorted(pools):
            for img_id in pools[value]:
                if img_id not in classes_of:
                    raise ValueError(f"{dict_file}: image {img_id!r} of class {value} is not in {data_list}")
                classes_of[img_id].append(value - 1)
        return [(i, c) for i in image_ids for c in classes_of[i]]

    @staticmethod
    def _read_pfenet(path: str) -> List[str]:
        ids = []
        for n, line in enumerate(read_lines(path), 1):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<image path> <mask path>', got {line!r}")
            ids.append(stem(parts[0]))
        return ids

    def _image_set_ids(self) -> List[str]:
        sets = os.path.join(self.root, "ImageSets", "Segmentation")
        for n in (["train_aug.txt", "train.txt"] if self.split == "trn" else ["val.txt"]):
            if os.path.isfile(os.path.join(sets, n)):
                return read_lines(os.path.join(sets, n))
        if not os.path.isdir(self.mask_dir):
            raise FileNotFoundError(f"PASCAL-5i: missing folder {self.mask_dir!r} (expected VOC2012 layout) "
                                    f"and no list_dir given")
        return sorted(stem(f) for f in os.listdir(self.mask_dir) if f.endswith(".png"))

    def _derive_pairs(self, ids: List[str]):
        wanted = {c + 1 for c in self.class_ids}
        paths = [os.path.join(self.mask_dir, img_id + ".png") for img_id in ids]
        areas = mask_areas(paths, self.mask_index_dir, desc="PASCAL masks").areas
        pairs = []
        for img_id, a in zip(ids, areas):
            for v in classes_from_areas(a, wanted, self.min_pixels, self.exclude_novel_images):
                pairs.append((img_id, v - 1))
        return pairs

    def mask_value(self, key: str, class_id: int) -> Optional[int]:
        return class_id + 1


def read_class_file_dict(path: str) -> Dict[int, List[str]]:
    """BAM/HDMNet's ``sub_class_file_list_*.txt``: a Python dict literal {class 1..N: [(image path,
    mask path), ...]} (HDMNet util/dataset.py:194-197 ``eval``s it; here it is parsed as a literal,
    never executed). Returns {class value: [image id (file stem), ...]} in file order."""
    with open(path) as f:
        text = f.read()
    try:
        raw = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: not a Python dict literal of class -> [(image, mask), ...] ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict literal, got {type(raw).__name__}")
    out = {}
    for value, items in raw.items():
        if not isinstance(value, int) or not isinstance(items, list):
            raise ValueError(f"{path}: entry {value!r} is not 'int: [(image, mask), ...]'")
        try:
            out[value] = [stem(img) for img, _mask in items]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: class {value}: items must be (image, mask) pairs ({e})") from e
    return out


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
    for image_id in progress(sorted(sources), "pascal5i", quiet):
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
        save_whole(Image.fromarray(label.astype(np.uint8), mode="L"), path)
        counts[f"written_{kind}"] += 1
    return {"dir": out_dir, "written_voc": counts["written_voc"], "written_sbd": counts["written_sbd"],
            "skipped": counts["skipped"], "total": len(sources)}


@BENCHMARKS.register("pascal5i", aliases=("pascal",))  # "pascal": HSNet's name, in its episode files
class Pascal5iBenchmark(EpisodicBenchmark):
    hdmnet_area_rule = True
    patnet_as_hsnet = True
    prepare_help = "SegmentationClassAug from VOC2012 + SBD cls/*.mat"

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> Pascal5i:
        return Pascal5i(settings.root, settings.fold, split, list_dir=settings.split_dir,
                        mask_encoding=settings.mask_encoding, mask_index_dir=settings.mask_index_dir, **options)

    @classmethod
    def add_prepare_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("voc", help="VOCdevkit/VOC2012 (with SegmentationClass/)")
        parser.add_argument("sbd", help="SBD's benchmark_RELEASE/dataset (with cls/)")
        parser.add_argument("--output_dir", default=None, help="default: VOC/SegmentationClassAug")

    @classmethod
    def prepare(cls, a: argparse.Namespace) -> None:
        s = prepare_pascal5i(a.voc, a.sbd, a.output_dir, a.quiet)
        print(f"pascal5i: {s['written_voc']} masks from VOC2012 SegmentationClass + {s['written_sbd']} from SBD "
              f"written, {s['skipped']} already there ({s['total']} images) in {s['dir']}")
