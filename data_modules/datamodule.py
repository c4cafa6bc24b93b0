"""Lightning data modules: episodic training/eval, unlabelled images (distillation), predict folders."""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Literal, Optional, Tuple, Union

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .base import FewShotDataset
from .chest_xray import ChestXray
from .coco import Coco20i
from .deepglobe import Deepglobe
from .episode_files import check_episodes_header, episodes_to_json, read_episodes_file
from .episodes import (
    EpisodeDataset,
    StridedDistributedSampler,
    TrainEpisodeSampler,
    batch_to_model_dtypes,
    collate_dicts,
    fixed_episode_list,
)
from .folder import FolderDataset, UnlabelledImageFolder
from .fss import FSS1000
from .isic import ISIC
from .masks import BadSampleError, exif_orientation, list_images, read_image
from .pascal import Pascal5i
from .protocols import get_protocol
from .synthetic import NUM_CLASSES, SyntheticFewShot, render
from .transforms import HDMNET_SCALE, PairTransform, image_to_tensor, resize_image

DATASETS = ("synthetic", "pascal5i", "coco20i", "fss1000", "folder", "deepglobe", "isic", "chest_xray")
# Cross-domain targets (PATNet's CD-FSS, docs/protocols/cdfss.md): test-only, one reader each.
CROSS_DOMAIN_READERS = {"deepglobe": Deepglobe, "isic": ISIC, "chest_xray": ChestXray}


def _rank_world(trainer) -> Tuple[int, int]:
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def loader_transport(trainer, num_workers: int, pin_memory: Optional[bool] = None,
                     persistent_workers: Optional[bool] = None) -> dict:
    """A DataLoader's ``pin_memory`` and ``persistent_workers``: as given, or by default page-locked
    batches when the trainer runs on a CUDA GPU (asynchronous host-to-GPU copies) and workers kept
    across epochs and validations whenever there are workers (not restarted, re-importing torch and
    re-reading the split lists, every epoch)."""
    on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
    keep = num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0
    return {"pin_memory": on_cuda if pin_memory is None else pin_memory, "persistent_workers": keep}


def holdout_split(ds: FewShotDataset, split: str, fraction: float, seed: int = 0) -> FewShotDataset:
    """Keep, per class, a seeded ``fraction`` of the images for val/test and the rest for train
    (an image is in one side only, whatever class it is drawn for)."""
    keys = ds.all_keys()
    perm = np.random.default_rng(seed).permutation(len(keys))
    n_hold = int(round(fraction * len(keys)))
    held = {keys[int(i)] for i in perm[:n_hold]}
    keep = (lambda k: k not in held) if split == "train" else (lambda k: k in held)
    ds.samples_by_class = {c: [k for k in v if keep(k)] for c, v in ds.samples_by_class.items()}
    return ds


def build_fewshot_dataset(dataset: str, split: str, root: Optional[str] = None, fold: int = 0,
                          split_dir: Optional[str] = None, mask_encoding: str = "auto", seed: int = 0,
                          synthetic_image_size: int = 112, synthetic_images_per_class: int = 50,
                          options: Optional[Dict] = None, holdout_fraction: float = 0.0,
                          classes: Optional[List[str]] = None, mask_index_dir: Optional[str] = None) -> FewShotDataset:
    """Factory used by ``EpisodicDataModule`` (``split`` in train/val/test). ``split_dir`` is the list
    folder of the benchmark (PASCAL-5i: HSNet's, BAM's or PFENet's lists; COCO-20i: HSNet's pickled
    pools; FSS-1000: the class lists). ``options``: the protocol's reader options (area filtering). ``folder`` only:
    ``classes`` (class-index masks) and ``holdout_fraction`` (``holdout_split``). ``mask_index_dir``
    (PASCAL-5i, COCO-20i): where class areas counted from the masks are kept (``mask_index``)."""
    options = options or {}
    if dataset == "synthetic":
        return SyntheticFewShot(fold=fold, split=split, seed=seed, image_size=synthetic_image_size,
                                images_per_class=synthetic_images_per_class)
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if not root:
        raise ValueError(f"dataset {dataset!r} needs data.root (path to the data on disk)")
    if dataset == "pascal5i":
        return Pascal5i(root, fold, split, list_dir=split_dir, mask_encoding=mask_encoding,
                        mask_index_dir=mask_index_dir, **options)
    if dataset == "coco20i":
        return Coco20i(root, fold, split, mask_encoding=mask_encoding, list_dir=split_dir,
                       mask_index_dir=mask_index_dir, **options)
    if dataset == "fss1000":
        return FSS1000(root, split, split_dir=split_dir, mask_encoding=mask_encoding)
    if dataset in CROSS_DOMAIN_READERS:
        return CROSS_DOMAIN_READERS[dataset](root, split)
    ds = FolderDataset(root, mask_encoding=mask_encoding, classes=classes)
    if holdout_fraction > 0:
        return holdout_split(ds, split, holdout_fraction, seed)
    return ds


