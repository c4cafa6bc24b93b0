"""A support set (N classes x K shots) of one reader, its augmentations, labelled queries: the data of
``SpecializeModule`` (DistillFSS-style specialisation), whichever way the supports were chosen.

* ``support_set()`` -> un-augmented supports ``{"support": [N,K,3,S,S], "support_masks": [N,K,S,S]
  float 0/1, "class_names": list[str], "support_names": list[list[str]]}`` (what the episodic
  teacher conditions on); when the classes hold different shot counts K_c (a total budget),
  ``support`` / ``support_masks`` are per-class lists of ``[K_c,3,S,S]`` / ``[K_c,S,S]``.
* train batches: ``{"image": [B,3,S,S], "label": [B,S,S] int64 class-index 0..N (255 ignore),
  "class_index": [B] (the support's class, 0-based), "shot_index": [B] (its shot, for the teacher's
  leave-one-out), "name": list[str]}``. Each epoch holds every support ``repeats`` times; the first
  copy is un-augmented, the rest get random resized crop / flip / colour jitter (albumentations).
  Labels of a per-class folder only name their own class (other classes in that image read as
  background); index masks and synthetic data label every class.
* val/test batches (queries with masks): ``{"query": [B,3,S,S], "query_mask": [B,S,S] class-index,
  "class_id": [B,N] (= 0..N-1, for ``fsseg.metrics.binarize_multiclass``), "query_name"}``.
* predict batches: as ``SupportQueryFolderDataModule.predict_dataloader`` (no supports needed).

Built from a folder or synthetic classes (``SpecializationDataModule``), DistillFSS's budget
(``BudgetSpecializationDataModule``), or any reader and explicit keys (``SupportSetDataModule``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..episodes.dataset import collate_dicts
from ..image_io import IGNORE_INDEX, list_images
from ..readers.base import FewShotDataset, FileFewShotDataset
from ..transforms import PairTransform, image_to_tensor, scoring_label
from .queries import QueryImages, collate_queries


def class_index_label(ds: FewShotDataset, key: str, own_class: int, class_ids: Sequence[int],
                      transform: PairTransform, seed: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image ``[3,S,S]`` and class-index label ``[S,S]`` (0..N, 255) of ``key`` over ``class_ids``."""
    labels_all = not (isinstance(ds, FileFewShotDataset) and ds.mask_value(key, own_class) is None)
    ids = list(class_ids) if labels_all else [own_class]
    img, masks = ds.load(key, ids)
    own_pos = ids.index(own_class)
    # the own class first so the transform keeps its foreground in the crop
    order = [own_pos] + [i for i in range(len(ids)) if i != own_pos]
    img, out = transform(img, [masks[i] for i in order], seed=seed)
    masks = [None] * len(ids)
    for j, i in enumerate(order):
        masks[i] = out[j]
    label = np.zeros(masks[0].shape, dtype=np.int64)
    ignore = np.zeros(masks[0].shape, dtype=bool)
    for i, m in enumerate(masks):
        c = list(class_ids).index(ids[i])
        label[m == 1] = c + 1
        ignore |= m == IGNORE_INDEX
    label[ignore & (label == 0)] = IGNORE_INDEX
    return image_to_tensor(img), torch.from_numpy(label)


