"""Named episode protocols: which lists a benchmark reads, how training and evaluation episodes are drawn.

A protocol is chosen by name in the data config (``EpisodicDataModule(protocol=...)``); each is written
up, with the reference file and line of every choice, in ``docs/protocols/<name>.md``:

* ``fsseg`` (default): fsseg's own drawing (``episodes.fixed_episode_list``; random training episodes).
* ``hsnet``: the very test episodes of HSNet (github juhongm999/hsnet) for PASCAL-5i, COCO-20i and
  FSS-1000: its list order, its class/query/support draws with numpy's legacy ``RandomState(seed)``,
  supports drawn with replacement (only the query is excluded).
* ``hdmnet``: the FS-DINO paper's stated recipe (PFENet/BAM/HDMNet lists filtered at 2*32*32 pixels,
  one epoch = one pass over the training images, K distinct supports, 10 evaluation seeds).
* ``patnet``: PATNet's cross-domain FSS (github slei109/PATNet, docs/protocols/cdfss.md): its test
  episodes for Deepglobe, ISIC, Chest X-ray and FSS-1000 (``patnet.patnet_episode_list``); PASCAL and
  COCO as ``hsnet`` (PATNet's PASCAL reader is HSNet's), source training on PASCAL fold 4 = all classes.

Every list is computed once in the main process from the split lists only (no image is opened), so
any number of workers and DDP processes evaluates exactly that list. To add a protocol, subclass
``EpisodeProtocol`` (``eval_episodes``, ``train_draw``; optionally ``dataset_options``,
``eval_seeds``, ``default_num_episodes``), give it a ``name`` and decorate it with
``@register_protocol``; ``protocol: <name>`` then selects it. What differs between benchmarks is read
from the benchmark's attributes (``benchmarks/benchmark.py``, ``EpisodicBenchmark``), never its name.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple, Type

import numpy as np

from fsseg.registry import Registry

from ..readers.base import FewShotDataset
from .draw import Episode, eligible_classes, fixed_episode_list
from .patnet import patnet_episode_list

PROTOCOLS = Registry("episode protocol", "--data.protocol")

# HDMNet test.py:35-38: np.random.seed(123); np.random.randint(0, 1000, 10)
HDMNET_SEEDS = (510, 365, 382, 322, 988, 98, 742, 17, 595, 106)


def register_protocol(cls: Type["EpisodeProtocol"]) -> Type["EpisodeProtocol"]:
    return PROTOCOLS.register(cls.name)(cls)


def get_protocol(name: str) -> "EpisodeProtocol":
    return PROTOCOLS.get(name)()


class TrainDraw:
    """Training episode for a draw id ``d`` (``TrainEpisodeSampler`` hands out ``epoch*length + i``):
    pass ``d // length`` over ``queries`` in an order permuted by ``(seed, pass)``, the rest of the
    episode from a generator seeded by ``(seed, d)`` -- a function of the draw id only."""

    def __init__(self, dataset: FewShotDataset, queries: List[Tuple[str, Tuple[int, ...]]], shots: int,
                 length: int, seed: int, with_replacement: bool, eligible: Sequence[int]) -> None:
        self.dataset, self.queries, self.shots, self.length = dataset, queries, shots, length
        self.seed, self.with_replacement = seed, with_replacement
        self.eligible = set(eligible)
        self._order: Dict[int, np.ndarray] = {}

    def __call__(self, draw_id: int, draws_per_epoch: Optional[int] = None) -> Episode:
        # draws_per_epoch: the sampler's epoch stride, >= length (DDP rounds it up to a multiple of
        # the world size); the extra positions wrap to the start of the pass's order
        epoch, i = divmod(int(draw_id), draws_per_epoch or self.length)
        if epoch not in self._order:
            self._order = {epoch: np.random.default_rng([self.seed, epoch, 0x7E]).permutation(len(self.queries))}
        query, classes = self.queries[int(self._order[epoch][i % len(self.queries)])]
        rng = np.random.default_rng([self.seed, int(draw_id)])
        usable = [c for c in classes if c in self.eligible] or list(classes)
        class_id = int(usable[int(rng.integers(len(usable)))])
        pool = self.dataset.samples_by_class[class_id]
        if self.with_replacement:
            supports = _supports_with_replacement(lambda n: int(rng.integers(n)), pool, query, self.shots)
        else:
            supports = _distinct_supports(rng, pool, query, self.shots)
        return Episode(query, (supports,), (class_id,))


def _supports_with_replacement(pick, pool: Sequence[str], query: str, shots: int) -> Tuple[str, ...]:
    """HSNet's loop (data/pascal.py:100-103, coco.py:96-99, fss.py:90-94): draw one pool entry at a
    time, reject only the query itself, so a support can repeat."""
    if not any(k != query for k in pool):
        raise ValueError(f"no support image besides the query {query!r} in its class")
    supports: List[str] = []
    while len(supports) < shots:
        name = pool[pick(len(pool))]
        if name != query:
            supports.append(name)
    return tuple(supports)


def _distinct_supports(rng: np.random.Generator, pool: Sequence[str], query: str, shots: int) -> Tuple[str, ...]:
    """BAM/HDMNet (util/dataset.py:250-265): K different supports, none the query."""
    others = [k for k in dict.fromkeys(pool) if k != query]
    if len(others) < shots:
        raise ValueError(f"{len(others)} support image(s) besides the query {query!r}, need K={shots}")
    return tuple(others[int(i)] for i in rng.choice(len(others), size=shots, replace=False))


def _legacy_pick(rs: np.random.RandomState):
    """``np.random.choice(pool, 1, replace=False)[0]`` as an index: legacy ``choice`` without
    replacement takes the first entry of ``permutation(len(pool))``, so each draw consumes a whole
    permutation (HSNet data/pascal.py:101)."""
    return lambda n: int(rs.choice(n, 1, replace=False)[0])


def list_pairs(ds: FewShotDataset) -> List[Tuple[str, int]]:
    """(key, class) pairs in the reader's list order (``list_pairs`` when the reader keeps one)."""
    pairs = getattr(ds, "list_pairs", None)
    if pairs is not None:
        return list(pairs)
    return [(k, c) for c in ds.class_ids for k in ds.samples_by_class.get(c, ())]


