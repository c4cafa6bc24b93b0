"""What a benchmark is to fsseg, and the one table benchmarks are found in by name.

A benchmark is one module in this folder (or any importable module, named ``package.module:name``):
its reader, a ``Benchmark`` subclass registered with ``@BENCHMARKS.register(name)`` that says how the
reader is built and which protocol rules apply to it (class attributes, below), and optionally the
converter ``fsseg prepare <name>`` runs. ``EpisodicDataModule`` reads an ``EpisodicBenchmark``, the
DistillFSS budget module a ``PooledBenchmark``; the protocols (``episodes/protocols.py``) read the
attributes instead of testing names.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from fsseg.registry import Registry

from ..hdmnet_augment import HDMNET_SCALE
from ..readers.base import FewShotDataset

BENCHMARKS = Registry("benchmark", "--data.dataset")


@dataclass
class ReaderSettings:
    """The data settings of ``EpisodicDataModule`` a benchmark's reader may use."""

    root: Optional[str] = None
    fold: int = 0
    split_dir: Optional[str] = None
    mask_encoding: str = "auto"
    seed: int = 0
    synthetic_image_size: int = 112
    synthetic_images_per_class: int = 50
    holdout_fraction: float = 0.0
    classes: Optional[List[str]] = None
    mask_index_dir: Optional[str] = None


class Benchmark:
    """Base of every benchmark. ``prepare_help`` non-empty: ``fsseg prepare <name>`` builds its layout
    from the official downloads (``add_prepare_arguments`` + ``prepare``)."""

    prepare_help = ""

    @classmethod
    def add_prepare_arguments(cls, parser: argparse.ArgumentParser) -> None:
        pass

    @classmethod
    def prepare(cls, args: argparse.Namespace) -> None:
        raise NotImplementedError


class EpisodicBenchmark(Benchmark):
    """A benchmark read split by split into few-shot episodes (``EpisodicDataModule``).

    Protocol rules, as attributes (docs/protocols/):

    * ``needs_root``: read from ``data.root`` (``synthetic`` renders its images).
    * ``class_split``: train/val/test use different classes (not ``folder``: your own data).
    * ``has_folds``: ``fold`` picks the novel classes (an episode file's fold is checked against it).
    * ``hdmnet_area_rule``: HDMNet's reader options apply (util/dataset.py:24-80: classes counted
      from 2*32*32 pixels, training images holding a novel class dropped).
    * ``hdmnet_scale``: HDMNet's augmentation scale range (its PASCAL / COCO configs).
    * ``hsnet_draw``: how HSNet draws this benchmark's episodes: ``list`` (the list order, pools from
      the list, data/pascal.py), ``class_uniform`` (a uniform class, then a uniform query, data/coco.py)
      or ``numeric_supports`` (the list order, supports in numeric file order, data/fss.py).
    * ``every_image_by_default``: the default test count (1000) means every test image once (HSNet
      data/fss.py:31-32; PATNet's FSS-1000 on any split).
    * ``patnet_as_hsnet``: PATNet draws it with HSNet's code (its PASCAL / COCO readers are HSNet's);
      otherwise with ``episodes.patnet.patnet_episode_list``.
    """

    needs_root = True
    class_split = True
    has_folds = True
    hdmnet_area_rule = False
    hdmnet_scale: Tuple[float, float] = HDMNET_SCALE["pascal"]
    hsnet_draw = "list"
    every_image_by_default = False
    patnet_as_hsnet = False

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict[str, Any]) -> FewShotDataset:
        """The reader of ``split`` (train/val/test); ``options``: the protocol's reader options."""
        raise NotImplementedError


class CrossDomainTarget(EpisodicBenchmark):
    """A cross-domain target (PATNet's CD-FSS, docs/protocols/cdfss.md): test only, no folds, read by
    ``reader(root, split)``."""

    has_folds = False
    reader: type = FewShotDataset

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict[str, Any]) -> FewShotDataset:
        return cls.reader(settings.root, split)


class PooledBenchmark(Benchmark):
    """A benchmark read as one pool of labelled images, split into train / test by DistillFSS's
    rules (``BudgetSpecializationDataModule``); ``reader(root, **options)`` reads it, its keyword
    arguments being the benchmark's own options."""

    reader: type = FewShotDataset


def episodic_benchmark(name: str) -> type:
    """The ``EpisodicBenchmark`` registered as ``name``; a one-line error for any other."""
    benchmark = BENCHMARKS.get(name)
    if not issubclass(benchmark, EpisodicBenchmark):
        raise ValueError(f"benchmark {name!r} is read as one pool (data_modules.BudgetSpecializationDataModule), "
                         f"not in episodes; episodic benchmarks: {', '.join(episodic_names())}")
    return benchmark


def pooled_benchmark(name: str) -> type:
    """The ``PooledBenchmark`` registered as ``name``; a one-line error for any other."""
    benchmark = BENCHMARKS.get(name)
    if not issubclass(benchmark, PooledBenchmark):
        raise ValueError(f"benchmark {name!r} is not one of DistillFSS's pooled datasets "
                         f"({', '.join(pooled_names())}); use data_modules.EpisodicDataModule")
    return benchmark


def episodic_names() -> List[str]:
    return BENCHMARKS.names(where=lambda b: issubclass(b, EpisodicBenchmark))


def pooled_names() -> List[str]:
    return BENCHMARKS.names(where=lambda b: issubclass(b, PooledBenchmark))


__all__ = ["BENCHMARKS", "Benchmark", "EpisodicBenchmark", "CrossDomainTarget", "PooledBenchmark", "ReaderSettings",
           "episodic_benchmark", "pooled_benchmark", "episodic_names", "pooled_names"]
