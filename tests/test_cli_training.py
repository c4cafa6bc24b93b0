"""Stage 1 and stage 2 through the real `fsseg` command line and the shipped configs (small sizes by
CLI override), the teacher cache, the curriculum with kill-and-resume, and DDP on 2 CPU processes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks import ResolutionCurriculum, TeacherEmbeddingCache
from data_modules import UnlabelledDataModule
from fsseg.modules import DistillationModule
from tests.cli_utils import (
    csv_logger,
    last_value,
    read_metrics,
    run_fsseg,
)
from tests.paths import CONFIGS


def _curriculum_cbs(ckpt_dir: Path, cache_dir: Path, extra: str = "") -> list[str]:
    cbs = (f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
           f'{{"dirpath": "{ckpt_dir}", "save_last": true, "save_top_k": 1}}}}, '
           f'{{"class_path": "callbacks.ResolutionCurriculum", "init_args": '
           f'{{"resolutions": [28, 42, 56], "epochs_per_stage": 2}}}}, '
           f'{{"class_path": "callbacks.TeacherEmbeddingCache", "init_args": {{"cache_dir": "{cache_dir}"}}}}'
           f'{extra}]')
    return ["--trainer.callbacks", cbs]


@pytest.mark.slow
def test_distill_518_config_runs(tmp_path, tiny_distill):
    run_fsseg(["fit", "--config", str(CONFIGS / "distill_518.yaml"), *tiny_distill,
               "--model.init_args.resolution", "56", "--data.init_args.synthetic_images", "8",
               "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
               *csv_logger(tmp_path),
               "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{tmp_path / "ckpt"}", "save_last": true}}}}]'], cwd=tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    assert last_value(read_metrics(tmp_path), "train/loss") > 0
    # the saved config does not stop a second run in the same folder
    assert (tmp_path / "csv" / "v" / "config.yaml").exists() or list(tmp_path.rglob("config.yaml"))


def _distill_module(**kw) -> DistillationModule:
    return DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56, **kw)


def _fit(module, dm, tmp_path, callbacks, epochs=1):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, dm)
    return trainer


class _LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_teacher_cache_warm_epoch_never_runs_teacher_and_losses_match(tmp_path):
    dm = UnlabelledDataModule(root=None, image_size=128, batch_size=4, synthetic_images=12, val_fraction=0)
    L.seed_everything(0)
    cold = _distill_module()
    rec_cold = _LossRecorder()
    _fit(cold, dm, tmp_path, [TeacherEmbeddingCache(cache_dir=str(tmp_path / "cache"), dtype="float32"), rec_cold])
    assert cold.teacher_calls == 12 and cold.teacher_cache.misses == 12

    L.seed_everything(0)
    warm = _distill_module()
    rec_warm = _LossRecorder()
    _fit(warm, dm, tmp_path, [TeacherEmbeddingCache(cache_dir=str(tmp_path / "cache"), dtype="float32"), rec_warm], epochs=2)
    assert warm.teacher_calls == 0, "a warm cache must not run the teacher at all"
    assert warm.teacher_cache.hits == 24

    L.seed_everything(0)
    plain = _distill_module()
    rec_plain = _LossRecorder()
    _fit(plain, dm, tmp_path, [rec_plain])
    assert plain.teacher_calls == 12
    assert rec_cold.losses == pytest.approx(rec_plain.losses, rel=0, abs=0)
    assert rec_warm.losses[:3] == pytest.approx(rec_plain.losses, rel=0, abs=0)

    # another teacher (other weights) or another input size never reads these entries
    L.seed_everything(1)
    other = _distill_module()
    _fit(other, dm, tmp_path, [TeacherEmbeddingCache(cache_dir=str(tmp_path / "cache"))])
    assert other.teacher_calls == 12
    dm64 = UnlabelledDataModule(root=None, image_size=64, batch_size=4, synthetic_images=12, val_fraction=0)
    L.seed_everything(0)
    small = _distill_module()
    _fit(small, dm64, tmp_path, [TeacherEmbeddingCache(cache_dir=str(tmp_path / "cache"), input_size=64)])
    assert small.teacher_calls == 12


def test_curriculum_switches_resolution_by_epoch():
    cur = ResolutionCurriculum([126, 252, 518], epochs_per_stage=[1, 2, 3])
    assert [cur.resolution_at(e) for e in range(7)] == [126, 252, 252, 518, 518, 518, 518]
    assert cur.total_epochs == 6
    with pytest.raises(ValueError):
        ResolutionCurriculum([126, 252], epochs_per_stage=[1])


@pytest.mark.slow
def test_curriculum_kill_and_resume_ends_with_same_adapter(tmp_path, tiny_distill):
    """SIGKILL a curriculum run in the middle of stage 2, resume from last.ckpt: it continues at the
    right resolution and ends with exactly the adapter of an uninterrupted run (same seed)."""
    common = ["fit", "--config", str(CONFIGS / "distill_curriculum.yaml"), *tiny_distill,
              "--data.init_args.synthetic_images", "16", "--data.init_args.val_fraction", "0.25",
              "--trainer.max_epochs", "6", "--trainer.enable_progress_bar", "false"]
    full = tmp_path / "full"
    run_fsseg(common + ["--trainer.default_root_dir", str(full), *csv_logger(full),
                        *_curriculum_cbs(full / "ckpt", tmp_path / "cache_full")], cwd=tmp_path)

    part = tmp_path / "part"
    # 3 train batches per epoch: step 10 is inside epoch 3 (stage 2, resolution 42)
    killer = ', {"class_path": "tests.fault_injection.SigkillAtStep", "init_args": {"step": 10}}'
    proc = run_fsseg(common + ["--trainer.default_root_dir", str(part), *csv_logger(part),
                               *_curriculum_cbs(part / "ckpt", tmp_path / "cache_part", killer)],
                     cwd=tmp_path, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt = torch.load(part / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2  # killed during epoch index 3; the last complete epoch checkpoint is intact

    run_fsseg(common + ["--trainer.default_root_dir", str(part), *csv_logger(part / "resumed"),
                        *_curriculum_cbs(part / "ckpt", tmp_path / "cache_part"),
                        "--ckpt_path", str(part / "ckpt" / "last.ckpt")], cwd=tmp_path)
    rows = read_metrics(part / "resumed")
    res = [float(r["train/resolution"]) for r in rows if r.get("train/resolution")]
    assert res and res[0] == 42.0 and res[-1] == 56.0  # resumed inside stage 2, finished in stage 3

    a = torch.load(full / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(part / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    adapter = [k for k in a if k.startswith("adapter.")]
    assert adapter
    for k in adapter:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_distillation_mse_falls_through_the_curriculum(tmp_path):
    dm = UnlabelledDataModule(root=None, image_size=128, batch_size=4, synthetic_images=24, val_fraction=0.25)
    L.seed_everything(0)
    module = _distill_module(val_resolution=56, lr=3e-3)
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ResolutionCurriculum([28, 42, 56], 2),
                                   TeacherEmbeddingCache(cache_dir=str(tmp_path / "c"))])
    first = trainer.validate(module, dm, verbose=False)[0]["val/loss"]
    trainer.fit(module, dm)
    last = trainer.validate(module, dm, verbose=False)[0]["val/loss"]
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_fewshot_config_test_on_coco128(tmp_path, tiny_fewshot, shared_data):
    """`fsseg test --config <a shipped few-shot config> --ckpt_path ...` on real COCO images."""
    cfg = str(CONFIGS / "coco20i_fsseg.yaml")
    data = ["--data.init_args.root", str(shared_data("coco128")), "--data.init_args.batch_size", "2",
            "--data.init_args.train_episodes_per_epoch", "4", "--data.init_args.val_episodes", "4",
            "--data.init_args.test_episodes", "6"]
    fit_dir = tmp_path / "fit"
    run_fsseg(["fit", "--config", cfg, *tiny_fewshot, *data, "--trainer.max_epochs", "1",
               "--trainer.default_root_dir", str(fit_dir), *csv_logger(fit_dir),
               "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{fit_dir / "ckpt"}", "save_last": true}}}}]'], cwd=tmp_path)
    for _ in range(2):  # re-running test in the same run folder must not fail on the saved config
        run_fsseg(["test", "--config", cfg, *tiny_fewshot, *data, "--ckpt_path", str(fit_dir / "ckpt" / "last.ckpt"),
                   "--trainer.default_root_dir", str(fit_dir), *csv_logger(fit_dir / "test")], cwd=tmp_path)
    miou = last_value(read_metrics(fit_dir / "test"), "test/miou")
    assert miou == pytest.approx(6.86, abs=0.3)  # the seeded run's figure on coco128


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path, tiny_fewshot):
    """fit with DDP on 2 CPU processes (gloo), then test the checkpoint with 1 and 2 processes: the
    metrics are identical (episodes split without duplication, metric states summed)."""
    base = ["--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "2",
            "--data.init_args.train_episodes_per_epoch", "8", "--data.init_args.val_episodes", "6",
            "--data.init_args.test_episodes", "11", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false"]
    fit_dir = tmp_path / "fit"
    run_fsseg(["fit", *tiny_fewshot, *base, "--trainer.max_epochs", "1", "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(fit_dir), *csv_logger(fit_dir),
               "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{fit_dir / "ckpt"}", "save_last": true}}}}]'], cwd=tmp_path)
    ckpt = str(fit_dir / "ckpt" / "last.ckpt")
    results = {}
    for devices in ("1", "2"):
        out = tmp_path / f"test{devices}"
        strategy = ["--trainer.strategy", "ddp"] if devices == "2" else []
        run_fsseg(["test", *tiny_fewshot, *base, "--ckpt_path", ckpt, "--trainer.devices", devices, *strategy,
                   "--trainer.default_root_dir", str(out), *csv_logger(out)], cwd=tmp_path)
        rows = read_metrics(out)
        results[devices] = (last_value(rows, "test/miou"), last_value(rows, "test/fbiou"))
    assert results["1"] == pytest.approx(results["2"], abs=1e-4)


def test_frozen_feature_cache_serves_eval_features(tmp_path):
    """With callbacks.FrozenFeatureCache attached, evaluation reads frozen features from disk
    (default feature_cache 'off' becomes 'eval'), training recomputes them (augmented images)."""
    from callbacks import FrozenFeatureCache
    from fsseg.modules import FewShotModule

    torch.manual_seed(0)
    module = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, image_size=112)
    FrozenFeatureCache(cache_dir=str(tmp_path / "feats")).setup(None, module, "test")
    assert module.hparams.feature_cache == "off"  # derived, not rewritten into the checkpoint
    images, names = torch.rand(2, 3, 112, 112), ["a.jpg", "b.jpg"]
    module.eval()
    first = module.extract(images, names)
    second = module.extract(images, names)
    store = module.feature_cache_store
    assert (store.misses, store.hits) == (2, 2)
    assert torch.equal(first.embedding, second.embedding) and torch.equal(first.semantic, second.semantic)
    module.train()
    module.extract(images, names)
    assert (store.misses, store.hits) == (2, 2)
