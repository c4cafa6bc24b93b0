"""fsseg data package, in the order data flows:

* ``image_io.py``, ``transforms.py``: reading images and masks, resizing and augmenting them;
* ``readers/``: the ``FewShotDataset`` interface and what benchmark readers share;
* ``benchmarks/``: one module per benchmark (reader, protocol rules, ``fsseg prepare`` converter),
  registered by name in ``BENCHMARKS``;
* ``episodes/``: episodes, the named protocols drawing them, the Dataset serving them;
* ``datamodules/``: the Lightning DataModules the configs name (exported here: ``data_modules.X``).

Stand-alone but for ``fsseg.registry``. Batch formats: docs/CONTRACTS.md.
"""

from .benchmarks import BENCHMARKS, Benchmark, EpisodicBenchmark, PooledBenchmark, ReaderSettings
from .benchmarks.coco20i import Coco20i
from .benchmarks.fss1000 import FSS1000
from .benchmarks.industrial import Industrial
from .benchmarks.isic_distillfss import ISIC3
from .benchmarks.kvasir import KvasirSEG
from .benchmarks.lung import LungCancer
from .benchmarks.nucleus import Nucleus
from .benchmarks.pascal5i import Pascal5i
from .benchmarks.pothole import Pothole
from .benchmarks.weedmap import WeedMap
from .datamodules import (
    BudgetSpecializationDataModule,
    EpisodicDataModule,
    SpecializationDataModule,
    SupportQueryFolderDataModule,
    SupportSetDataModule,
    UnlabelledDataModule,
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
from .image_io import (
    IGNORE_INDEX,
    BadSampleError,
    detect_mask_encoding,
    list_images,
    read_binary_mask,
    read_image,
    read_mask,
)
from .readers.base import FewShotDataset, FileFewShotDataset
from .readers.folder import FolderDataset, UnlabelledImageFolder
from .readers.pool import PooledDataset
from .readers.synthetic import SyntheticFewShot, base_classes, novel_classes
from .transforms import PairTransform, build_test_transform, build_train_transform

__all__ = [
    "BadSampleError", "IGNORE_INDEX", "read_image", "read_mask", "read_binary_mask", "detect_mask_encoding",
    "list_images", "FewShotDataset", "FileFewShotDataset", "SyntheticFewShot", "base_classes",
    "novel_classes", "Pascal5i", "Coco20i", "FSS1000", "FolderDataset", "UnlabelledImageFolder",
    "Episode", "EpisodeDataset", "StridedDistributedSampler", "collate_dicts", "collate_episodes",
    "eligible_classes", "fixed_episode_list", "rank_slice", "sample_episode", "PairTransform",
    "build_train_transform", "build_test_transform", "EpisodicDataModule", "UnlabelledDataModule",
    "SupportQueryFolderDataModule", "SpecializationDataModule", "SupportSetDataModule",
    "BudgetSpecializationDataModule", "BENCHMARKS", "Benchmark", "EpisodicBenchmark", "PooledBenchmark",
    "ReaderSettings", "PooledDataset", "KvasirSEG", "ISIC3", "Nucleus", "Pothole", "WeedMap", "LungCancer",
    "Industrial",
]
