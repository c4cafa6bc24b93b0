"""fsseg data package: few-shot episodes, benchmarks, synthetic data, unlabelled and predict folders.

Stand-alone: imports nothing from ``fsseg``. Batch formats: docs/CONTRACTS.md.
"""

from .base import FewShotDataset, FileFewShotDataset
from .coco import Coco20i
from .datamodule import (
    DATASETS,
    EpisodicDataModule,
    SupportQueryFolderDataModule,
    UnlabelledDataModule,
    build_fewshot_dataset,
)
from .episodes import (
    Episode,
    EpisodeDataset,
    StridedDistributedSampler,
    collate_dicts,
    collate_episodes,
    eligible_classes,
    fixed_episode_list,
    rank_slice,
    sample_episode,
)
from .folder import FolderDataset, UnlabelledImageFolder
from .fss import FSS1000
from .industrial import Industrial
from .isic3 import ISIC3
from .kvasir import KvasirSEG
from .lung import LungCancer
from .masks import (
    IGNORE_INDEX,
    BadSampleError,
    detect_mask_encoding,
    list_images,
    read_binary_mask,
    read_image,
    read_mask,
)
from .nucleus import Nucleus
from .pascal import Pascal5i
from .pool import PooledDataset
from .pothole import Pothole
from .specialize import BudgetSpecializationDataModule, SpecializationDataModule
from .synthetic import SyntheticFewShot, base_classes, novel_classes
from .transforms import PairTransform, build_test_transform, build_train_transform
from .weedmap import WeedMap

__all__ = [
    "BadSampleError", "IGNORE_INDEX", "read_image", "read_mask", "read_binary_mask", "detect_mask_encoding",
    "list_images", "FewShotDataset", "FileFewShotDataset", "SyntheticFewShot", "base_classes",
    "novel_classes", "Pascal5i", "Coco20i", "FSS1000", "FolderDataset", "UnlabelledImageFolder",
    "Episode", "EpisodeDataset", "StridedDistributedSampler", "collate_dicts", "collate_episodes",
    "eligible_classes", "fixed_episode_list", "rank_slice", "sample_episode", "PairTransform",
    "build_train_transform", "build_test_transform", "EpisodicDataModule", "UnlabelledDataModule",
    "SupportQueryFolderDataModule", "SpecializationDataModule", "build_fewshot_dataset", "DATASETS",
    "BudgetSpecializationDataModule", "PooledDataset", "KvasirSEG", "ISIC3", "Nucleus", "Pothole",
    "WeedMap", "LungCancer", "Industrial",
]
