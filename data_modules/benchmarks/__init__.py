"""The benchmarks fsseg knows, one module each (reader, protocol rules, ``fsseg prepare`` converter),
registered by name in ``BENCHMARKS`` (``benchmark.py``). A benchmark defined elsewhere registers
itself the same way and is named ``package.module:name`` (``--data.dataset my_pkg.my_bench:mine``).

Episodic (``EpisodicDataModule``): synthetic, folder, pascal5i, coco20i, fss1000 and PATNet's
cross-domain targets deepglobe, isic_patnet, chest_xray. Pooled (DistillFSS's protocol,
``BudgetSpecializationDataModule``): kvasir, isic_distillfss, nucleus, pothole, weedmap, lung, industrial.
"""

from . import (  # noqa: F401  (each module registers its benchmark)
    chest_xray,
    coco20i,
    deepglobe,
    folder,
    fss1000,
    industrial,
    isic_distillfss,
    isic_patnet,
    kvasir,
    lung,
    nucleus,
    pascal5i,
    pothole,
    synthetic,
    weedmap,
)
from .benchmark import (
    BENCHMARKS,
    Benchmark,
    EpisodicBenchmark,
    PooledBenchmark,
    ReaderSettings,
    episodic_benchmark,
    episodic_names,
    pooled_benchmark,
    pooled_names,
)

__all__ = ["BENCHMARKS", "Benchmark", "EpisodicBenchmark", "PooledBenchmark", "ReaderSettings",
           "episodic_benchmark", "pooled_benchmark", "episodic_names", "pooled_names"]