def image_classes(ds: FewShotDataset, classes: Optional[Sequence[int]] = None) -> List[Tuple[str, Tuple[int, ...]]]:
    """Images in list order with the classes each counts for (HDMNet's data_list + label_class)."""
    wanted = set(ds.class_ids if classes is None else classes)
    out: Dict[str, List[int]] = {}
    for k, c in list_pairs(ds):
        if c in wanted and c not in out.setdefault(k, []):
            out[k].append(c)
    return [(k, tuple(cs)) for k, cs in out.items() if cs]


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


class EpisodeProtocol:
    """Base class; subclasses set ``name`` and override what differs."""

    name = ""

    def dataset_options(self, benchmark: type, split: str) -> Dict:
        """Extra reader options for ``benchmark.read`` (e.g. area filtering)."""
        return {}

    def eval_seeds(self, seed: int, split: str) -> List[int]:
        return [seed]

    def default_num_episodes(self, benchmark: type, split: str, requested: int) -> Optional[int]:
        """``None`` = every (image, class) pair once. FSS-1000 test: every test image once (HSNet
        data/fss.py:31-32) when the count is left at its default 1000; a value <= 0 asks for it too."""
        if requested <= 0 or (benchmark.every_image_by_default and split == "test" and requested == 1000):
            return None
        return requested

    def eval_episodes(self, ds: FewShotDataset, benchmark: type, split: str, shots: int, n_way: int,
                      num_episodes: Optional[int], seeds: Sequence[int],
                      episodes_per_class: Optional[int] = None) -> List[Episode]:
        raise NotImplementedError

    def train_draw(self, ds: FewShotDataset, benchmark: type, shots: int, n_way: int, seed: int,
                   length: Optional[int]) -> Tuple[Optional[TrainDraw], int]:
        """(draw, episodes per epoch); draw ``None`` = fsseg's random episodes. ``length=None`` =
        one pass over the training list."""
        raise NotImplementedError