class EpisodicDataModule(L.LightningDataModule):
    """Few-shot episodes (batch format: docs/CONTRACTS.md), drawn by a named ``protocol``
    (``protocols.py``; cards in docs/protocols/): ``fsseg`` (default), ``hsnet``, ``hdmnet`` or
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

    The ``folder`` dataset (your own data) has no class split: train, val and test episodes use the
    same classes and, unless ``holdout_fraction`` > 0, the same images (said in a warning).

    Args:
        dataset: ``synthetic`` | ``pascal5i`` | ``coco20i`` | ``fss1000`` | ``folder`` | ``deepglobe`` |
            ``isic`` | ``chest_xray`` (README "Data").
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
        # -- episode protocol (issue 11) --
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
        if dataset == "folder" and holdout_fraction == 0:
            warnings.warn(f"dataset 'folder' ({root}): validation and test episodes use the training images and "
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
        self.augmentation_scale = tuple(augmentation_scale) if augmentation_scale else \
            HDMNET_SCALE["coco" if dataset == "coco20i" else "pascal"]

    # -- building --------------------------------------------------------------------------------
    def _recipe(self) -> dict:
        """EpisodeDataset options of the scoring size and the training augmentation."""
        return {"scoring_size": self.scoring_size, "augmentation": self.augmentation,
                "hdmnet_scale": self.augmentation_scale}

    def _fewshot(self, split: str) -> FewShotDataset:
        return build_fewshot_dataset(self.dataset_name, split, self.root, self.fold, self.split_dir,
                                     self.mask_encoding, self.seed, self.synthetic_image_size,
                                     self.synthetic_images_per_class,
                                     options=self.protocol.dataset_options(self.dataset_name, split),
                                     holdout_fraction=self.holdout_fraction, classes=self.classes,
                                     mask_index_dir=self.mask_index_dir)

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
                ds, self.dataset_name, split, self.shots, self.n_way,
                self.protocol.default_num_episodes(self.dataset_name, split, n), seeds, self.episodes_per_class)
        return EpisodeDataset(ds, self.shots, self.n_way, episodes=episodes, image_size=self.image_size,
                              train=False, seed=self.seed, skip_bad_samples=self.skip_bad_samples,
                              **self._recipe())

    def _train_dataset(self) -> EpisodeDataset:
        ds = self._fewshot("train")
        draw, length = self.protocol.train_draw(ds, self.dataset_name, self.shots, self.n_way, self.seed,
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
        rank, world = _rank_world(getattr(self, "trainer", None))
        sampler = TrainEpisodeSampler(len(ds), world, rank)
        ds.draws_per_epoch = sampler.draws_per_epoch
        return self._loader(ds, self.batch_size, sampler=sampler)

    def episode_dataloader(self, split: str, rank: Optional[int] = None, world_size: Optional[int] = None) -> DataLoader:
        """Fixed-list loader for ``split`` ('val'|'test'), this rank's strided share of the list."""
        self.setup("validate" if split == "val" else "test")
        r, w = _rank_world(getattr(self, "trainer", None))
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
        """The ``split`` episode list in the schema of the reference episode files (``episode_files.py``)."""
        episodes = self.episode_list(split)
        own_val = split == "val" and not self.val_on_test
        header = {"benchmark": self.dataset_name, "protocol": self.protocol_name, "split": split,
                  "fold": self.fold, "shot": self.shots, "seed": self.val_seed if own_val else self.seed,
                  "eval_seeds": [self.val_seed] if own_val else self.eval_seeds}
        return episodes_to_json(episodes, self.datasets[split].dataset, header)


# =================================================================================================
class _SyntheticImages(Dataset):
    def __init__(self, n: int, image_size: int, seed: int) -> None:
        self.n, self.image_size, self.seed = n, image_size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        img, _ = render(index % NUM_CLASSES, index, self.seed, self.image_size)
        return {"image": image_to_tensor(img), "path": f"synthetic/{index:05d}",
                "index": torch.tensor(index, dtype=torch.int64)}


class _Subset(Dataset):
    def __init__(self, base: Dataset, indices: List[int]) -> None:
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