class AugmentedSupportDataset(Dataset):
    def __init__(self, ds: FewShotDataset, class_ids: Sequence[int], support_keys: Dict[int, List[str]],
                 image_size: int, repeats: int = 8, augment: bool = True) -> None:
        self.ds, self.class_ids = ds, list(class_ids)
        items = [(ci, k, key) for ci, c in enumerate(self.class_ids) for k, key in enumerate(support_keys[c])]
        # an image that supports several classes (WeedMap: the same K images for crop and weed) is
        # labelled with all of them by class_index_label, so it is trained on once, not once per class
        labels_all = {key: not (isinstance(ds, FileFewShotDataset) and ds.mask_value(key, self.class_ids[ci]) is None)
                      for ci, _, key in items}
        seen: set = set()
        self.items = []
        for ci, k, key in items:
            if labels_all[key] and key in seen:
                continue
            seen.add(key)
            self.items.append((ci, k, key))
        self.repeats = max(1, repeats)
        self.plain = PairTransform(image_size, train=False)
        self.aug = PairTransform(image_size, train=True) if augment else self.plain

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, index: int):
        ci, k, key = self.items[index % len(self.items)]
        first = index < len(self.items)
        tf = self.plain if first else self.aug
        seed = None if first else int(np.random.randint(2**31))
        img, label = class_index_label(self.ds, key, self.class_ids[ci], self.class_ids, tf, seed)
        return {"image": img, "label": label, "class_index": torch.tensor(ci, dtype=torch.int64),
                "shot_index": torch.tensor(k, dtype=torch.int64), "name": self.ds.describe(key)}


class LabelledQueryDataset(Dataset):
    """Queries with class-index masks; ``items`` = (dataset, key, own class id in ``ds``, class index)."""

    def __init__(self, items: List[Tuple[FewShotDataset, str, int, int]], num_classes: int, image_size: int,
                 scoring_size: Union[str, int] = "model") -> None:
        self.items, self.num_classes = items, num_classes
        self.tf = PairTransform(image_size, train=False)
        self.scoring_size = scoring_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        ds, key, own, ci = self.items[index]
        item = {"query_name": ds.describe(key), "class_id": torch.arange(self.num_classes)}
        if isinstance(ds, FileFewShotDataset) and ds.mask_value(key, own) is None:
            img, (m,) = ds.load(key, [own])
            if self.scoring_size != "model":  # label before any resize (docs/protocols/scoring.md)
                item["query_label_orig"] = scoring_label(_own_class_label(m, ci), self.scoring_size)
            img, (m,) = self.tf(img, [m])
            item["query"], item["query_mask"] = image_to_tensor(img), torch.from_numpy(_own_class_label(m, ci))
        else:
            ids = getattr(self, "class_ids", None) or [own]
            item["query"], item["query_mask"] = class_index_label(ds, key, own, ids, self.tf)
            if self.scoring_size != "model":
                _, label = class_index_label(ds, key, own, ids, _untransformed)
                item["query_label_orig"] = scoring_label(label.numpy(), self.scoring_size)
        return item


def _own_class_label(mask: np.ndarray, class_index: int) -> np.ndarray:
    return np.where(mask == 1, class_index + 1, np.where(mask == IGNORE_INDEX, IGNORE_INDEX, 0)).astype(np.int64)


def _untransformed(image: np.ndarray, masks: Sequence[np.ndarray], seed: Optional[int] = None):
    return image, list(masks)


