"""Episodes: what one is, which classes can make one, and fsseg's own random draws.

An ``Episode`` is (query key, supports per way, class id per way). Way 0's class is the query's
class; for N-way episodes the other N-1 classes are distinct and may or may not be in the query.
A class is eligible only if it has at least K+1 samples (the query plus K different supports).

* Training: ``sample_episode`` draws a random episode, seeded by ``(seed, draw id)`` only
  (``dataset.EpisodeDataset``).
* Val/test: ``fixed_episode_list`` materialises the list once from ``np.random.default_rng(seed)``
  (seed 0 by default). It never touches worker or process RNG, so the list is the same with any
  number of workers or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..readers.base import FewShotDataset


@dataclass(frozen=True)
class Episode:
    query: str
    supports: Tuple[Tuple[str, ...], ...]  # [n_way][shots] sample keys
    class_ids: Tuple[int, ...]  # [n_way]
    seed_index: int = 0  # index into the protocol's evaluation seed list (``EpisodicDataModule.eval_seeds``)


def eligible_classes(dataset: FewShotDataset, shots: int, n_way: int = 1) -> List[int]:
    """Classes with >= shots+1 samples; clear error when fewer than n_way remain."""
    ok = [c for c in dataset.class_ids if dataset.num_samples(c) >= shots + 1]
    if len(ok) < n_way:
        counts = {dataset.class_names.get(c, str(c)): dataset.num_samples(c) for c in dataset.class_ids}
        few = {k: v for k, v in counts.items() if v < shots + 1}
        raise ValueError(
            f"{dataset!r}: {len(ok)} class(es) have at least K+1={shots + 1} images, need {n_way} for "
            f"{n_way}-way {shots}-shot episodes. Classes with too few images: "
            f"{dict(list(few.items())[:10])}"
        )
    return ok


def _draw_supports(dataset, rng: np.random.Generator, class_id: int, shots: int, exclude: str,
                   banned: frozenset = frozenset()) -> Tuple[str, ...]:
    pool = [k for k in dataset.samples_by_class[class_id] if k != exclude and k not in banned]
    if len(pool) < shots:
        raise ValueError(f"class {dataset.class_names.get(class_id, class_id)!r} has {len(pool)} usable "
                         f"support images besides the query, need K={shots}")
    idx = rng.choice(len(pool), size=shots, replace=False)
    return tuple(pool[int(i)] for i in idx)


def sample_episode(dataset: FewShotDataset, rng: np.random.Generator, shots: int, n_way: int = 1,
                   eligible: Optional[Sequence[int]] = None, first_class: Optional[int] = None,
                   query: Optional[str] = None, banned: frozenset = frozenset()) -> Episode:
    eligible = list(eligible if eligible is not None else eligible_classes(dataset, shots, n_way))
    if first_class is None:
        first_class = int(eligible[int(rng.integers(len(eligible)))])
    others = [c for c in eligible if c != first_class]
    extra = [int(others[int(i)]) for i in rng.choice(len(others), size=n_way - 1, replace=False)] if n_way > 1 else []
    classes = (int(first_class), *extra)
    if query is None:
        pool = [k for k in dataset.samples_by_class[first_class] if k not in banned]
        query = pool[int(rng.integers(len(pool)))]
    supports = tuple(_draw_supports(dataset, rng, c, shots, query, banned) for c in classes)
    return Episode(query, supports, classes)


def fixed_episode_list(dataset: FewShotDataset, shots: int, n_way: int = 1, num_episodes: Optional[int] = 1000,
                       episodes_per_class: Optional[int] = None, seed: int = 0) -> List[Episode]:
    """The fixed val/test list.

    * ``episodes_per_class=E``: E episodes per eligible class (queries cycle through a permutation
      of the class's images).
    * ``num_episodes=None``: every (image, class) pair exactly once as query (FSS-1000 protocol).
    * ``num_episodes=M`` (default 1000, PASCAL/COCO): the (image, class) pairs are permuted once and
      episode i uses pair ``i % len(pairs)`` as query, so queries repeat only after all were used.
    Supports are drawn at random (without the query) from the same generator.
    """
    rng = np.random.default_rng(seed)
    eligible = eligible_classes(dataset, shots, n_way)
    queries: List[Tuple[str, int]] = []
    if episodes_per_class is not None:
        for c in eligible:
            keys = dataset.samples_by_class[c]
            perm = rng.permutation(len(keys))
            queries += [(keys[int(perm[i % len(keys)])], c) for i in range(episodes_per_class)]
    else:
        pairs = [(k, c) for c in eligible for k in dataset.samples_by_class[c]]
        if num_episodes is None:
            queries = pairs
        else:
            perm = rng.permutation(len(pairs))
            queries = [pairs[int(perm[i % len(pairs)])] for i in range(num_episodes)]
    return [sample_episode(dataset, rng, shots, n_way, eligible, first_class=c, query=q) for q, c in queries]
