"""PATNet's cross-domain few-shot protocol (CD-FSS, Lei et al. ECCV 2022; github slei109/PATNet).

``patnet_episode_list`` reproduces PATNet's test episodes draw for draw (the readers:
``readers/patnet.py``). Protocol card: docs/protocols/cdfss.md.

How PATNet draws its test episodes (file:line in slei109/PATNet):

* ``test.py:18`` calls ``utils.fix_randseed(0)`` -> ``np.random.seed(0)`` (``common/utils.py:13``):
  the *legacy global* NumPy generator, seeded once before the first episode.
* ``data/dataset.py:37-38``: test loader with ``shuffle=False`` and ``num_workers=0``, so episode
  ``idx`` = 0, 1, 2, ... is drawn in order in the main process, and nothing else draws from that
  generator in between (transforms are Resize/ToTensor/Normalize).
* Deepglobe / ISIC / Chest X-ray (``data/deepglobe.py:79-90``, ``data/isic.py:78-89``,
  ``data/lung.py:79-90``; ``num=600`` at ``:13``/``:13``/``:13``): class ``idx % n_classes``
  (round robin over the category folders in order); query ``np.random.choice(pool, 1,
  replace=False)[0]`` over the class's sorted file list; then supports one at a time with the same
  call, keeping a draw only if it differs from the query. Supports are drawn *with* replacement
  across draws: a K-shot episode may repeat a support image.
* FSS-1000 (``data/fss.py:81-96``, identical to HSNet's ``data/fss.py``): no class sampling; episode
  ``idx`` is the ``idx``-th image of the sorted categories' sorted ``*.jpg`` lists (``:107-114``,
  2400 test episodes); supports ``np.random.choice(range(1, 11), 1, replace=False)[0]`` -> file
  ``<query folder>/<n>.jpg``, again skipping the query itself.

``numpy.random.RandomState(seed)`` is the generator ``np.random.seed(seed)`` installs, and
``choice(a, 1, replace=False)`` consumes a full ``permutation(len(a))`` whether ``a`` is a list or
its length, so drawing indices here gives PATNet's exact sequence.
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from ..image_io import BadSampleError
from ..readers.base import FewShotDataset
from ..readers.patnet import patnet_jpg
from .draw import Episode

PATNET_NUM_EPISODES = 600  # data/deepglobe.py:13, data/isic.py:13, data/lung.py:13 (``num=600``)
FSS1000_SUPPORT_NUMBERS = 10  # FSS-1000 class folders hold 1.jpg .. 10.jpg (data/fss.py:91)


def _is_fss1000(dataset: FewShotDataset) -> bool:
    return getattr(dataset, "name", "") == "fss1000"


def patnet_episode_list(dataset: FewShotDataset, shots: int, num_episodes: Optional[int] = None,
                        seed: int = 0) -> List[Episode]:
    """PATNet's fixed test episodes (module docstring; docs/protocols/cdfss.md).

    ``num_episodes=None``: 600 for class-sampled benchmarks, every image once for FSS-1000 (2400 on
    its test split). For FSS-1000 any other count is an error (PATNet's FSS-1000 list has no length
    option). ``class_ids`` order = PATNet's category order.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rs = np.random.RandomState(seed)
    if _is_fss1000(dataset):
        return _fss1000_episodes(dataset, rs, shots, num_episodes)
    num = PATNET_NUM_EPISODES if num_episodes is None else int(num_episodes)
    classes = list(dataset.class_ids)
    if not classes:
        raise ValueError(f"{dataset!r} has no classes")
    for c in classes:
        if dataset.num_samples(c) < 2:  # PATNet's support loop never ends with a single image
            raise ValueError(f"{dataset!r}: class {dataset.class_names.get(c, c)!r} has "
                             f"{dataset.num_samples(c)} image(s); PATNet episodes need >= 2")
    episodes = []
    for idx in range(num):
        c = classes[idx % len(classes)]
        pool = dataset.samples_by_class[c]
        query = pool[int(rs.choice(len(pool), 1, replace=False)[0])]
        supports: List[str] = []
        while len(supports) < shots:
            cand = pool[int(rs.choice(len(pool), 1, replace=False)[0])]
            if cand != query:
                supports.append(cand)
        episodes.append(Episode(query, (tuple(supports),), (int(c),)))
    return episodes


def _fss1000_episodes(dataset: FewShotDataset, rs: np.random.RandomState, shots: int,
                      num_episodes: Optional[int]) -> List[Episode]:
    by_name = sorted(dataset.class_ids, key=lambda c: dataset.class_names[c])  # data/fss.py:24
    queries = [(k, c) for c in by_name for k in sorted(dataset.samples_by_class[c]) if patnet_jpg(k)]
    if num_episodes is not None and num_episodes > 0 and num_episodes != len(queries):
        raise ValueError(f"PATNet's FSS-1000 protocol uses every image once ({len(queries)} here); "
                         f"test_episodes={num_episodes} is not that (use 0)")
    records = getattr(dataset, "records", {})
    episodes = []
    for query, c in queries:
        supports: List[str] = []
        while len(supports) < shots:
            n = int(rs.choice(range(1, FSS1000_SUPPORT_NUMBERS + 1), 1, replace=False)[0])
            cand = os.path.join(os.path.dirname(query), f"{n}.jpg")
            if cand == query:
                continue
            if cand not in records:
                raise BadSampleError(cand, "PATNet's FSS-1000 protocol draws supports 1.jpg..10.jpg of "
                                           "the query's class; this one is missing or has no mask")
            supports.append(cand)
        episodes.append(Episode(query, (tuple(supports),), (int(c),)))
    return episodes


__all__ = ["patnet_episode_list", "PATNET_NUM_EPISODES"]