class UnlabelledDataModule(L.LightningDataModule):
    """Unlabelled images for distillation: batch ``{"image": [B,3,S,S], "path": list[str], "index": [B]}``.

    ``root=None`` falls back to ``synthetic_images`` synthetic pictures so the demo runs without data.
    ``teacher_view='longest_side'`` (default) also serves each folder image as SAM's predictor sees
    it (``teacher_image`` padded + ``teacher_valid``) for ``DistillationModule(teacher_preprocess='sam')``;
    ``'none'`` serves only the square ``image`` (synthetic pictures are square: never needed).
    ``val_fraction`` of the images (chosen by a permutation seeded with ``seed``; at least one when
    > 0 and there are >= 2 images) go to validation. ``index`` is the position in the full folder.

    Args:
        root: folder of images (recursive); None: synthetic pictures.
        image_size: images are resized to this square size (1024: SAM's input, teacher cacheable).
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        val_fraction: share of the images (seeded) used for validation.
        seed: seed of the train/val split and the shuffling.
        synthetic_images: number of synthetic pictures when ``root`` is None.
        shuffle: shuffle the training images each epoch.
        teacher_view: ``longest_side``: also serve each image as SAM's predictor sees it (longest side
            resized, padded; the distillation target); ``none``: the square-resized image only.
        pin_memory: page-locked batches; null: on when the trainer runs on a CUDA GPU.
        persistent_workers: keep the loader workers between epochs; null: on when ``num_workers`` > 0.
    """

    def __init__(self, root: Optional[str] = None, image_size: int = 1024, batch_size: int = 4,
                 num_workers: int = 0, val_fraction: float = 0.1, seed: int = 0,
                 synthetic_images: int = 64, shuffle: bool = True,
                 teacher_view: Literal["none", "longest_side"] = "longest_side",
                 pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root, self.image_size, self.batch_size = root, image_size, batch_size
        self.num_workers, self.val_fraction, self.seed = num_workers, val_fraction, seed
        self.synthetic_images, self.shuffle = synthetic_images, shuffle
        self.full: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.full is not None:
            return
        if self.root:
            self.full = UnlabelledImageFolder(self.root, self.image_size, self.hparams.teacher_view)
        else:
            self.full = _SyntheticImages(self.synthetic_images, self.image_size, self.seed)
        n = len(self.full)
        n_val = 0
        if self.val_fraction > 0 and n >= 2:
            n_val = min(n - 1, max(1, int(round(self.val_fraction * n))))
        perm = np.random.default_rng(self.seed).permutation(n)
        self.val_indices = sorted(int(i) for i in perm[:n_val])
        self.train_indices = sorted(int(i) for i in perm[n_val:])
        self.train_set = _Subset(self.full, self.train_indices)
        self.val_set = _Subset(self.full, self.val_indices)

    def _loader(self, ds, shuffle):
        # The order is a function of (seed, epoch) only -- Lightning calls ``set_epoch`` -- so a run
        # resumed from a checkpoint sees the same batches as an uninterrupted one, and DDP ranks get
        # disjoint shares (validation: strided, no padding duplicates).
        rank, world = _rank_world(getattr(self, "trainer", None))
        if shuffle:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        else:
            sampler = StridedDistributedSampler(ds, world, rank)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_dicts,
                          **loader_transport(getattr(self, "trainer", None), self.num_workers,
                                             self.hparams.pin_memory, self.hparams.persistent_workers))

    def train_dataloader(self):
        self.setup()
        return self._loader(self.train_set, self.shuffle)

    def val_dataloader(self):
        self.setup()
        return self._loader(self.val_set, False)

    def predict_dataloader(self):
        self.setup()
        return self._loader(self.full, False)


# =================================================================================================
class _QueryFolder(Dataset):
    def __init__(self, paths: List[str], image_size: int, skip_bad: bool = False) -> None:
        self.paths, self.image_size, self.skip_bad = paths, image_size, skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            img = read_image(self.paths[index])
        except BadSampleError as e:
            if not self.skip_bad:
                raise BadSampleError(e.path, f"{e.reason} (--skip_bad_queries true skips unreadable photos and "
                                             "lists them in summary.json)") from e
            return {"bad_query": (self.paths[index], e.reason)}
        h, w = img.shape[:2]
        return {"query": image_to_tensor(resize_image(img, self.image_size)),
                "query_original_size": torch.tensor([h, w], dtype=torch.int64),
                "query_path": self.paths[index], "index": torch.tensor(index, dtype=torch.int64),
                "exif_orientation": exif_orientation(self.paths[index])}


def collate_queries(items: List[Dict]) -> Dict:
    """``collate_dicts`` of the readable queries; unreadable ones (skip mode) listed in
    ``skipped_queries`` (``[(path, reason)]``); a batch of only those has ``query [0,3,S,S]``."""
    good = [it for it in items if "bad_query" not in it]
    skipped = [it["bad_query"] for it in items if "bad_query" in it]
    if good:
        batch = collate_dicts(good)
    else:
        batch = {"query": torch.zeros(0, 3, 1, 1), "query_original_size": torch.zeros(0, 2, dtype=torch.int64),
                 "query_path": [], "index": torch.zeros(0, dtype=torch.int64), "exif_orientation": []}
    batch["skipped_queries"] = skipped
    return batch


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
        return DataLoader(_QueryFolder(self.query_paths, self._size(), self.skip_bad_queries),
                          batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_queries)


__all__ = ["EpisodicDataModule", "UnlabelledDataModule", "SupportQueryFolderDataModule",
           "build_fewshot_dataset", "DATASETS", "BadSampleError"]
