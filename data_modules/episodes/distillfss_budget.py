"""DistillFSS's support-budget rules (github pasqualedem/DistillFSS, seed 000): supports chosen from
the training part by a total budget K, an 80/20 split where the dataset has none, every test image
scored once (``datamodules.budget_specialization.BudgetSpecializationDataModule`` applies them)."""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


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


__all__ = ["BUDGET_RULES", "hierarchical_uniform_indices", "per_class_budget", "select_support_budget",
           "split_train_test"]
