"""Run folders through the real ``fsseg`` command line: one folder per run, ``--ckpt_path last``
resuming a SIGKILLed fit in its own folder and W&B run, and the offline W&B run read back from its
``.wandb`` records (group, job type, tags, config, test metrics, per-class IoU table, panels)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from fsseg.results import main as results_main
from fsseg.runs import RUN_FILE, Run, list_runs
from fsseg.wandb_records import offline_runs, read_run
from tests.cli_utils import run_fsseg

STEPS_PER_EPOCH = 2  # 4 training episodes, batch 2
TRAINER_YAML = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 3
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: runs
  logger:
    - class_path: fsseg.loggers.FssegWandbLogger
      init_args:
        project: fsseg-test
  callbacks:
    - class_path: callbacks.LastAndBestCheckpoint
      init_args:
        monitor: val/miou
        mode: max
        save_top_k: 1
        save_last: true
        filename: best
    - class_path: callbacks.PredictionPanels
      init_args:
        every_n_batches: 1
        max_per_batch: 1
data:
  class_path: data_modules.EpisodicDataModule
  init_args:
    dataset: synthetic
    batch_size: 2
    train_episodes_per_epoch: 4
    val_episodes: 4
    test_episodes: 4
    synthetic_images_per_class: 6
"""
KILL_AFTER_EPOCH_0 = ["--trainer.callbacks+", '{"class_path": "tests.fault_injection.SigkillAtStep", '
                      f'"init_args": {{"step": {STEPS_PER_EPOCH + 1}}}}}']


def _config(tmp_path: Path) -> str:
    path = tmp_path / "tinyexp.yaml"
    path.write_text(TRAINER_YAML)
    return str(path)


