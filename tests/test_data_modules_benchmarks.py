"""Adding a benchmark is one file: a ``<class>/<n>.jpg`` + ``<class>/<n>.png`` benchmark defined and
registered here only, used through ``EpisodicDataModule`` and the ``fsseg`` CLI by its name
``tests.test_data_modules_benchmarks:toy``; the built-in names resolve in the same table."""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from data_modules import BENCHMARKS, EpisodicBenchmark, EpisodicDataModule, ReaderSettings
from data_modules.readers.base import FileFewShotDataset
from fsseg.registry import RegistryError
from tests.cli_utils import REPO, run_fsseg

TOY = "tests.test_data_modules_benchmarks:toy"


class ToyReader(FileFewShotDataset):
    """``root/<class>/<n>.jpg`` with its binary mask ``root/<class>/<n>.png``; every split reads all."""

    name = "toy"

    def __init__(self, root: str) -> None:
        super().__init__("auto")
        for c, cls in enumerate(sorted(os.listdir(root))):
            self.class_ids.append(c)
            self.class_names[c] = cls
            keys = sorted(f"{cls}/{f}" for f in os.listdir(os.path.join(root, cls)) if f.endswith(".jpg"))
            self.samples_by_class[c] = keys
            for k in keys:
                self.records[k] = (os.path.join(root, k), os.path.join(root, k[:-4] + ".png"))


@BENCHMARKS.register("toy")
class ToyBenchmark(EpisodicBenchmark):
    class_split = False
    has_folds = False

    @classmethod
    def read(cls, split: str, settings: ReaderSettings, options: Dict) -> ToyReader:
        return ToyReader(settings.root)


def _toy_tree(root) -> str:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        os.makedirs(root / cls)
        for n in range(1, 5):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{n}.jpg")
            mask = np.zeros((20, 24), np.uint8)
            mask[4:12, 5 + n:15 + n] = 255
            Image.fromarray(mask).save(root / cls / f"{n}.png")
    return str(root)


def _init_args(root: str) -> dict:
    return {"dataset": TOY, "root": root, "shots": 1, "image_size": 28, "batch_size": 2, "test_episodes": 6,
            "val_episodes": 4, "train_episodes_per_epoch": 4}


def test_toy_benchmark_through_episodic_datamodule(tmp_path):
    root = _toy_tree(tmp_path / "toy")
    dm = EpisodicDataModule(**_init_args(root), holdout_fraction=0.5)
    dm.setup()
    assert isinstance(dm.datasets["test"].dataset, ToyReader) and dm.benchmark is ToyBenchmark
    batch = next(iter(dm.test_dataloader()))
    assert batch["query"].shape == (2, 3, 28, 28) and batch["support"].shape == (2, 1, 3, 28, 28)
    assert set(batch["query_mask"].unique().tolist()) == {0, 1}
    assert next(iter(dm.train_dataloader()))["query"].shape == (2, 3, 28, 28)
    queries = [ep.query for ep in dm.episode_list("test")]
    assert len(queries) == 6 and all(q.endswith(".jpg") and "/" in q for q in queries)
    assert dm.hparams.dataset == TOY  # kept as given: a rebuilt process imports this file again


def test_toy_benchmark_through_the_cli(tmp_path):
    root = _toy_tree(tmp_path / "toy")
    out = tmp_path / "episodes.json"
    data = json.dumps({"class_path": "data_modules.EpisodicDataModule", "init_args": _init_args(root)})
    run_fsseg(["episodes", "--data", data, "--split", "test", "--output", str(out)], cwd=REPO, timeout=300)
    written = json.loads(out.read_text())
    expected = EpisodicDataModule(**_init_args(root)).episodes_json("test")
    assert written["benchmark"] == TOY and written["episodes"] == expected["episodes"]


def test_builtin_names_and_errors():
    assert BENCHMARKS.canonical("pascal") == "pascal5i" and BENCHMARKS.canonical("fss") == "fss1000"
    assert {"isic_patnet", "isic_distillfss"} <= set(BENCHMARKS) and "isic" not in BENCHMARKS
    with pytest.raises(RegistryError, match=r"unknown benchmark 'isic' \(--data.dataset\)"):
        EpisodicDataModule("isic", root="x")
    with pytest.raises(ValueError, match="'kvasir' is read as one pool"):
        EpisodicDataModule("kvasir", root="x")
