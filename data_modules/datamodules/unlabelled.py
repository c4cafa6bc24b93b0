"""Unlabelled images for distillation: a folder, or synthetic pictures when there is none."""

from __future__ import annotations

from typing import List, Literal, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..episodes.dataset import StridedDistributedSampler, collate_dicts
from ..readers.folder import UnlabelledImageFolder
from ..readers.synthetic import NUM_CLASSES, render
from ..transforms import image_to_tensor
from .loading import loader_transport, rank_world


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
        rank, world = rank_world(getattr(self, "trainer", None))
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
