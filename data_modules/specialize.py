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

import inspect
import os
import warnings
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

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
    picks the supports (``kvasir.py:122``, ``nucleus.py:94``, ``pothole.py:112``, ``weedmap.py:79``,
    ``lung.py:112``, per class in ``isic.py:107-110`` and ``industrial.py:116-123``). May return
    fewer than ``count`` when the list is too short, none for ``count`` 0."""
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


# How a reader's DistillFSS counterpart spends the budget K (``PooledDataset.budget_rule``):
#   images                     K images from the whole training list (kvasir, nucleus, pothole, weedmap, lung)
#   per_class                  K // N per class, N foreground classes (industrial.py:116)
#   per_class_with_background  K // (N + 1) per class: its num_classes counts the background (isic.py:40-41, 106)
BUDGET_RULES = ("images", "per_class", "per_class_with_background")


def per_class_budget(budget: int, num_classes: int, rule: str) -> int:
    """Supports per class under ``rule`` (see ``BUDGET_RULES``); a budget that gives 0 per class is
    refused (the reference would sample none and fail on an empty support frame)."""
    if rule not in BUDGET_RULES:
        raise ValueError(f"unknown budget rule {rule!r}; one of {BUDGET_RULES}")
    if budget < 1:
        raise ValueError(f"--data.budget must be at least 1, got {budget}")
    if rule == "images":
        return budget
    divisor = num_classes + 1 if rule == "per_class_with_background" else num_classes
    if budget < divisor:
        counted = f"{num_classes} classes + background" if rule == "per_class_with_background" else f"{num_classes} classes"
        raise ValueError(f"--data.budget {budget} gives {budget} // {divisor} ({counted}) = 0 supports per class, "
                         f"as DistillFSS divides it; use --data.budget {divisor} or more")
    return budget // divisor


def _pick(pool: Sequence[str], k: int, what: str) -> List[str]:
    """The reference's picks; where the pool is shorter than ``k`` they are all of it (the midpoints
    run out), as ``x.iloc[hierarchical_uniform_sampling(len(x) - 1, k)]`` gives (``isic.py:108``,
    ``industrial.py:121``), said in a warning. One image asked twice (``[0, 0]``) is used once."""
    if not pool:
        raise ValueError(f"{what}: no training image to pick supports from")
    idx = list(dict.fromkeys(hierarchical_uniform_indices(len(pool) - 1, k)))
    if len(idx) < k:
        warnings.warn(f"{what}: a budget of {k} support(s) but only {len(pool)} training image(s); using "
                      f"{len(idx)}, as DistillFSS does", stacklevel=3)
    return [pool[i] for i in idx]


def select_support_budget(train_keys_by_class: Dict[int, Sequence[str]], budget: int, rule: str = "images",
                          order: Optional[Sequence[str]] = None, budget_classes: Optional[int] = None
                          ) -> Dict[int, List[str]]:
    """Supports for DistillFSS's budget K: the hierarchical-uniform picks
    (``hierarchical_uniform_indices``) over the training keys, per class (``per_class*`` rules, K
    divided as ``per_class_budget``) or over all of them (``images``: every class gets the same K
    images, each labelled with all its classes). The keys are taken in ``order`` (the reference's
    frame order, where it does not depend on the file system: Industrial's ``data.json``) or else
    **sorted by name**, so the choice never depends on the order the file
    system lists them in (the reference picks over its data-frame order, which follows ``os.listdir``).
    ``budget_classes``: the class count K is divided by, when not ``len(train_keys_by_class)``."""
    rank = {k: i for i, k in enumerate(order)} if order is not None else None

    def ordered(keys):
        keys = set(keys)
        return sorted(keys, key=rank.__getitem__) if rank is not None else sorted(keys)

    classes = list(train_keys_by_class)
    k = per_class_budget(budget, budget_classes or len(classes), rule)
    if rule == "images":
        chosen = _pick(ordered(x for c in classes for x in train_keys_by_class[c]), k, "training set")
        return {c: list(chosen) for c in classes}
    return {c: _pick(ordered(train_keys_by_class[c]), k, f"class {c}") for c in classes}


def split_train_test(keys: Sequence[str], test_fraction: float = 0.2, seed: int = 42,
                     published_test: Optional[Sequence[str]] = None,
                     order: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """``(train keys, test keys)``, both sorted. The dataset's own split (``published_test``) when it
    has one; else ``ceil(test_fraction * n)`` test keys drawn by ``RandomState(seed).permutation``:
    the draw of scikit-learn's ``train_test_split(test_size=0.2, random_state=42)`` that DistillFSS
    uses (``kvasir.py:65``, ``nucleus.py:43``, ``industrial.py:71-73``), applied to ``order`` (the
    reference's frame order where it is fixed by a file, Industrial's ``data.json``) or else to the
    name-sorted keys, so it does not depend on the file system."""
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
    if order is not None:
        if sorted(order) != keys:
            raise ValueError("split order must list every key exactly once")
        keys = list(order)
    perm = np.random.RandomState(seed).permutation(len(keys))
    return sorted(keys[i] for i in perm[n_test:]), sorted(keys[i] for i in perm[:n_test])


def pooled_readers() -> Dict[str, type]:
    """DistillFSS's seven target datasets (``distillfss/data/__init__.py:25-40``) by ``--data.dataset``."""
    from .industrial import Industrial
    from .isic3 import ISIC3
    from .kvasir import KvasirSEG
    from .lung import LungCancer
    from .nucleus import Nucleus
    from .pothole import Pothole
    from .weedmap import WeedMap

    return {"kvasir": KvasirSEG, "isic": ISIC3, "nucleus": Nucleus, "pothole": Pothole, "weedmap": WeedMap,
            "lung": LungCancer, "industrial": Industrial}


def build_pooled_dataset(dataset: str, root: str, options: Optional[Dict[str, Any]] = None) -> FewShotDataset:
    """A DistillFSS target dataset by name, read from ``root`` in its published layout; ``options``
    are the reader's own arguments (WeedMap's fields, Industrial's fold)."""
    readers = pooled_readers()
    if dataset not in readers:
        raise ValueError(f"unknown DistillFSS dataset {dataset!r}; choose one of {sorted(readers)}")
    params = list(inspect.signature(readers[dataset].__init__).parameters)[2:]
    unknown = sorted(set(options or {}) - set(params))
    if unknown:
        raise ValueError(f"{', '.join('--data.' + u for u in unknown)}: not an option of {dataset!r} "
                         f"(it takes {params or 'none'})")
    return readers[dataset](root, **(options or {}))


# the readers' own options, as BudgetSpecializationDataModule arguments, with their defaults
READER_OPTIONS = {"industrial_fold": ("fold", None), "train_field": ("train_field", "000"),
                  "test_field": ("test_field", "003"), "remove_black_images": ("remove_black_images", False)}


class BudgetSpecializationDataModule(SpecializationDataModule):
    """DistillFSS's protocol for ``SpecializeModule``: a support set chosen from the training part by
    DistillFSS's budget K (``select_support_budget`` with the dataset's rule), the test part (the
    dataset's own, or ``split_train_test``'s seeded draw) scored once per image with the specialised
    model (and, with ``eval_teacher``, the episodic teacher conditioned on all the supports).

    Args:
        dataset: ``kvasir`` | ``isic`` | ``nucleus`` | ``pothole`` | ``weedmap`` | ``lung`` | ``industrial``
            (readers in ``data_modules``).
        root: the dataset folder in its published layout (see each reader / docs/protocols/distillfss.md).
        budget: DistillFSS's K (its ``prompt_images``): K images in all for kvasir / nucleus / pothole /
            weedmap / lung, ``K // 4`` per class for isic (its class count includes the background),
            ``K // N`` per class for industrial's N classes.
        industrial_fold: industrial only: the fold (0-3) whose classes are kept, as the reference's runs
            do (``parameters/distill/Industrial.yaml:16``); None = all classes. (Not ``fold``: the CLI's
            default data module has a ``fold`` of its own, which would be carried over.)
        train_field / test_field: weedmap only: the field folders under ``root`` it trains on and
            tests on (the reference's ``000`` / ``003``, ``parameters/distill/WeedMap.yaml:14-15``).
        remove_black_images: weedmap only: drop the training tiles with more than 10 black pixels
            (``weedmap.py:54-65``; off in the reference's runs).
        test_fraction / split_seed: the drawn split, for datasets without one (80/20, seed 42).
        max_test_images: score only the first n test images (sorted by name; smoke runs), None = all.
        scoring_size: ``model`` (default: DistillFSS scores the S x S resized image and nearest-resized
            mask, ``distillfss/data/__init__.py:54-58``, ``kvasir.py:92-96``), an int or ``original``.
        image_size / repeats / augment / batch_size / num_workers / query_dir: as ``SpecializationDataModule``
            (image_size None: the model's, set by ``SpecializeModule``; the CLI sets None when a teacher
            checkpoint gives the size).
    """

    def __init__(self, dataset: str, root: str, budget: int = 5, industrial_fold: Optional[int] = None,
                 train_field: str = "000", test_field: str = "003", remove_black_images: bool = False,
                 test_fraction: float = 0.2, split_seed: int = 42,
                 max_test_images: Optional[int] = None, image_size: Optional[int] = 518, query_dir: Optional[str] = None,
                 repeats: int = 8, augment: bool = True, batch_size: int = 4, num_workers: int = 0,
                 scoring_size: Union[Literal["model", "original"], int] = "model") -> None:
        L.LightningDataModule.__init__(self)
        self.save_hyperparameters()
        given = {"industrial_fold": industrial_fold, "train_field": train_field, "test_field": test_field,
                 "remove_black_images": remove_black_images}
        reader = pooled_readers().get(dataset)
        options = {}
        for arg, value in given.items():
            option, default = READER_OPTIONS[arg]
            if value != default and reader is not None:
                if option not in inspect.signature(reader.__init__).parameters:
                    raise ValueError(f"--data.{arg} does not apply to {dataset!r}")
                options[option] = value
        ds = build_pooled_dataset(dataset, root, options)
        order = getattr(ds, "reference_order", None)
        # split over every image, then keep the reader's (Industrial's fold filters after its split,
        # industrial.py:66-78)
        universe = getattr(ds, "split_keys", None) or ds.all_keys()
        train, test = split_train_test(universe, test_fraction, split_seed, getattr(ds, "published_test", None),
                                       order=order)
        kept = set(ds.all_keys())
        train, test = [k for k in train if k in kept], [k for k in test if k in kept]
        train_set = set(train)
        by_class = {c: [k for k in ds.samples_by_class[c] if k in train_set] for c in ds.class_ids}
        support = ds.select_supports(by_class, budget) if hasattr(ds, "select_supports") else \
            select_support_budget(by_class, budget, getattr(ds, "budget_rule", "images"), order,
                                  getattr(ds, "budget_classes", None))
        own_class = {k: c for c in ds.class_ids for k in ds.samples_by_class[c]}
        test = test[:max_test_images] if max_test_images else test
        self.dataset_name, self.budget = dataset, budget
        self.dataset, self.class_ids, self.support_keys = ds, list(ds.class_ids), support
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.repeats, self.augment, self.query_dir = repeats, augment, query_dir
        self.scoring_size = scoring_size
        self.shots = max(len(v) for v in support.values())
        self.val_items = [(ds, k, own_class[k], self.class_ids.index(own_class[k])) for k in test]
        self.train_keys, self.test_keys = train, test
        self._support_set = None

    def selection_json(self) -> Dict[str, Any]:
        """The selected supports per class and the train / test ids (``fsseg episodes``)."""
        names = self.class_names
        return {"benchmark": self.dataset_name, "protocol": "distillfss-budget", "budget": self.budget,
                "budget_rule": getattr(self.dataset, "budget_rule", "images"), "class_names": names,
                "supports": {names[i]: list(self.support_keys[c]) for i, c in enumerate(self.class_ids)},
                "train": list(self.train_keys), "test": list(self.test_keys)}


__all__ = ["SpecializationDataModule", "BudgetSpecializationDataModule", "select_support_budget", "split_train_test",
           "per_class_budget", "BUDGET_RULES", "READER_OPTIONS", "hierarchical_uniform_indices", "build_pooled_dataset", "pooled_readers",
           "AugmentedSupportDataset", "LabelledQueryDataset", "class_index_label"]
