"""Data for DistillFSS-style specialisation: a support set (N classes x K shots) and its augmentations.

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
from .datamodule import _QueryFolder, collate_queries
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
        image_size: model input size (None: the model's ``image_size``, set by ``SpecializeModule``).
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
        skip_bad_queries: ``predict``: skip unreadable photos (listed in ``summary.json``) instead of
            stopping at the first.
    """

    def __init__(self, support_dir: Optional[str] = None, query_dir: Optional[str] = None,
                 val_dir: Optional[str] = None, image_size: Optional[int] = None, shots: Optional[int] = None,
                 mask_encoding: str = "auto", synthetic_classes: int = 2, synthetic_fold: int = 0,
                 synthetic_queries: int = 4, synthetic_seed: int = 0, repeats: int = 8, augment: bool = True,
                 batch_size: int = 4, num_workers: int = 0, scoring_size: Union[Literal["model", "original"], int] = "model",
                 skip_bad_queries: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.skip_bad_queries = skip_bad_queries
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
            ds = SyntheticFewShot(fold=synthetic_fold, split="test", seed=synthetic_seed, image_size=image_size or 518,
                                  images_per_class=k + synthetic_queries, classes=classes)
            self.dataset, self.class_ids = ds, list(classes)
            self.support_keys = {c: ds.samples_by_class[c][:k] for c in classes}
            self.val_items = [(ds, key, c, ci) for ci, c in enumerate(classes) for key in ds.samples_by_class[c][k:]]
        self.shots = k
        self._support_set = None

    @classmethod
    def from_dataset(cls, dataset: FewShotDataset, support_keys: Dict[int, List[str]],
                     query_keys: Sequence[Tuple[str, int]] = (), image_size: int = 518, **kwargs) -> "SpecializationDataModule":
        """Any reader + explicit support keys per class id (shot counts may differ between classes)
        and ``(key, class id)`` queries (the leave-one-out cross-domain experiment, the budget protocol)."""
        dm = cls.__new__(cls)
        L.LightningDataModule.__init__(dm)
        dm.image_size = image_size
        dm.batch_size, dm.num_workers = kwargs.get("batch_size", 4), kwargs.get("num_workers", 0)
        dm.repeats, dm.augment, dm.query_dir = kwargs.get("repeats", 8), kwargs.get("augment", True), None
        dm.scoring_size = kwargs.get("scoring_size", "model")
        dm.dataset, dm.class_ids = dataset, list(support_keys)
        dm.support_keys = {c: list(v) for c, v in support_keys.items()}
        empty = [c for c, v in dm.support_keys.items() if not v]
        if empty:
            raise ValueError(f"classes {empty} have no support image")
        dm.shots = max(len(v) for v in dm.support_keys.values())
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
        return DataLoader(_QueryFolder(paths, self.image_size, getattr(self, "skip_bad_queries", False)),
                          batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_queries)


# ---------------------------------------------------------------------------------------------
# DistillFSS's protocol (seed 000; github pasqualedem/DistillFSS): supports chosen from the training
# part by a total budget, an 80/20 split where the dataset has none, every test image scored once.
def hierarchical_uniform_indices(last: int, count: int) -> List[int]:
    """Indices into a list of ``last + 1`` items: the two ends, then midpoints of the gaps, level by
    level, the first ``count`` in sorted order. Reproduces DistillFSS's
    ``hierarchical_uniform_sampling(N, M)`` (``distillfss/utils/utils.py:407-430``), with which it
    picks the supports (``kvasir.py:122``, ``nucleus.py:94``, ``pothole.py:112``, per class in
    ``isic.py:107-110``). May return fewer than ``count`` when the list is too short."""
    if count == 1:
        return [0]
    chosen = [0, last]
    while len(chosen) < count:
        new = []
        for a, b in zip(chosen[:-1], chosen[1:]):
            mid = (a + b) // 2
            if mid not in chosen:
                new.append(mid)
            if len(chosen) + len(new) >= count:
                break
        if not new:
            break
        chosen = sorted(chosen + new)
    return chosen[:count]


def budget_per_class(budget: int, class_ids: Sequence[int]) -> Dict[int, int]:
    """Split a total budget of ``budget`` support images over the classes: ``budget // N`` each,
    the remainder one more each to the first classes in id order (counts may differ by one)."""
    n = len(class_ids)
    if budget < n:
        raise ValueError(f"a support budget of {budget} image(s) cannot cover {n} classes")
    return {c: budget // n + (1 if i < budget % n else 0) for i, c in enumerate(sorted(class_ids))}


def select_support_budget(train_keys_by_class: Dict[int, Sequence[str]], budget: int) -> Dict[int, List[str]]:
    """Supports for a total budget: per class (``budget_per_class``) the hierarchical-uniform picks
    (``hierarchical_uniform_indices``) over that class's training keys **sorted by name**, so the
    choice depends on the names only, never on the order the file system lists them in (the
    reference picks over its data-frame order, which follows ``os.listdir``)."""
    out = {}
    for c, k in budget_per_class(budget, list(train_keys_by_class)).items():
        pool = sorted(set(train_keys_by_class[c]))
        idx = hierarchical_uniform_indices(len(pool) - 1, k)
        if len(pool) < k or len(set(idx)) < k:
            raise ValueError(f"class {c}: a budget of {k} support(s) but only {len(pool)} training image(s)")
        out[c] = [pool[i] for i in idx]
    return out


def split_train_test(keys: Sequence[str], test_fraction: float = 0.2, seed: int = 42,
                     published_test: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """``(train keys, test keys)``, both sorted. The dataset's own split (``published_test``) when it
    has one; else ``ceil(test_fraction * n)`` test keys drawn by ``RandomState(seed).permutation`` of
    the name-sorted keys: the draw of scikit-learn's ``train_test_split(test_size=0.2,
    random_state=42)`` that DistillFSS uses (``kvasir.py:65``, ``nucleus.py:43``), applied to the
    sorted list instead of ``os.listdir`` order so it does not depend on the file system."""
    keys = sorted(set(keys))
    if published_test is not None:
        test = set(published_test)
        unknown = sorted(test - set(keys))
        if unknown:
            raise ValueError(f"{len(unknown)} published test id(s) not in the dataset, e.g. {unknown[:3]}")
        return [k for k in keys if k not in test], [k for k in keys if k in test]
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(np.ceil(test_fraction * len(keys)))
    if not 0 < n_test < len(keys):
        raise ValueError(f"cannot split {len(keys)} image(s) {1 - test_fraction:.0%}/{test_fraction:.0%}")
    perm = np.random.RandomState(seed).permutation(len(keys))
    return sorted(keys[i] for i in perm[n_test:]), sorted(keys[i] for i in perm[:n_test])


def build_pooled_dataset(dataset: str, root: str) -> FewShotDataset:
    """A DistillFSS target dataset by name, read from ``root`` in its published layout."""
    from .isic3 import ISIC3
    from .kvasir import KvasirSEG
    from .nucleus import Nucleus
    from .pothole import Pothole

    readers = {"kvasir": KvasirSEG, "isic": ISIC3, "nucleus": Nucleus, "pothole": Pothole}
    if dataset not in readers:
        raise ValueError(f"unknown DistillFSS dataset {dataset!r}; choose one of {sorted(readers)}")
    return readers[dataset](root)


class BudgetSpecializationDataModule(SpecializationDataModule):
    """DistillFSS's protocol for ``SpecializeModule``: a support set of ``budget`` images in total
    chosen from the training part (``select_support_budget``), the test part (the dataset's own, or
    ``split_train_test``'s seeded draw) scored once per image with the specialised model (and, with
    ``eval_teacher``, the episodic teacher conditioned on all the supports).

    Args:
        dataset: ``kvasir`` | ``isic`` | ``nucleus`` | ``pothole`` (readers in ``data_modules``).
        root: the dataset folder in its published layout (see each reader / docs/protocols/distillfss.md).
        budget: total number of support images K (DistillFSS uses 5 / 10 / 25 / 50).
        test_fraction / split_seed: the drawn split, for datasets without one (80/20, seed 42).
        max_test_images: score only the first n test images (sorted by name; smoke runs), None = all.
        scoring_size: ``model`` (default: DistillFSS scores the S x S resized image and nearest-resized
            mask, ``distillfss/data/__init__.py:54-58``, ``kvasir.py:92-96``), an int or ``original``.
        image_size / repeats / augment / batch_size / num_workers / query_dir: as ``SpecializationDataModule``
            (image_size None: the model's, set by ``SpecializeModule``; the CLI sets None when a teacher
            checkpoint gives the size).
    """

    def __init__(self, dataset: str, root: str, budget: int = 5, test_fraction: float = 0.2, split_seed: int = 42,
                 max_test_images: Optional[int] = None, image_size: Optional[int] = 518, query_dir: Optional[str] = None,
                 repeats: int = 8, augment: bool = True, batch_size: int = 4, num_workers: int = 0,
                 scoring_size: Union[Literal["model", "original"], int] = "model") -> None:
        L.LightningDataModule.__init__(self)
        self.save_hyperparameters()
        ds = build_pooled_dataset(dataset, root)
        train, test = split_train_test(ds.all_keys(), test_fraction, split_seed, getattr(ds, "published_test", None))
        train_set = set(train)
        by_class = {c: [k for k in ds.samples_by_class[c] if k in train_set] for c in ds.class_ids}
        support = select_support_budget(by_class, budget)
        own_class = {k: c for c in ds.class_ids for k in ds.samples_by_class[c]}
        test = test[:max_test_images] if max_test_images else test
        self.dataset, self.class_ids, self.support_keys = ds, list(ds.class_ids), support
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.repeats, self.augment, self.query_dir = repeats, augment, query_dir
        self.scoring_size = scoring_size
        self.shots = max(len(v) for v in support.values())
        self.val_items = [(ds, k, own_class[k], self.class_ids.index(own_class[k])) for k in test]
        self.train_keys, self.test_keys = train, test
        self._support_set = None


__all__ = ["SpecializationDataModule", "BudgetSpecializationDataModule", "select_support_budget", "split_train_test",
           "budget_per_class", "hierarchical_uniform_indices", "build_pooled_dataset", "AugmentedSupportDataset", "LabelledQueryDataset", "class_index_label"]
