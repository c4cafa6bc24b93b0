"""Portable checkpoints (fsseg.modules.checkpoints): a trained run moved to "another machine" (run folder and weight
files moved, originals deleted) predicts, tests and exports with the same masks; a stage-2
checkpoint needs no SAM file; checkpoints of the earlier format keep loading; `export --bundle`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsseg.cli import main, run_cli
from fsseg.export import main as export_main
from fsseg.models.stand_in_weights import write_dinov2_checkpoint, write_sam_checkpoint
from fsseg.modules.checkpoints import FROZEN_KEY
from tests.image_folders import synthetic_two_class
from tests.paths import REPO

SMALL = ["--model.init_args.segmenter", "{name: tiny}", "--model.init_args.image_size", "56",
         "--model.init_args.adapter_checkpoint", "null"]
DATA = ["--data.init_args.image_size", "56", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
        "--data.init_args.val_episodes", "2", "--data.init_args.test_episodes", "4",
        "--data.init_args.synthetic_image_size", "56", "--data.init_args.synthetic_images_per_class", "4"]


def _masks(out: Path) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


def _predict(ckpt: Path, support: Path, query: Path, out: Path, *extra: str):
    run_cli(["predict", "--ckpt_path", str(ckpt), "--data.support_dir", str(support), "--data.query_dir", str(query),
             "--output_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra])


def _test_metrics(ckpt: Path, root: Path, *extra: str) -> dict:
    cli = run_cli(["test", "--ckpt_path", str(ckpt), *DATA, "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root / "testrun"), *extra])
    return {k: v for k, v in cli.model.last_metrics.items() if not isinstance(v, dict)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small stage-2 model trained for a few steps from stand-in official DINOv2/SAM files."""
    t = tmp_path_factory.mktemp("portable")
    weights = t / "machine_a" / "weights"
    dinov2 = write_dinov2_checkpoint(weights / "dinov2_tiny_pretrain.pth", arch="dinov2_tiny", seed=0)
    sam = write_sam_checkpoint(weights / "sam_tiny.pth", variant="tiny", decoder_dim=32, decoder_mlp_dim=64,
                               decoder_heads=2)
    run = t / "machine_a" / "run"
    run_cli(["fit", *SMALL, *DATA, "--model.init_args.dinov2_checkpoint", str(dinov2),
             "--model.init_args.sam_checkpoint", str(sam), "--model.init_args.segmenter.method", "compact",
             "--data.init_args.train_episodes_per_epoch", "4", "--trainer.max_epochs", "1",
             "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run), "--trainer.callbacks",
             f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
             f'{{"dirpath": "{run / "checkpoints"}", "save_last": true}}}}]'])
    support, query = synthetic_two_class(t / "data")
    before = t / "before"
    _predict(run / "checkpoints" / "last.ckpt", support, query, before)
    metrics = _test_metrics(run / "checkpoints" / "last.ckpt", t)
    return {"t": t, "run": run, "weights": weights, "support": support, "query": query, "masks": _masks(before),
            "metrics": metrics}