class SupportSetDataModule(L.LightningDataModule):
    """Supports ``support_keys`` (class id -> keys of ``dataset``; shot counts may differ between
    classes) for training a ``SpecializeModule``; ``queries`` (``(key, class id)`` pairs, scored at
    val/test) of ``dataset``, or of ``query_reader`` whose classes map to the support classes by name
    (or to the only class when both have one); ``query_dir`` (a folder or an image file) for predict.

    Args:
        dataset: the reader the supports come from.
        support_keys: class id -> the keys of its supports.
        queries: labelled queries, ``(key, class id)``.
        query_reader: the reader of ``queries`` when it is not ``dataset`` (a val folder).
        image_size: model input size (None: the model's ``image_size``, set by ``SpecializeModule``).
        repeats: copies of each support per epoch (1 plain + repeats-1 augmented).
        augment: augment the repeated supports.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        scoring_size: where val/test queries are scored, as ``EpisodicDataModule.scoring_size``
            (``model`` | an int | ``original``; docs/protocols/scoring.md).
        query_dir: images (folder or file) for ``fsseg predict``.
        skip_bad_queries: ``predict``: skip unreadable photos (listed in ``summary.json``) instead of
            stopping at the first.
    """

    def __init__(self, dataset: FewShotDataset, support_keys: Dict[int, List[str]],
                 queries: Sequence[Tuple[str, int]] = (), query_reader: Optional[FewShotDataset] = None,
                 image_size: Optional[int] = 518, repeats: int = 8, augment: bool = True, batch_size: int = 4,
                 num_workers: int = 0, scoring_size: Union[Literal["model", "original"], int] = "model",
                 query_dir: Optional[str] = None, skip_bad_queries: bool = False) -> None:
        super().__init__()
        self.dataset, self.class_ids = dataset, list(support_keys)
        self.support_keys = {c: list(v) for c, v in support_keys.items()}
        empty = [c for c, v in self.support_keys.items() if not v]
        if empty:
            raise ValueError(f"classes {empty} have no support image")
        self.shots = max(len(v) for v in self.support_keys.values())
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.repeats, self.augment, self.scoring_size = repeats, augment, scoring_size
        self.query_dir, self.skip_bad_queries = query_dir, skip_bad_queries
        reader = dataset if query_reader is None else query_reader
        self.val_items: List[Tuple[FewShotDataset, str, int, int]] = [
            (reader, key, c, self._class_index(reader, c)) for key, c in queries]
        self._support_set = None

    def _class_index(self, reader: FewShotDataset, class_id: int) -> int:
        if reader is self.dataset:
            return self.class_ids.index(class_id)
        names, name = self.class_names, reader.class_names[class_id]
        if name in names:
            return names.index(name)
        if len(names) == 1 and len(reader.class_ids) == 1:
            return 0
        raise ValueError(f"{reader!r}: class {name!r} is not one of the support classes {names}")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def class_names(self) -> List[str]:
        return [str(self.dataset.class_names[c]) for c in self.class_ids]

    def support_set(self) -> Dict:
        if self._support_set is not None:
            return self._support_set
        tf = PairTransform(self.image_size, train=False)
        imgs, masks, names = [], [], []
        for c in self.class_ids:
            wi, wm, wn = [], [], []
            for key in self.support_keys[c]:
                img, (m,) = self.dataset.load(key, [c])
                img, (m,) = tf(img, [m])
                wi.append(image_to_tensor(img))
                wm.append(torch.from_numpy((m == 1).astype(np.float32)))
                wn.append(self.dataset.describe(key))
            imgs.append(torch.stack(wi))
            masks.append(torch.stack(wm))
            names.append(wn)
        if len({len(x) for x in imgs}) == 1:  # equal shot counts: the stacked [N,K,...] form
            imgs, masks = torch.stack(imgs), torch.stack(masks)
        self._support_set = {"support": imgs, "support_masks": masks,
                             "class_names": self.class_names, "support_names": names}
        return self._support_set

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_dicts)

    def train_dataloader(self) -> DataLoader:
        ds = AugmentedSupportDataset(self.dataset, self.class_ids, self.support_keys, self.image_size,
                                     self.repeats, self.augment)
        return self._loader(ds, True)

    def _query_loader(self) -> DataLoader:
        ds = LabelledQueryDataset(self.val_items, self.num_classes, self.image_size, self.scoring_size)
        ds.class_ids = self.class_ids
        return self._loader(ds, False)

    def val_dataloader(self):
        return self._query_loader() if self.val_items else []

    def test_dataloader(self):
        return self._query_loader()

    def predict_dataloader(self) -> DataLoader:
        if not self.query_dir:
            raise ValueError("predict needs data.query_dir (a folder or an image file)")
        found: list = []
        paths = ([self.query_dir] if os.path.isfile(self.query_dir)
                 else list_images(self.query_dir, what="query folder", skipped=found))
        self.skipped_files = [{**s, "role": "query"} for s in found]  # listed in summary.json
        return DataLoader(QueryImages(paths, self.image_size, self.skip_bad_queries),
                          batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_queries)
