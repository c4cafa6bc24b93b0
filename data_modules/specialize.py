"""Data for DistillFSS-style specialisation: a support set (N classes x K shots) and its augmentations.

* ``support_set()`` -> un-augmented supports ``{"support": [N,K,3,S,S], "support_masks": [N,K,S,S]
  float 0/1, "class_names": list[str], "support_names": list[list[str]]}`` (what the episodic
  teacher conditions on).
* train batches: ``{"image": [B,3,S,S], "label": [B,S,S] int64 class-index 0..N (255 ignore),
  "class_index": [B] (the support's class, 0-based), "shot_index": [B] (its shot, for the teacher's
  leave-one-out), "name": list[str]}``. Each epoch holds every support ``repeats`` times; the first
  copy is un-augmented, the rest get random resized crop / flip / colour jitter (albumentations).
  Labels of a per-class folder only name their own class (other classes in that image read as
  background); index masks and synthetic data label every class.
* val/test batches (queries with masks): ``{"query": [B,3,S,S], "query_mask": [B,S,S] class-index,
  "class_id": [B,N] (= 0..N-1, for ``fsseg.metrics.binarize_multiclass``), "query_name"}``.
* predict batches: as ``SupportQueryFolderDataModule.predict_dataloader`` (no supports needed).

Sources: ``support_dir`` (any layout ``FolderDataset`` reads, one or several classes, any K) or,
without it, ``synthetic_classes`` novel synthetic classes (``SyntheticFewShot`` test split).
"""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import FewShotDataset, FileFewShotDataset
from .datamodule import _QueryFolder
from .episodes import collate_dicts
from .folder import FolderDataset
from .masks import IGNORE_INDEX, list_images
from .synthetic import SyntheticFewShot, novel_classes
from .transforms import PairTransform, image_to_tensor, scoring_label


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
        self.items = [(ci, k, key) for ci, c in enumerate(self.class_ids) for k, key in enumerate(support_keys[c])]
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


class SpecializationDataModule(L.LightningDataModule):
    """Support set (+ augmentations) for training a ``SpecializeModule``; labelled queries
    (``val_dir``, or held-out synthetic images) for validation/test; ``query_dir`` for predict.

    Args:
        support_dir: folder of supports (layouts of ``data_modules.FolderDataset``); None = synthetic.
        query_dir: images (folder or file) for ``fsseg predict``.
        val_dir: labelled queries (same class names as the supports; a single-class folder maps to
            the only class when N = 1).
        image_size: model input size.
        shots: K per class (first K in sorted order); None = all available (smallest class count).
        mask_encoding: ``auto`` (detected per file) | ``index`` | ``binary255`` | ``binary01`` | ``rgb`` | ``jpeg``.
        synthetic_classes: number of classes of the synthetic fallback (novel classes of ``synthetic_fold``).
        synthetic_fold: fold whose novel classes the synthetic fallback uses.
        synthetic_queries: held-out synthetic images per class (validation/test).
        synthetic_seed: seed of the synthetic fallback.
        repeats: copies of each support per epoch (1 plain + repeats-1 augmented).
        scoring_size: where val/test queries are scored, as ``EpisodicDataModule.scoring_size``
            (``model`` | an int | ``original``; docs/protocols/scoring.md).
        augment: augment the repeated supports.
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, support_dir: Optional[str] = None, query_dir: Optional[str] = None,
                 val_dir: Optional[str] = None, image_size: int = 518, shots: Optional[int] = None,
                 mask_encoding: str = "auto", synthetic_classes: int = 2, synthetic_fold: int = 0,
                 synthetic_queries: int = 4, synthetic_seed: int = 0, repeats: int = 8, augment: bool = True,
                 batch_size: int = 4, num_workers: int = 0, scoring_size: Union[Literal["model", "original"], int] = "model"
                 ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.repeats, self.augment, self.query_dir = repeats, augment, query_dir
        self.scoring_size = scoring_size
        self.val_items: List[Tuple[FewShotDataset, str, int, int]] = []
        if support_dir:
            ds: FewShotDataset = FolderDataset(support_dir, mask_encoding=mask_encoding)
            counts = {c: len(ds.samples_by_class[c]) for c in ds.class_ids}
            k = shots or min(counts.values())
            few = {ds.class_names[c]: n for c, n in counts.items() if n < k}
            if few or k < 1:
                raise ValueError(f"support folder {support_dir!r}: classes with fewer than K={k} images: {few}")
            self.dataset, self.class_ids = ds, list(ds.class_ids)
            self.support_keys = {c: ds.samples_by_class[c][:k] for c in self.class_ids}
            if val_dir:
                self.val_items = self._folder_queries(val_dir, mask_encoding)
        else:
            k = shots or 1
            classes = novel_classes(synthetic_fold)[:synthetic_classes]
            ds = SyntheticFewShot(fold=synthetic_fold, split="test", seed=synthetic_seed, image_size=image_size,
                                  images_per_class=k + synthetic_queries, classes=classes)
            self.dataset, self.class_ids = ds, list(classes)
            self.support_keys = {c: ds.samples_by_class[c][:k] for c in classes}
            self.val_items = [(ds, key, c, ci) for ci, c in enumerate(classes) for key in ds.samples_by_class[c][k:]]
        self.shots = k
        self._support_set = None

    @classmethod
    def from_dataset(cls, dataset: FewShotDataset, support_keys: Dict[int, List[str]],
                     query_keys: Sequence[Tuple[str, int]] = (), image_size: int = 518, **kwargs) -> "SpecializationDataModule":
        """Any reader + explicit support keys per class id (equal K) and ``(key, class id)`` queries
        (used by the leave-one-out cross-domain experiment)."""
        dm = cls.__new__(cls)
        L.LightningDataModule.__init__(dm)
        dm.image_size = image_size
        dm.batch_size, dm.num_workers = kwargs.get("batch_size", 4), kwargs.get("num_workers", 0)
        dm.repeats, dm.augment, dm.query_dir = kwargs.get("repeats", 8), kwargs.get("augment", True), None
        dm.scoring_size = kwargs.get("scoring_size", "model")
        dm.dataset, dm.class_ids = dataset, list(support_keys)
        dm.support_keys = {c: list(v) for c, v in support_keys.items()}
        ks = {len(v) for v in dm.support_keys.values()}
        if len(ks) != 1:
            raise ValueError(f"every class needs the same number of shots, got {sorted(ks)}")
        dm.shots = ks.pop()
        dm.val_items = [(dataset, key, c, dm.class_ids.index(c)) for key, c in query_keys]
        dm._support_set = None
        return dm

    def _folder_queries(self, val_dir: str, mask_encoding: str):
        vd = FolderDataset(val_dir, mask_encoding=mask_encoding)
        names = [self.dataset.class_names[c] for c in self.class_ids]
        items = []
        for c in vd.class_ids:
            name = vd.class_names[c]
            if name in names:
                ci = names.index(name)
            elif len(names) == 1 and len(vd.class_ids) == 1:
                ci = 0
            else:
                raise ValueError(f"val folder {val_dir!r}: class {name!r} is not one of the support classes {names}")
            items += [(vd, key, c, ci) for key in vd.samples_by_class[c]]
        return items

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
        self._support_set = {"support": torch.stack(imgs), "support_masks": torch.stack(masks),
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
        paths = [self.query_dir] if os.path.isfile(self.query_dir) else list_images(self.query_dir, what="query folder")
        return DataLoader(_QueryFolder(paths, self.image_size), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=collate_dicts)


__all__ = ["SpecializationDataModule", "AugmentedSupportDataset", "LabelledQueryDataset", "class_index_label"]
