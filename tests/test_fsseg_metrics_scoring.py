"""Scoring (docs/protocols/scoring.md): the scoring size (model / square / original label size) through
fsseg.metrics and the test loops, per-seed evaluation, and the poly LR schedule of HDMNet's protocol.
HDMNet's augmentation chain: tests/test_data_modules_transforms.py."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from data_modules import EpisodicDataModule
from data_modules.episodes import EpisodeDataset, collate_dicts, fixed_episode_list
from data_modules.readers.base import FewShotDataset
from data_modules.transforms import scoring_label
from fsseg.metrics import FewShotIoU, update_scored
from fsseg.modules import FewShotModule
from fsseg.modules.fewshot import poly_lr_factor
from tests.cli_utils import csv_logger, last_value, read_metrics, run_fsseg

# -- scoring size --------------------------------------------------------------------------------


def _label(h: int, w: int) -> np.ndarray:
    """A non-square label with thin structures (lost by a coarse square resize) and an ignore band."""
    m = np.zeros((h, w), np.uint8)
    m[:, 7::9] = 1  # one-pixel vertical stripes
    m[h // 3: h // 2, w // 4: w // 2] = 1
    m[-3:, :] = 255
    return m


class _NonSquare(FewShotDataset):
    """Two classes of non-square images of different sizes, labels from ``_label``."""

    name = "nonsquare"
    SIZES = [(30, 70), (45, 40), (24, 90), (50, 64), (36, 52), (28, 80)]

    def __init__(self) -> None:
        super().__init__()
        self.class_ids, self.class_names = [0, 1], {0: "a", 1: "b"}
        self.samples_by_class = {c: [f"c{c}/{i}" for i in range(len(self.SIZES))] for c in self.class_ids}

    def _size(self, key):
        return self.SIZES[int(key.split("/")[1])]

    def load_image(self, key):
        h, w = self._size(key)
        return np.random.default_rng(list(key.encode())).integers(0, 255, (h, w, 3), dtype=np.uint8)

    def load_mask(self, key, class_id):
        return _label(*self._size(key))


def _batch(scoring_size, n=4):
    ds = _NonSquare()
    eps = fixed_episode_list(ds, shots=1, num_episodes=n, seed=0)
    eds = EpisodeDataset(ds, shots=1, episodes=eps, image_size=32, scoring_size=scoring_size)
    return ds, collate_dicts([eds[i] for i in range(n)])


def _perfect_logits(label: torch.Tensor) -> torch.Tensor:
    """Logits at the original size that are right on every labelled pixel (wrong on ignored ones)."""
    return torch.where(label == 1, 4.0, -4.0) + torch.where(label == 255, 8.0, 0.0)


def test_scoring_label_keeps_original_and_resizes_nearest_like_hsnet():
    m = _label(30, 70)
    assert torch.equal(scoring_label(m, "original"), torch.from_numpy(m.astype(np.int64)))
    s = scoring_label(m, 40)
    # torch 'nearest' (HSNet data/pascal.py:39): output pixel (i, j) reads source (floor(i*H/S), floor(j*W/S))
    rows = np.floor(np.arange(40) * 30 / 40).astype(int)
    cols = np.floor(np.arange(40) * 70 / 40).astype(int)
    assert torch.equal(s, torch.from_numpy(m[rows][:, cols].astype(np.int64)))
    with pytest.raises(ValueError, match="scoring_size"):
        scoring_label(m, "huge")


def test_perfect_at_original_size_scores_100_original_and_less_at_400():
    ds, orig = _batch("original")
    _, at400 = _batch(400)
    labels = orig["query_label_orig"]
    assert [tuple(t.shape) for t in labels] != [tuple(labels[0].shape)] * len(labels)  # sizes differ in the batch
    assert all(tuple(t.shape) == (400, 400) for t in at400["query_label_orig"])
    results = {}
    for name, batch in (("original", orig), ("400", at400)):
        metric = FewShotIoU(2)
        for i, label in enumerate(labels):  # the prediction: perfect at the original size
            logits = _perfect_logits(label)[None]
            update_scored(metric, logits, lambda x: (x > 0).long(), batch["query_mask"][i:i + 1],
                          batch["class_id"][i:i + 1], labels=batch["query_label_orig"][i:i + 1])
        results[name] = metric.compute()
    assert results["original"]["miou"] == pytest.approx(100.0)  # 255 stays excluded (wrong there)
    assert results["original"]["fbiou"] == pytest.approx(100.0)
    assert results["400"]["miou"] < 99.0


def test_model_size_scoring_is_unchanged_without_scoring_labels():
    _, batch = _batch("model")
    assert "query_label_orig" not in batch
    logits = torch.randn(batch["query_mask"].shape, generator=torch.Generator().manual_seed(0))
    a, b = FewShotIoU(2), FewShotIoU(2)
    update_scored(a, logits, lambda x: (x > 0).long(), batch["query_mask"], batch["class_id"])
    b.update((logits > 0).long(), batch["query_mask"], batch["class_id"])
    assert a.compute() == b.compute()


def test_original_size_upsamples_logits_bilinear_align_corners():
    """Model-size logits are upsampled like HDMNet test.py:244 before thresholding."""
    label = torch.from_numpy(_label(30, 70).astype(np.int64))
    logits = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    metric, expected = FewShotIoU(1), FewShotIoU(1)
    update_scored(metric, logits, lambda x: (x > 0).long(), torch.zeros(1, 8, 8, dtype=torch.long),
                  torch.tensor([0]), labels=[label])
    up = torch.nn.functional.interpolate(logits[:, None], size=(30, 70), mode="bilinear", align_corners=True)[:, 0]
    expected.update((up > 0).long(), label[None], torch.tensor([0]))
    assert metric.compute() == expected.compute()


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.mark.slow
def test_original_size_scoring_ddp_two_processes_equals_one(tmp_path, tiny_fewshot):
    """Images of several non-square sizes scored at their original size: `fsseg test` on 2 DDP
    processes (gloo, CPU) gives the same mIoU / FB-IoU as one in-process run of the same weights
    (per-image labels travel as lists, metric states are summed)."""
    rng = np.random.default_rng(0)
    sizes = [(30, 70), (45, 40), (24, 90), (50, 64), (36, 52)]
    for c in ("cat", "dog"):
        for i, (h, w) in enumerate(sizes):
            _save(f"{tmp_path}/data/{c}/images/{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            _save(f"{tmp_path}/data/{c}/masks/{i}.png", (_label(h, w) == 1).astype(np.uint8) * 255)
    data = dict(dataset="folder", root=f"{tmp_path}/data", scoring_size="original", batch_size=2,
                test_episodes=7, image_size=112, num_workers=0)
    torch.manual_seed(0)
    module = FewShotModule(segmenter={"name": "tiny", "method": "full"}, image_size=112)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    one = trainer.test(module, datamodule=EpisodicDataModule(**data), verbose=False)[0]
    ckpt = tmp_path / "weights.ckpt"
    trainer.save_checkpoint(ckpt)
    out = tmp_path / "test2"
    args = [a for k, v in data.items() if k not in ("image_size", "num_workers")
            for a in (f"--data.init_args.{k}", str(v))]
    run_fsseg(["test", *tiny_fewshot, *args, "--ckpt_path", str(ckpt), "--trainer.accelerator", "cpu",
               "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(out), *csv_logger(out)], cwd=tmp_path)
    rows = read_metrics(out)
    two = (last_value(rows, "test/miou"), last_value(rows, "test/fbiou"))
    assert two == pytest.approx((one["test/miou"], one["test/fbiou"]), abs=1e-4)
    assert 0 < two[1] < 100


# -- per-seed evaluation -------------------------------------------------------------------------


class _Tagged(Dataset):
    """Items of ``base`` at ``indices``, tagged with ``eval_seed`` = their position's seed index."""

    def __init__(self, base, indices, seed_of=None):
        self.base, self.indices, self.seed_of = base, list(indices), seed_of

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        item = dict(self.base[self.indices[i]])
        if self.seed_of is not None:  # a plain int, as EpisodeDataset gives it: collated into a list
            item["eval_seed"] = self.seed_of(self.indices[i])
        return item