def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sigkill_then_ckpt_path_last_resumes_same_folder_and_wandb_run(tmp_path, tiny_fewshot):
    """A fit SIGKILLed in epoch 1 and started again with the same command plus ``--ckpt_path last``
    continues at epoch 1 in the same run folder and W&B run id, with best_model_score restored, and
    ends with exactly the weights of an uninterrupted run."""
    cfg = _config(tmp_path)
    fit = ["fit", "--config", cfg, *tiny_fewshot]
    run_fsseg([*fit, "--experiment", "uninterrupted"], cwd=tmp_path)
    killed = run_fsseg([*fit, *KILL_AFTER_EPOCH_0], cwd=tmp_path, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (part,) = list_runs(tmp_path / "runs", "tinyexp")
    assert torch.load(part.checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0

    resumed = run_fsseg([*fit, "--ckpt_path", "last"], cwd=tmp_path)
    assert f"resuming run {part.path}" in resumed.stderr
    runs = list_runs(tmp_path / "runs", "tinyexp")
    assert [r.path for r in runs] == [part.path]  # no second folder
    assert Run.load(part.path).wandb_id == part.wandb_id

    rows = _metrics(part.path)
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/miou")]
    assert val_epochs == [0, 1, 2]  # epoch 0 from the killed process, 1 and 2 from the resumed one
    ckpt = torch.load(part.checkpoints / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("LastAndBestCheckpoint"))
    best = max(float(r["val/miou"]) for r in rows if r.get("val/miou"))
    assert float(state["best_model_score"]) == pytest.approx(best)  # epoch 0's score was not forgotten
    assert Path(state["best_model_path"]).parent == part.checkpoints

    # the killed attempt and the resumed one: one W&B run id (wandb sync continues the run); the records
    # the killed process had not flushed are lost with it, the resumed attempt's are whole
    wandb_dirs = offline_runs(part.path / "wandb")
    assert len(wandb_dirs) == 2 and {read_run(d)["id"] for d in wandb_dirs} == {part.wandb_id}
    after = read_run(wandb_dirs[1])
    assert (after["name"], after["group"], after["job_type"]) == (part.name, "tinyexp", "fit")
    assert [h["epoch"] for h in after["history"] if "val/miou" in h] == [1, 2]

    (full,) = list_runs(tmp_path / "runs", "uninterrupted")
    a = torch.load(full.checkpoints / "last.ckpt", weights_only=True)
    assert a["global_step"] == ckpt["global_step"] == 3 * STEPS_PER_EPOCH
    for k, v in a["state_dict"].items():
        assert torch.equal(v, ckpt["state_dict"][k]), k


@pytest.mark.slow
def test_run_name_resume_and_refused_overwrite(tmp_path, tiny_fewshot):
    cfg = _config(tmp_path)
    fit = ["fit", "--config", cfg, *tiny_fewshot, "--trainer.max_epochs", "1", "--run_name", "mine"]
    run_fsseg(fit, cwd=tmp_path)
    again = run_fsseg(fit, cwd=tmp_path, check=False)
    assert again.returncode == 2
    assert "runs/tinyexp/mine already exists: --resume mine continues it" in again.stderr
    cont = run_fsseg(["fit", "--config", cfg, *tiny_fewshot, "--trainer.max_epochs", "2", "--resume", "mine"],
                     cwd=tmp_path)
    assert "resuming run" in cont.stderr
    run = Run.load(tmp_path / "runs" / "tinyexp" / "mine")
    assert [int(r["epoch"]) for r in _metrics(run.path) if r.get("val/miou")] == [0, 1]
    missing = run_fsseg(["fit", "--config", cfg, *tiny_fewshot, "--resume", "nope"], cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "--resume nope: no run folder" in missing.stderr


@pytest.mark.slow
def test_offline_wandb_run_has_group_tags_config_metrics_table_and_panels(tmp_path, capsys, tiny_fewshot):
    cfg = _config(tmp_path)
    run_fsseg(["fit", "--config", cfg, *tiny_fewshot, "--trainer.max_epochs", "1", "--data.init_args.fold", "1",
               "--test_after_fit", "true"], cwd=tmp_path)
    (run,) = list_runs(tmp_path / "runs", "tinyexp")
    assert run.name.startswith("full-synthetic-fold1-1shot-fsseg-")
    for f in ("config.yaml", "metrics.csv", "data_summary.json", "results.json", RUN_FILE):
        assert (run.path / f).is_file(), f
    assert list((run.path / "panels" / "val").glob("*.png")) and list((run.path / "panels" / "test").glob("*.png"))

    (wdir,) = offline_runs(run.path / "wandb")
    w = read_run(wdir)
    assert (w["group"], w["job_type"], w["name"], w["id"]) == ("tinyexp", "fit", run.name, run.wandb_id)
    assert set(w["tags"]) == {"variant:full", "benchmark:synthetic", "fold:1", "shots:1", "protocol:fsseg"}
    assert w["config"]["trainer"]["max_epochs"] == 1 and w["config"]["seed_everything"] == 0
    assert w["config"]["data"]["init_args"]["fold"] == 1
    assert w["config"]["fsseg/run_dir"] == str(run.path)
    assert w["config"]["fsseg/data_summary"]["splits"]["val"]["episodes"] == 4

    results = json.loads((run.path / "results.json").read_text())
    assert results["job"] == "fit+test" and results["weights"].endswith("checkpoints/best.ckpt")
    assert w["summary"]["test/miou"] == pytest.approx(results["metrics"]["test/miou"])
    assert w["summary"]["fsseg/best_checkpoint"] == results["weights"]
    tables = [h["test/iou_per_class"] for h in w["history"] if "test/iou_per_class" in h]
    assert len(tables) == 1 and tables[0]["_type"] == "table-file"
    table = json.loads((wdir / "files" / tables[0]["path"]).read_text())
    assert table["columns"] == ["class_id", "class", "iou"]
    assert {row[1]: row[2] for row in table["data"]} == pytest.approx(results["iou_per_class"])
    assert all(not name.isdigit() for name in results["iou_per_class"])  # class names, not ids
    panels = [h[k] for h in w["history"] for k in ("val/panels", "test/panels") if k in h]
    assert panels and all(p["_type"] == "images/separated" for p in panels)
    for p in panels:
        for f in p["filenames"]:
            assert (wdir / "files" / f).stat().st_size > 0

    # fsseg results reads the same cell from the run folder and from the offline W&B run
    tables = []
    for source in ([], ["--wandb"]):
        results_main([str(tmp_path / "runs"), "--metric", "test/miou", *source])
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]
    assert f"| full | {results['metrics']['test/miou']:.1f} | {results['metrics']['test/miou']:.1f} |" in tables[0]


@pytest.mark.slow
def test_checkpoint_settings_win_and_test_only_run_is_its_own(tmp_path, tiny_fewshot):
    """``fsseg test`` of a 112-px dinov2_tiny checkpoint under a config that says nothing about the
    model (518 px, ViT-B): the checkpoint's backbone and size are used and said, the data loads at 112;
    with the data forced to another size and a W&B logger on, no "Error while merging hparams"."""
    cfg = _config(tmp_path)
    run_fsseg(["fit", "--config", cfg, *tiny_fewshot, "--trainer.max_epochs", "1", "--run_name", "src"], cwd=tmp_path)
    proc = run_fsseg(["test", "--config", cfg, "--ckpt_path", "best", "--run_name", "src"], cwd=tmp_path)
    src = tmp_path / "runs" / "tinyexp" / "src"
    assert f"--ckpt_path best: evaluating {src / 'checkpoints' / 'best.ckpt'}" in proc.stderr
    assert "was trained with segmenter name=tiny: using it (the config says name=full" in proc.stderr, proc.stderr
    assert "was trained with image_size=112: using it (the config says 518" in proc.stderr
    assert "loading the data at the checkpoint's image_size 112 (the config says 518" in proc.stderr
    test_run = Run.load(tmp_path / "runs" / "tinyexp" / "test-src")
    assert test_run.job == "test" and test_run.keys["backbone"] == "dinov2_tiny" and test_run.keys["image_size"] == 112
    results = json.loads((test_run.path / "results.json").read_text())
    assert results["job"] == "test" and results["weights"] == str(src / "checkpoints" / "best.ckpt")
    summary = json.loads((test_run.path / "data_summary.json").read_text())
    assert summary["image_size"] == 112 and summary["splits"]["test"]["episodes"] == 4

    other = run_fsseg(["test", "--config", cfg, "--ckpt_path", str(src / "checkpoints" / "best.ckpt"),
                       "--data.init_args.image_size", "84", "--data.init_args.num_workers", "0"], cwd=tmp_path)
    assert "the data loads at --data.init_args.image_size 84 although the model runs at 112" in other.stderr
    assert "Error while merging hparams" not in other.stderr


def test_fit_from_a_checkpoint_continues_the_run_that_holds_it(tmp_path, monkeypatch):
    """``fit --ckpt_path FILE`` resumes: the run whose folder holds FILE, or the ``--run_name`` run
    whose ModelCheckpoint wrote FILE elsewhere; never a refused overwrite or a second folder."""
    from fsseg import runs

    monkeypatch.delenv("FSSEG_RUN_DIR", raising=False)
    monkeypatch.setattr(runs, "_share", lambda run: run)  # no DDP hand-over in this process

    def request(**kw):
        return runs.RunRequest(root=tmp_path / "runs", experiment="exp", job="fit", keys={"variant": "full"},
                               config_files=[], **kw)

    first = runs.create_run(request())
    (first.checkpoints).mkdir(parents=True)
    (first.checkpoints / "last.ckpt").write_bytes(b"x")
    found, ckpt = runs.resolve_run(request(ckpt_path=str(first.checkpoints / "last.ckpt")))
    assert found.path == first.path and found.wandb_id == first.wandb_id and ckpt.endswith("last.ckpt")

    named = runs.create_run(request(run_name="curriculum"))
    elsewhere = tmp_path / "ckpt" / "last.ckpt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    found, ckpt = runs.resolve_run(request(run_name="curriculum", ckpt_path=str(elsewhere)))
    assert found.path == named.path and ckpt == str(elsewhere)
    assert runs.resolve_run(request(ckpt_path=str(elsewhere))) == (None, str(elsewhere))  # no run named: new run
