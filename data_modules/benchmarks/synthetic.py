"""The synthetic benchmark (``readers/synthetic.py``): shapes x textures x colours, rendered on the
fly, so the demo and the tests run without data."""

from __future__ import annotations

from typing import Dict

from ..readers.synthetic import SyntheticFewShot
from .benchmark import BENCHMARKS, EpisodicBenchmark, ReaderSettings


@BENCHMARKS.register("synthetic")
class SyntheticBenchmark(EpisodicBenchmark):
    needs_root = False

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> SyntheticFewShot:
        return SyntheticFewShot(fold=settings.fold, split=split, seed=settings.seed,
                                image_size=settings.synthetic_image_size,
                                images_per_class=settings.synthetic_images_per_class)