@pytest.mark.slow
def test_checkpoint_records_frozen_weights_by_name_and_sha(trained):
    ck = torch.load(trained["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (rec,) = ck[FROZEN_KEY]
    assert rec["arg"] == "dinov2_checkpoint" and rec["name"] == "dinov2_tiny_pretrain.pth"
    from fsseg.models.weights import sha256_file

    assert rec["sha256"] == sha256_file(trained["weights"] / "dinov2_tiny_pretrain.pth")
    assert not any(k.startswith("model.encoder.") for k in ck["state_dict"])  # frozen file not repeated
    assert any(k.startswith("model.decoder.") for k in ck["state_dict"])  # SAM-initialised, trained


@pytest.mark.slow
def test_moved_run_predicts_tests_and_exports_the_same(trained, tmp_path, monkeypatch, capsys):
    """Move run folder + weights to "machine B", delete the originals: predict/test/export give the
    same masks (the DINOv2 file given now, or found by name in the weights cache; no SAM file)."""
    b = tmp_path / "machine_b"
    shutil.copytree(trained["run"], b / "run")
    (b / "elsewhere").mkdir(parents=True)
    shutil.copy(trained["weights"] / "dinov2_tiny_pretrain.pth", b / "elsewhere")
    moved_from = trained["t"] / "moved_away"
    shutil.move(str(trained["t"] / "machine_a"), moved_from)  # originals gone (restored below)
    try:
        ckpt = b / "run" / "checkpoints" / "last.ckpt"
        # not found anywhere: one line naming the file, where it looked, and the fix
        home = tmp_path / "home"
        monkeypatch.setenv("HOME", str(home))
        with pytest.raises(SystemExit) as e:
            main(["predict", "--ckpt_path", str(ckpt), "--data.support_dir", str(trained["support"]),
                  "--data.query_dir", str(trained["query"]), "--output_dir", str(b / "x")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: frozen weights dinov2_tiny_pretrain.pth") and "--model.init_args.dinov2_checkpoint" in line

        out = b / "pred"
        _predict(ckpt, trained["support"], trained["query"], out,
                 "--model.init_args.dinov2_checkpoint", str(b / "elsewhere" / "dinov2_tiny_pretrain.pth"))
        after = _masks(out)
        assert after.keys() == trained["masks"].keys() and len(after) == 3
        for k in after:
            np.testing.assert_array_equal(after[k], trained["masks"][k])
        # the weights cache (by official name) instead of a path
        cache = home / ".cache" / "fsseg"
        cache.mkdir(parents=True)
        shutil.copy(b / "elsewhere" / "dinov2_tiny_pretrain.pth", cache)
        assert _test_metrics(ckpt, b) == trained["metrics"]
        exp = b / "export"
        export_main(["--ckpt_path", str(ckpt), "--support_dir", str(trained["support"]), "--output_dir", str(exp),
                     "--query", str(trained["query"]), "--bundle"])
        rec = json.loads((exp / "export.json").read_text())
        assert rec["onnx_vs_torch_max_abs_diff_logits"] < 1e-3
        # the exported ONNX segments like predict did
        import onnxruntime as ort

        from data_modules import SupportQueryFolderDataModule

        dm = SupportQueryFolderDataModule(str(trained["support"]), str(trained["query"]), image_size=56)
        sess = ort.InferenceSession(str(exp / "fsseg_segmenter.onnx"), providers=["CPUExecutionProvider"])
        for batch in dm.predict_dataloader():
            pred = sess.run(["pred"], {"query": batch["query"].numpy()})[0][0]
            h, w = batch["query_original_size"][0].tolist()
            full = torch.nn.functional.interpolate(torch.from_numpy(pred)[None, None].float(), size=(h, w),
                                                   mode="nearest")[0, 0].numpy().astype(np.uint8)
            expected = trained["masks"][Path(batch["query_path"][0]).stem + ".png"]
            np.testing.assert_array_equal(full, expected)
        # the bundle file carries the frozen encoder too: predicts with no weight file anywhere
        shutil.rmtree(cache)
        out2 = b / "pred_bundle"
        _predict(exp / "fsseg_bundle.ckpt", trained["support"], trained["query"], out2)
        for k, v in _masks(out2).items():
            np.testing.assert_array_equal(v, trained["masks"][k])
    finally:
        shutil.move(str(moved_from), trained["t"] / "machine_a")


@pytest.mark.slow
def test_stage2_checkpoint_predicts_without_sam_or_adapter_file(trained, tmp_path):
    """The SAM file initialised the decoder and is never read again; the adapter comes from the checkpoint."""
    ck = torch.load(trained["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ck["hyper_parameters"]["adapter_checkpoint"] = str(tmp_path / "gone" / "adapter.ckpt")
    assert not Path(ck["hyper_parameters"]["sam_checkpoint"]).parent.joinpath("nothing").exists()
    sam = trained["weights"] / "sam_tiny.pth"
    moved = tmp_path / "sam_tiny.pth.away"
    shutil.move(str(sam), moved)
    try:
        torch.save(ck, tmp_path / "s2.ckpt")
        out = tmp_path / "pred"
        _predict(tmp_path / "s2.ckpt", trained["support"], trained["query"], out)
        for k, v in _masks(out).items():
            np.testing.assert_array_equal(v, trained["masks"][k])
    finally:
        shutil.move(str(moved), sam)


@pytest.mark.slow
def test_checkpoint_of_an_earlier_checkout_is_refused_in_one_line(trained, tmp_path):
    """Version 0.1 keeps no compatibility path: a checkpoint without the frozen-file records is
    refused naming the file and the missing records, not loaded with guessed weights."""
    from fsseg.models.weights import CheckpointMismatchError
    from fsseg.modules import FewShotModule

    ck = torch.load(trained["run"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    del ck[FROZEN_KEY]
    torch.save(ck, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointMismatchError, match=rf"old.ckpt: no {FROZEN_KEY} records") as err:
        FewShotModule.load_from_checkpoint(tmp_path / "old.ckpt")
    assert "\n" not in str(err.value)


DEMO_CKPT = REPO / "outputs" / "demo" / "fewshot" / "checkpoints" / "best.ckpt"


@pytest.mark.skipif(not DEMO_CKPT.is_file(), reason=f"no demo checkpoint at {DEMO_CKPT} (run `make demo` there)")
def test_demo_checkpoint_of_main_loads():
    from fsseg.modules import FewShotModule

    m = FewShotModule.load_from_checkpoint(DEMO_CKPT)
    assert m.hparams.image_size == 112 and m.hparams.sam_checkpoint is None


def test_stage2_checkpoint_keeps_the_stage1_adapter_settings_without_the_adapter_file(tmp_path):
    """Adapter settings read from the stage-1 checkpoint are written into the stage-2
    hyper-parameters, so the rebuilt model has them although the adapter file is gone."""
    import lightning as L

    from fsseg.models.build import PAPER_LITERAL_ADAPTER
    from fsseg.modules import FewShotModule
    from tests.test_models_teacher_adapter import _stage1_checkpoint

    stage1 = Path(_stage1_checkpoint(tmp_path, adapter_kwargs=dict(PAPER_LITERAL_ADAPTER), tap_norm=True))
    fs = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, image_size=56, adapter_checkpoint=str(stage1))
    assert fs.model.encoder.tap_norm is True and fs.model.adapter.pos_encoding == "none"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(fs)
    trainer.save_checkpoint(str(tmp_path / "s2.ckpt"))
    stage1.unlink()
    loaded = FewShotModule.load_from_checkpoint(tmp_path / "s2.ckpt")
    assert loaded.model.encoder.tap_norm is True and loaded.model.adapter.pos_encoding == "none"
    for k, v in fs.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