@register_protocol
class FssegProtocol(EpisodeProtocol):
    """fsseg's own drawing (``fixed_episode_list``), kept as it was before protocols existed."""

    name = "fsseg"

    def eval_episodes(self, ds, benchmark, split, shots, n_way, num_episodes, seeds, episodes_per_class=None):
        return fixed_episode_list(ds, shots, n_way, num_episodes=num_episodes,
                                  episodes_per_class=episodes_per_class, seed=seeds[0])

    def train_draw(self, ds, benchmark, shots, n_way, seed, length):
        if length is None:  # one pass = as many episodes as (image, class) pairs of the eligible classes
            length = sum(ds.num_samples(c) for c in eligible_classes(ds, shots, n_way))
        return None, length


def _one_way(name: str, n_way: int) -> None:
    if n_way != 1:
        raise ValueError(f"protocol {name!r} defines 1-way episodes only (got n_way={n_way}); use protocol: fsseg")


@register_protocol
class HsnetProtocol(EpisodeProtocol):
    """HSNet's episodes (juhongm999/hsnet data/pascal.py, coco.py, fss.py; seeding common/utils.py:8-15,
    test.py:20): one legacy ``RandomState(seed)`` for the whole list, as ``fix_randseed(0)`` then a
    ``num_workers=0`` unshuffled loader."""

    name = "hsnet"

    def eval_episodes(self, ds, benchmark, split, shots, n_way, num_episodes, seeds, episodes_per_class=None):
        _one_way(self.name, n_way)
        pick = _legacy_pick(np.random.RandomState(seeds[0]))
        eligible = eligible_classes(ds, 1)  # HSNet needs only one image besides the query
        episodes = []
        if benchmark.hsnet_draw == "class_uniform":
            # data/coco.py:32-35, 84-99: idx ignored; class uniform, query uniform in its pool
            pools = {c: ds.samples_by_class[c] for c in eligible}
            for _ in range(1000 if num_episodes is None else num_episodes):
                c = eligible[pick(len(eligible))]
                query = pools[c][pick(len(pools[c]))]
                episodes.append(Episode(query, (_supports_with_replacement(pick, pools[c], query, shots),), (c,)))
            return episodes
        pairs = [(k, c) for k, c in list_pairs(ds) if c in eligible]
        if benchmark.hsnet_draw == "numeric_supports":
            # data/fss.py:91-92: supports are range(1, 11) -> '<class>/<n>.jpg', i.e. the class's
            # images in numeric order (not the string order the queries follow)
            pools = {c: sorted(ds.samples_by_class[c], key=_natural) for c in eligible}
        else:
            # data/pascal.py:141-148: pools built from the list in order, duplicates kept
            pools = {c: [] for c in eligible}
            for k, c in pairs:
                pools[c].append(k)
        n = len(pairs) if num_episodes is None else num_episodes
        for i in range(n):  # data/pascal.py:29-33: 1000 items, idx % len(list) -> the list cycles
            query, c = pairs[i % len(pairs)]
            episodes.append(Episode(query, (_supports_with_replacement(pick, pools[c], query, shots),), (c,)))
        return episodes

    def train_draw(self, ds, benchmark, shots, n_way, seed, length):
        _one_way(self.name, n_way)
        eligible = eligible_classes(ds, 1)
        if benchmark.hsnet_draw == "class_uniform":
            # data/coco.py:73-77: one epoch = the distinct training images; each item a uniform class
            images = sorted({k for c in eligible for k in ds.samples_by_class[c]})
            queries = [(k, ()) for k in images]
            draw = _CocoHsnetDraw(ds, queries, shots, length or len(queries), seed, True, eligible)
        else:
            # data/pascal.py:29-30, 117-131: one epoch = every (image, class) pair of the training list
            queries = [(k, (c,)) for k, c in list_pairs(ds) if c in eligible]
            draw = TrainDraw(ds, queries, shots, length or len(queries), seed, True, eligible)
        return draw, draw.length


class _CocoHsnetDraw(TrainDraw):
    def __call__(self, draw_id: int, draws_per_epoch: Optional[int] = None) -> Episode:
        rng = np.random.default_rng([self.seed, int(draw_id)])
        classes = sorted(self.eligible)
        c = classes[int(rng.integers(len(classes)))]
        pool = self.dataset.samples_by_class[c]
        query = pool[int(rng.integers(len(pool)))]
        return Episode(query, (_supports_with_replacement(lambda n: int(rng.integers(n)), pool, query, self.shots),), (c,))