class _SeededDM(EpisodicDataModule):
    """A data module with two evaluation seeds: ``eval_seeds`` and a per-item ``eval_seed``; ``keep`` selects
    episodes (to evaluate one seed's share alone)."""

    def __init__(self, eval_seeds=None, keep=None, **kw):
        super().__init__(**kw)
        self._seeds, self._keep = eval_seeds, keep

    @property
    def eval_seeds(self):
        return self._seeds or [self.seed]

    def setup(self, stage=None):
        super().setup(stage)
        ds = self.datasets.get("test")
        if ds is not None and not isinstance(ds, _Tagged):
            idx = [i for i in range(len(ds)) if self._keep is None or self._keep(i)]
            tag = (lambda i: i % 2) if self._seeds else None
            self.datasets["test"] = _Tagged(ds, idx, tag)


def _tiny_module():
    torch.manual_seed(0)
    return FewShotModule(segmenter={"name": "tiny", "method": "full"}, image_size=56, lr_schedule="none")


def _test(dm):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return trainer.test(_tiny_module(), datamodule=dm, verbose=False)[0]


def test_two_seeds_logged_each_and_mean():
    kw = dict(dataset="synthetic", image_size=56, synthetic_image_size=56, batch_size=3, test_episodes=8,
              scoring_size="original")
    both = _test(_SeededDM(eval_seeds=[510, 365], **kw))
    assert set(both) >= {"test/miou", "test/fbiou", "test/miou_seed0", "test/miou_seed1", "test/fbiou_seed1"}
    assert both["test/miou"] == pytest.approx((both["test/miou_seed0"] + both["test/miou_seed1"]) / 2, abs=1e-5)
    assert both["test/fbiou"] == pytest.approx((both["test/fbiou_seed0"] + both["test/fbiou_seed1"]) / 2, abs=1e-5)
    for s in (0, 1):  # each seed's figure is that seed's episodes evaluated alone
        alone = _test(_SeededDM(keep=lambda i, s=s: i % 2 == s, **kw))
        assert set(alone) == {"test/miou", "test/fbiou", "test/loss"}  # one seed: today's logs
        assert alone["test/miou"] == pytest.approx(both[f"test/miou_seed{s}"], abs=1e-4)
        assert alone["test/fbiou"] == pytest.approx(both[f"test/fbiou_seed{s}"], abs=1e-4)


