"""Supports from a folder and query photos, for ``fsseg predict``."""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from ..image_io import BadSampleError, exif_orientation, list_images
from ..readers.folder import FolderDataset
from ..transforms import PairTransform, image_to_tensor
from .queries import QueryImages, collate_queries


class SupportQueryFolderDataModule(L.LightningDataModule):
    """Supports from a folder + query images of any size, for ``fsseg predict``.

    Support layouts: ``support_dir/images`` + ``support_dir/masks``; ``support_dir/image`` +
    ``support_dir/label`` (or ``support_dir/support/{image,label}``, the fss1000-eiffel layout);
    per-class ``support_dir/<class>/{images,masks}`` for multi-class; class-index masks (COCO, VOC)
    with ``classes``. ``query_dir`` may be a folder (recursive) or a single image file.

    ``support_batch()`` -> ``{"support": [1,N,K,3,S,S], "support_masks": [1,N,K,S,S] float 0/1,
    "class_names": list[str] (N), "support_names": list[list[str]] (N x K)}``; K = ``shots`` or the
    smallest per-class count (first K images in sorted order); ``support_set_description()`` says
    which files and K were used. ``predict_dataloader`` batches: ``{"query": [B,3,S,S],
    "query_original_size": [B,2] (H,W), "query_path": list[str], "index": [B], "exif_orientation",
    "skipped_queries"}``. EXIF orientation is applied to images and masks alike.

    Args:
        support_dir: folder of labelled examples (layouts above).
        query_dir: folder of photos to segment (recursive), or one image file.
        image_size: loading size of supports and queries (None: the model's ``image_size``, set by
            ``fsseg predict`` from the checkpoint).
        mask_encoding: ``auto`` (detected per file) | ``index`` | ``binary255`` | ``binary01`` | ``rgb`` | ``jpeg``.
        batch_size: queries per batch.
        num_workers: DataLoader worker processes.
        shots: K supports per class (None: the smallest class's count, the same K for every class).
        classes: support masks holding class indices (COCO, VOC): the classes to segment, by name
            (``classes.txt`` in the support folder, line k = value k) or mask value, e.g.
            ``dog,airplane`` or ``18,5``.
        skip_bad_queries: skip unreadable query images (counted, listed in ``summary.json``) instead
            of stopping at the first.
        class_name: the name of the class of a single-folder support set (``images/`` + ``masks/``;
            default: the folder's name).
    """

    def __init__(self, support_dir: str, query_dir: str, image_size: Optional[int] = None, mask_encoding: str = "auto",
                 batch_size: int = 1, num_workers: int = 0, shots: Optional[int] = None,
                 classes: Optional[Union[str, List[str]]] = None, skip_bad_queries: bool = False,
                 class_name: Optional[str] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.support_dir, self.query_dir = support_dir, query_dir
        self.image_size, self.mask_encoding = image_size, mask_encoding
        self.batch_size, self.num_workers, self.shots = batch_size, num_workers, shots
        self.skip_bad_queries = skip_bad_queries
        self.supports = FolderDataset(support_dir, mask_encoding=mask_encoding, classes=classes, class_name=class_name)
        # every file left out, with its reason (PredictionWriter lists them in summary.json)
        self.skipped_files = [{**s, "role": "support"} for s in self.supports.skipped_files]
        if os.path.isfile(query_dir):
            self.query_paths = [query_dir]
        else:
            found: list = []
            self.query_paths = list_images(query_dir, recursive=True, what="query folder", skipped=found)
            self.skipped_files += [{**s, "role": "query"} for s in found]
        self._support_batch = None

    def _size(self) -> int:
        if not self.image_size:
            raise ValueError("SupportQueryFolderDataModule: image_size not set (fsseg predict sets it from the "
                             "checkpoint; give --data.image_size otherwise)")
        return int(self.image_size)

    def support_batch(self) -> Dict:
        if self._support_batch is not None:
            return self._support_batch
        ds = self.supports
        counts = {c: len(ds.samples_by_class[c]) for c in ds.class_ids}
        k = self.shots or min(counts.values())
        few = {ds.class_names[c]: n for c, n in counts.items() if n < k}
        if few or k < 1:
            raise ValueError(f"support folder {self.support_dir!r}: classes with fewer than K={k} "
                             f"labelled images: {few}")
        tf = PairTransform(self._size(), train=False)
        imgs, masks, names, turned = [], [], [], []
        for c in ds.class_ids:
            wi, wm, wn = [], [], []
            for key in ds.samples_by_class[c][:k]:
                img, (m,) = ds.load(key, [c])
                if not (m == 1).any():
                    raise BadSampleError(ds.records[key][1], f"empty support mask: no foreground pixels for "
                                         f"class {ds.class_names[c]!r} (image {ds.describe(key)})")
                img, (m,) = tf(img, [m])
                if not (m == 1).any():
                    warnings.warn(f"support mask {ds.records[key][1]} is empty after resizing", stacklevel=2)
                wi.append(image_to_tensor(img))
                wm.append(torch.from_numpy((m == 1).astype(np.float32)))
                wn.append(ds.describe(key))
                if exif_orientation(ds.records[key][0]) != 1:
                    turned.append(ds.describe(key))
            imgs.append(torch.stack(wi))
            masks.append(torch.stack(wm))
            names.append(wn)
        self._support_batch = {
            "support": torch.stack(imgs)[None],
            "support_masks": torch.stack(masks)[None],
            "class_names": [ds.class_names[c] for c in ds.class_ids],
            "support_names": names,
            "available": {ds.class_names[c]: n for c, n in counts.items()},
            "exif_turned": turned,
        }
        return self._support_batch

    def support_set_description(self) -> Dict:
        """The support set actually used: per class K, the files, and how many were available."""
        sb = self.support_batch()
        return {"support_dir": str(self.support_dir),
                "classes": {name: {"k": len(files), "available": sb["available"][name], "files": list(files)}
                            for name, files in zip(sb["class_names"], sb["support_names"])},
                "exif_orientation_applied": list(sb["exif_turned"])}

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(QueryImages(self.query_paths, self._size(), self.skip_bad_queries),
                          batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_queries)