def _check_area_filtered(ds: FewShotDataset, n_way: int) -> None:
    _one_way("hdmnet", n_way)
    if getattr(ds, "list_format", None) == "hsnet":
        raise ValueError(f"protocol 'hdmnet' cannot use HSNet's lists for {ds!r}: they keep objects of any size. "
                         "Give BAM's fss_list or PFENet's lists as split_dir (PASCAL-5i), or no split_dir (the "
                         "pools are then derived from the masks with the 2*32*32-pixel rule)")


@register_protocol
class HdmnetProtocol(EpisodeProtocol):
    """The FS-DINO paper's recipe as HDMNet (github Pbihao/HDMNet) runs it, after PFENet and BAM."""

    name = "hdmnet"

    def dataset_options(self, benchmark, split):
        if benchmark.hdmnet_area_rule:
            # util/dataset.py:24-80 (make_dataset): classes count with >= 2*32*32 pixels; training
            # images holding a test-fold class are dropped (filter_intersection=True for train)
            return {"min_pixels": 2 * 32 * 32, "exclude_novel_images": split in ("train", "trn")}
        return {}

    def eval_seeds(self, seed, split):
        # test.py:35-38, 150-157: the same list evaluated under 10 seeds in turn
        return list(HDMNET_SEEDS) if split == "test" else [seed]

    def eval_episodes(self, ds, benchmark, split, shots, n_way, num_episodes, seeds, episodes_per_class=None):
        _check_area_filtered(ds, n_way)
        eligible = eligible_classes(ds, shots)
        images = image_classes(ds, eligible)
        n = len(images) if num_episodes is None else num_episodes
        episodes = []
        for seed_index, seed in enumerate(seeds):
            rng = np.random.default_rng(seed)
            for i in range(n):
                # test.py:142 (shuffle=False) and 216-222: queries in list order, cycling to test_num
                query, classes = images[i % len(images)]
                c = int(classes[int(rng.integers(len(classes)))])  # util/dataset.py:235
                supports = _distinct_supports(rng, ds.samples_by_class[c], query, shots)
                episodes.append(Episode(query, (supports,), (c,), seed_index))
        return episodes

    def train_draw(self, ds, benchmark, shots, n_way, seed, length):
        _check_area_filtered(ds, n_way)
        eligible = eligible_classes(ds, shots)
        # train.py:157-163, 291: one epoch = one pass over the (filtered) training images, shuffled
        queries = image_classes(ds, eligible)
        draw = TrainDraw(ds, queries, shots, length or len(queries), seed, False, eligible)
        return draw, draw.length


@register_protocol
class PatnetProtocol(HsnetProtocol):
    """PATNet's CD-FSS (github slei109/PATNet). Its ``data/pascal.py`` and ``data/fss.py`` are HSNet's
    (only the data paths, the original-size option and the fold-4 guard at pascal.py:132 differ), so
    PASCAL/COCO training and evaluation are ``hsnet``'s; the cross-domain targets (``data/deepglobe.py``,
    ``isic.py``, ``lung.py``) and FSS-1000 are drawn by ``patnet_episode_list`` from one legacy
    ``RandomState(seed)`` (test.py:18 ``fix_randseed(0)``; num_workers=0, data/dataset.py:37-38).
    FSS-1000 gives HSNet's list (tests/test_data_modules_patnet.py checks it against ``hsnet``)."""

    name = "patnet"

    def default_num_episodes(self, benchmark, split, requested):
        """``None`` = PATNet's count: 600 per target (data/deepglobe.py:13), FSS-1000 every image once
        (data/fss.py:31-32, whatever the split; 1000 is fsseg's default, not a PATNet count)."""
        if benchmark.every_image_by_default and requested == 1000:
            return None
        return super().default_num_episodes(benchmark, split, requested)

    def eval_episodes(self, ds, benchmark, split, shots, n_way, num_episodes, seeds, episodes_per_class=None):
        if benchmark.patnet_as_hsnet:
            return super().eval_episodes(ds, benchmark, split, shots, n_way, num_episodes, seeds, episodes_per_class)
        _one_way(self.name, n_way)
        return patnet_episode_list(ds, shots, num_episodes=num_episodes, seed=seeds[0])