def test_seed_index_outside_the_seed_list_is_an_error():
    m = FewShotIoU(2, num_seeds=2)
    one = torch.ones(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="seed indices"):
        m.update(one, one, torch.tensor([0]), torch.tensor([2]))


# -- poly schedule -------------------------------------------------------------------------------


def test_poly_schedule_matches_hdmnet_formula_per_iteration():
    total, base = 10, 1e-3
    module = FewShotModule(segmenter={"name": "tiny", "method": "ba_pcs"}, image_size=56, lr=base, lr_schedule="poly")
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # HDMNet train.py:299-301: current_iter = i + 1; lr = base * (1 - current_iter / max_iter) ** 0.9
    for it in (1, 2, 5, 10):
        assert seen[it - 1] == pytest.approx(base * (1 - it / total) ** 0.9)
    assert seen[0] == pytest.approx(base * 0.9 ** 0.9) and seen[-1] == 0.0
    assert poly_lr_factor(4, 10) == pytest.approx(math.pow(0.5, 0.9))


# -- specialisation honours the scoring size -----------------------------------------------------


def test_specialization_queries_carry_the_original_label_and_module_scores_there(tmp_path):
    from data_modules import SpecializationDataModule
    from fsseg.modules import SpecializeModule

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i, (h, w) in enumerate([(30, 70), (45, 40), (24, 90)]):
            _save(f"{tmp_path}/sup/{c}/images/{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            _save(f"{tmp_path}/sup/{c}/masks/{i}.png", (_label(h, w) == 1).astype(np.uint8) * 255)
    dm = SpecializationDataModule(support_dir=f"{tmp_path}/sup", val_dir=f"{tmp_path}/sup", image_size=56,
                                  batch_size=3, scoring_size="original")
    batch = next(iter(dm.test_dataloader()))
    labels = batch["query_label_orig"]
    assert [tuple(t.shape) for t in labels] == [(30, 70), (45, 40), (24, 90)]
    expected = torch.from_numpy((_label(30, 70) == 1).astype(np.int64))  # class "cat" -> index 1
    assert torch.equal(labels[0], expected)
    assert batch["query_mask"].shape == (3, 56, 56)
    torch.manual_seed(0)
    module = SpecializeModule(segmenter={"name": "tiny", "method": "compact"}, image_size=56, init_from_supports=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert res["test/miou"] == pytest.approx(5.99, abs=0.3), res  # the seeded untrained student


def test_seeded_metric_fed_one_seed_reads_like_a_one_seed_metric():
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randint(0, 2, (4, 6, 6), generator=g), torch.randint(0, 2, (4, 6, 6), generator=g)
    cls = torch.tensor([0, 1, 1, 0])
    seeded, plain = FewShotIoU(2, num_seeds=10), FewShotIoU(2)
    seeded.update(pred, tgt, cls)  # no seed index: all seed 0 (e.g. validation)
    plain.update(pred, tgt, cls)
    assert seeded.compute() == plain.compute()
    seeded.update(pred, 1 - tgt, cls, torch.full((4,), 3))
    out = seeded.compute()
    assert set(out) == {"miou", "fbiou", "iou_per_class", "miou_seed0", "fbiou_seed0", "miou_seed3", "fbiou_seed3"}
    assert out["miou"] == pytest.approx((out["miou_seed0"] + out["miou_seed3"]) / 2)


@pytest.mark.slow
def test_seeded_metric_two_gloo_processes_equal_one(tmp_path):
    from tests.ddp_metric_worker import seeded_episodes, seeded_rank

    pred, tgt, cls, seeds = seeded_episodes()
    whole = FewShotIoU(3, num_seeds=3)
    whole.update(pred, tgt, cls, seeds)
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(seeded_rank, args=(2, f"file://{tmp_path}/rendezvous", out), nprocs=2)
    two, one = torch.load(out), whole.compute()
    assert set(two) == set(one) and "miou_seed2" in one
    for key in one:
        assert two[key] == pytest.approx(one[key])
