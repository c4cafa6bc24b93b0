"""Few-shot episodes of a registered benchmark (``benchmarks/``), drawn by a named protocol
(``episodes/protocols.py``), for training, validation and test."""

from __future__ import annotations

import warnings
from typing import Dict, List, Literal, Optional, Tuple, Union

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ..benchmarks import ReaderSettings, episodic_benchmark
from ..episodes.dataset import (
    EpisodeDataset,
    StridedDistributedSampler,
    TrainEpisodeSampler,
    batch_to_model_dtypes,
    collate_dicts,
)
from ..episodes.draw import fixed_episode_list
from ..episodes.files import check_episodes_header, episodes_to_json, read_episodes_file
from ..episodes.protocols import get_protocol
from ..readers.base import FewShotDataset
from .loading import loader_transport, rank_world


class EpisodicDataModule(L.LightningDataModule):
    """Few-shot episodes (batch format: docs/CONTRACTS.md), drawn by a named ``protocol``
    (``episodes/protocols.py``; cards in docs/protocols/): ``fsseg`` (default), ``hsnet``, ``hdmnet`` or
    ``patnet`` (cross-domain, docs/protocols/cdfss.md).

    Train: ``train_episodes_per_epoch`` episodes over the base classes (``null`` = one pass over the
    training list), augmented if ``augment``. Val/test: fixed lists computed once in the main process
    (``val_episodes``/``test_episodes`` per evaluation seed; a value <= 0 means every (image, class)
    pair once as query; ``fss1000`` test uses that when ``test_episodes`` is left at 1000;
    ``episodes_per_class`` overrides both for ``fsseg``), split across DDP ranks by
    ``StridedDistributedSampler`` (disjoint, no padding). ``episodes_file``: evaluate the test split on
    that JSON episode list (``fsseg episodes`` writes them), whatever the protocol.
    Validation is not the test: it draws from ``val_seed`` (default ``seed + 1``; FSS-1000 validates on
    its own val classes); ``val_on_test: true`` validates on the test episodes, as the reference code
    does, and says so in the log.

    ``scoring_size``: where val/test are scored (docs/protocols/scoring.md): ``model`` (the label
    resized to ``image_size``), an int ``S`` (HSNet's 400: label nearest-resized to SxS) or
    ``original`` (HDMNet: the label at its original size); the last two add ``query_label_orig``.
    ``augmentation``: ``fsseg`` (random resized crop, flip, colour jitter) or ``hdmnet`` (HDMNet's
    scale/rotate/blur/flip/resize chain, ``augmentation_scale`` default [0.9, 1.1], COCO [0.8, 1.25]).

    ``dataset`` names a registered benchmark (``data_modules/benchmarks/``; one defined elsewhere as
    ``package.module:name``), which says how its reader is built and which protocol rules apply.
    The ``folder`` dataset (your own data) has no class split: train, val and test episodes use the
    same classes and, unless ``holdout_fraction`` > 0, the same images (said in a warning).

    Args:
        dataset: a registered benchmark: ``synthetic`` | ``pascal5i`` | ``coco20i`` | ``fss1000`` | ``folder`` |
            ``deepglobe`` | ``isic_patnet`` | ``chest_xray`` (README "Data"), or ``package.module:name``.
        root: folder of the dataset on disk (None for ``synthetic``).
        fold: cross-validation fold (PASCAL-5i, COCO-20i: which classes are novel; synthetic too).
        shots: K, support images per class in an episode.
        n_way: classes per episode (1: binary; N > 1: class-index query masks, evaluation only).
        image_size: images and masks are resized to this square size (the model's input size).
        batch_size: episodes per training batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        train_episodes_per_epoch: training episodes per epoch (null: one pass over the training list).
        val_episodes: fixed validation episodes (<= 0: every (image, class) pair once as query).
        test_episodes: fixed test episodes (<= 0: every pair once; FSS-1000 at 1000: every test image).
        episodes_per_class: overrides val/test_episodes with this many episodes per class.
        seed: seed of the fixed episode lists, the training draws and the hold-out split.
        split_dir: split lists (PASCAL ``<id>__<class>`` lists, FSS-1000 ``trn/val/test.txt``).
        mask_encoding: ``auto`` (detected per file) | ``index`` | ``binary255`` | ``binary01`` | ``rgb`` | ``jpeg``.
        skip_bad_samples: re-draw an episode touching an unreadable file (counted, warned) instead of stopping.
        augment: training augmentation (flip, scale, crop, colour jitter).
        synthetic_image_size: size the ``synthetic`` dataset renders at.
        synthetic_images_per_class: images per class of the ``synthetic`` dataset.
        eval_batch_size: episodes per val/test batch (default: ``batch_size``).
        holdout_fraction: ``folder`` only: this fraction of the images (seeded) is kept out of
            training and used for val/test episodes (0: val/test on the training images).
        classes: ``folder`` with class-index masks: only these classes (names from ``classes.txt``
            or mask values), e.g. ``dog,airplane`` or ``18,5``.
        protocol: episode protocol: ``fsseg`` | ``hsnet`` | ``hdmnet`` | ``patnet`` (docs/protocols/).
        episodes_file: evaluate the test split on this JSON episode list (``fsseg episodes``); one whose
            benchmark, fold or shots differ from this config's is refused.
        force_episodes_file: evaluate ``episodes_file`` even when its benchmark, fold or shots differ.
        val_seed: seed of the validation episodes (default ``seed + 1``).
        val_on_test: validate on the test episodes, as the reference code does (logged).
        scoring_size: where val/test are scored: ``model``, an int ``S`` (HSNet's 400) or ``original``
            (HDMNet; docs/protocols/scoring.md).
        augmentation: training augmentation recipe: ``fsseg`` or ``hdmnet``.
        augmentation_scale: HDMNet's scale range (default [0.9, 1.1], COCO [0.8, 1.25]).
        pin_memory: page-locked batches (the copy to the GPU overlaps compute); null: on when the
            trainer runs on a CUDA GPU.
        persistent_workers: keep the loader workers between epochs and validations; null: on when
            ``num_workers`` > 0.
        input_path: training batches' input path: ``fast`` (images and masks travel as uint8 and
            are converted on the device; ``hdmnet`` as ``FusedHDMNetAugment``, not bit-equal to
            HDMNet's chain) or ``exact`` (float32 batches, HDMNet's float32 chain bit-equal;
            docs/protocols/hdmnet.md) or ``device`` (as ``fast``, ``hdmnet``'s image warp and blur
            run on the device). Val/test batches are always float32.
        mask_index_dir: where per-mask class areas are kept once counted (PASCAL-5i / COCO-20i pools
            derived from masks, ``data_modules.mask_index``; keyed by the mask files' names, sizes and
            mtimes); null: count them on every setup.
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: Optional[str] = None,
        fold: int = 0,
        shots: int = 1,
        n_way: int = 1,
        image_size: int = 518,
        batch_size: int = 8,
        num_workers: int = 0,
        train_episodes_per_epoch: Optional[int] = 1000,
        val_episodes: int = 1000,
        test_episodes: int = 1000,
        episodes_per_class: Optional[int] = None,
        seed: int = 0,
        split_dir: Optional[str] = None,
        mask_encoding: str = "auto",
        skip_bad_samples: bool = False,
        augment: bool = True,
        synthetic_image_size: int = 112,
        synthetic_images_per_class: int = 50,
        eval_batch_size: Optional[int] = None,
        # -- episode protocol (data_modules/episodes/protocols.py) --
        protocol: str = "fsseg",
        episodes_file: Optional[str] = None,
        force_episodes_file: bool = False,
        val_seed: Optional[int] = None,
        val_on_test: bool = False,
        # -- scoring size and training recipe (docs/protocols/scoring.md) --
        scoring_size: Union[Literal["model", "original"], int] = "model",
        augmentation: Literal["fsseg", "hdmnet"] = "fsseg",
        augmentation_scale: Optional[Tuple[float, float]] = None,
        holdout_fraction: float = 0.0,
        classes: Optional[Union[str, List[str]]] = None,
        pin_memory: Optional[bool] = None,
        persistent_workers: Optional[bool] = None,
        input_path: Literal["fast", "exact", "device"] = "fast",
        mask_index_dir: Optional[str] = ".cache/fsseg/mask_index",
    ) -> None:
        super().__init__()
        if not 0 <= holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        self.benchmark = episodic_benchmark(dataset)
        if not self.benchmark.class_split and holdout_fraction == 0:
            warnings.warn(f"dataset {dataset!r} ({root}): validation and test episodes use the training images and "
                          "classes (no held-out data); set data.holdout_fraction (e.g. 0.2) to keep a seeded share "
                          "of the images out of training", stacklevel=2)
        if shots < 1 or n_way < 1:
            raise ValueError(f"shots and n_way must be >= 1 (got shots={shots}, n_way={n_way})")
        self.save_hyperparameters()
        self.dataset_name = dataset
        self.root, self.fold, self.shots, self.n_way = root, fold, shots, n_way
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.train_episodes_per_epoch = train_episodes_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.episodes_per_class = episodes_per_class
        self.seed, self.split_dir, self.mask_encoding = seed, split_dir, mask_encoding
        self.skip_bad_samples, self.augment = skip_bad_samples, augment
        self.synthetic_image_size = synthetic_image_size
        self.synthetic_images_per_class = synthetic_images_per_class
        self.eval_batch_size = eval_batch_size or batch_size
        self.protocol_name, self.protocol = protocol, get_protocol(protocol)
        self.episodes_file, self.val_on_test = episodes_file, val_on_test
        self.force_episodes_file = force_episodes_file
        self.val_seed = seed + 1 if val_seed is None else val_seed
        self.holdout_fraction, self.classes = holdout_fraction, classes
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.datasets: Dict[str, EpisodeDataset] = {}
        self._file_seeds: Optional[List[int]] = None
        # Scoring size / training recipe: passed to every EpisodeDataset by ``_recipe``.
        self.scoring_size, self.augmentation = scoring_size, augmentation
        self.input_path, self.mask_index_dir = input_path, mask_index_dir
        self.augmentation_scale = tuple(augmentation_scale) if augmentation_scale else self.benchmark.hdmnet_scale

    # -- building --------------------------------------------------------------------------------
    def _recipe(self) -> dict:
        """EpisodeDataset options of the scoring size and the training augmentation."""
        return {"scoring_size": self.scoring_size, "augmentation": self.augmentation,
                "hdmnet_scale": self.augmentation_scale}

    def _fewshot(self, split: str) -> FewShotDataset:
        if self.benchmark.needs_root and not self.root:
            raise ValueError(f"dataset {self.dataset_name!r} needs data.root (path to the data on disk)")
        settings = ReaderSettings(self.root, self.fold, self.split_dir, self.mask_encoding, self.seed,
                                  self.synthetic_image_size, self.synthetic_images_per_class,
                                  self.holdout_fraction, self.classes, self.mask_index_dir)
        return self.benchmark.read(split, settings, self.protocol.dataset_options(self.benchmark, split))

    @property
    def eval_seeds(self) -> List[int]:
        """The test list's evaluation seeds; ``Episode.seed_index`` / batch ``eval_seed`` index them."""
        if self.episodes_file:
            if self._file_seeds is None:
                self.setup("test")
            return list(self._file_seeds)
        return self.protocol.eval_seeds(self.seed, "test")

    def _eval_dataset(self, split: str, n: int) -> EpisodeDataset:
        ds = self._fewshot(split)
        if split == "test" and self.episodes_file:
            episodes, self._file_seeds = read_episodes_file(self.episodes_file, ds)
            if not self.force_episodes_file:
                check_episodes_header(self.episodes_file, episodes, self.dataset_name, self.fold, self.shots)
        else:
            seeds = self.protocol.eval_seeds(self.val_seed if split == "val" else self.seed, split)
            episodes = self.protocol.eval_episodes(
                ds, self.benchmark, split, self.shots, self.n_way,
                self.protocol.default_num_episodes(self.benchmark, split, n), seeds, self.episodes_per_class)
        return EpisodeDataset(ds, self.shots, self.n_way, episodes=episodes, image_size=self.image_size,
                              train=False, seed=self.seed, skip_bad_samples=self.skip_bad_samples,
                              **self._recipe())

    def _train_dataset(self) -> EpisodeDataset:
        ds = self._fewshot("train")
        draw, length = self.protocol.train_draw(ds, self.benchmark, self.shots, self.n_way, self.seed,
                                                self.train_episodes_per_epoch)
        return EpisodeDataset(ds, self.shots, self.n_way, episodes=None, length=length,
                              image_size=self.image_size, train=True, augment=self.augment, seed=self.seed,
                              skip_bad_samples=self.skip_bad_samples, train_draw=draw,
                              input_path=self.input_path, **self._recipe())

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._train_dataset()
        if stage in (None, "test") and "test" not in self.datasets:
            self.datasets["test"] = self._eval_dataset("test", self.test_episodes)
        if stage in (None, "fit", "validate") and "val" not in self.datasets:
            if self.val_on_test:
                rank_zero_warn("val_on_test: validating on the TEST episodes (the reference code's behaviour); "
                               "checkpoint selection then sees the test set")
                self.datasets["val"] = self.datasets.get("test") or self._eval_dataset("test", self.test_episodes)
            else:
                self.datasets["val"] = self._eval_dataset("val", self.val_episodes)

    @property
    def num_classes(self) -> int:
        """Size of the benchmark's class-id space (all classes the built datasets name; for ``FewShotIoU``)."""
        ids = [c for ds in self.datasets.values() for c in (*ds.dataset.class_ids, *ds.dataset.class_names)]
        return max(ids) + 1 if ids else 0

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # training batches travel as uint8 (``input_path``); on the device they take the float32
        # format of docs/CONTRACTS.md (and ``device``'s canvases are augmented there)
        return batch_to_model_dtypes(batch) if isinstance(batch, dict) else batch

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool = False, sampler=None) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate_dicts,
                          **loader_transport(getattr(self, "trainer", None), self.num_workers, self.pin_memory,
                                             self.persistent_workers))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        ds = self.datasets["train"]
        rank, world = rank_world(getattr(self, "trainer", None))
        sampler = TrainEpisodeSampler(len(ds), world, rank)
        ds.draws_per_epoch = sampler.draws_per_epoch
        return self._loader(ds, self.batch_size, sampler=sampler)

    def episode_dataloader(self, split: str, rank: Optional[int] = None, world_size: Optional[int] = None) -> DataLoader:
        """Fixed-list loader for ``split`` ('val'|'test'), this rank's strided share of the list."""
        self.setup("validate" if split == "val" else "test")
        r, w = rank_world(getattr(self, "trainer", None))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
        ds = self.datasets[split]
        return self._loader(ds, self.eval_batch_size, sampler=StridedDistributedSampler(ds, world_size, rank))

    def base_class_dataloader(self, num_episodes: int = 200) -> DataLoader:
        """A fixed (seeded), un-augmented episode list over the *base* (training) classes, for
        calibrating parameter-free baselines without touching the novel classes."""
        base = self._fewshot("train")
        episodes = fixed_episode_list(base, self.shots, self.n_way, num_episodes=num_episodes, seed=self.seed)
        ds = EpisodeDataset(base, self.shots, self.n_way, episodes=episodes, image_size=self.image_size,
                            train=False, seed=self.seed, skip_bad_samples=self.skip_bad_samples)
        return self._loader(ds, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.episode_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.episode_dataloader("test")

    def episode_list(self, split: str = "test"):
        self.setup("validate" if split == "val" else "test")
        return list(self.datasets[split].episodes)

    def episodes_json(self, split: str = "test") -> Dict:
        """The ``split`` episode list in the schema of the reference episode files (``episodes/files.py``)."""
        episodes = self.episode_list(split)
        own_val = split == "val" and not self.val_on_test
        header = {"benchmark": self.dataset_name, "protocol": self.protocol_name, "split": split,
                  "fold": self.fold, "shot": self.shots, "seed": self.val_seed if own_val else self.seed,
                  "eval_seeds": [self.val_seed] if own_val else self.eval_seeds}
        return episodes_to_json(episodes, self.datasets[split].dataset, header)
