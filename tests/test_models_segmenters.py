"""A new method is one class and one decorator: ``toy`` below (dense prompt = the max over shots of
each shot's prototype similarity) is defined and registered in this file only, then trained, tested,
predicted with and exported through the ``fsseg`` command line, which finds it by the name
``tests.test_models_segmenters:toy`` (the subprocess imports this file)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from fsseg.models import FSDINO, build_fsdino, register_segmenter
from fsseg.models.segmenters import SpecError, paper_methods
from tests.cli_utils import CONFIGS, TINY_FEWSHOT, csv_logger, last_value, read_metrics, run_fsseg
from tests.image_folders import synthetic_two_class


class MaxShotSimilarity(FSDINO):
    """Dense prompt: per pixel, the best cosine to any single shot's prototype (not to their mean)."""

    def dense_prompt(self, fq, support, size):
        h, w = size
        shots = F.normalize(support.shot_prototypes.to(fq.dtype), dim=-1)  # [B,K,C]
        sim = torch.einsum("bchw,bkc->bkhw", F.normalize(fq, dim=1), shots).amax(1, keepdim=True)
        if tuple(sim.shape[-2:]) != (h, w):
            sim = F.interpolate(sim, size=(h, w), mode="bilinear", align_corners=False)
        dense_in = F.interpolate(sim, size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        return dense_in, self.pcs_prior_scale * sim


@register_segmenter("toy", extends=build_fsdino)  # no student_init: not specialisable
def toy(**network) -> MaxShotSimilarity:
    return build_fsdino(MaxShotSimilarity, **network)


TOY = "tests.test_models_segmenters:toy"
TOY_SPEC = f"{{name: '{TOY}', backbone: dinov2_tiny, decoder_dim: 32, decoder_mlp_dim: 64, decoder_heads: 2}}"
DATA = ["--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "2",
        "--data.init_args.train_episodes_per_epoch", "4", "--data.init_args.val_episodes", "2",
        "--data.init_args.test_episodes", "4", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
def test_toy_method_fits_tests_predicts_and_exports_through_the_cli(tmp_path):
    fit_dir = tmp_path / "fit"
    args = [*TINY_FEWSHOT, "--model.init_args.segmenter", TOY_SPEC, *DATA]
    run_fsseg(["fit", *args, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(fit_dir),
               *csv_logger(fit_dir), "--trainer.callbacks",
               f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{fit_dir / "ckpt"}", "save_last": true}}}}]'], cwd=tmp_path)
    ckpt = fit_dir / "ckpt" / "last.ckpt"
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["segmenter"]["name"] == TOY  # as given: a rebuilt process imports this file again
    assert last_value(read_metrics(fit_dir), "train/loss") > 0

    run_fsseg(["test", *args, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(fit_dir),
               *csv_logger(fit_dir / "test")], cwd=tmp_path)
    assert read_metrics(fit_dir / "test") and last_value(read_metrics(fit_dir / "test"), "test/miou") >= 0

    support, query = synthetic_two_class(tmp_path / "data")
    pred = tmp_path / "pred"
    run_fsseg(["predict", "--config", str(CONFIGS / "predict.yaml"), "--ckpt_path", str(ckpt),
               "--data.support_dir", str(support), "--data.query_dir", str(query), "--trainer.accelerator", "cpu",
               "--output_dir", str(pred)], cwd=tmp_path)
    assert len(list((pred / "masks").glob("*.png"))) == 3

    out = tmp_path / "export"
    run_fsseg(["export", "--ckpt_path", str(ckpt), "--support_dir", str(support / "red_square"),
               "--output_dir", str(out)], cwd=tmp_path)
    rec = json.loads((out / "export.json").read_text())
    assert rec["onnx_vs_torch_pred_agreement"] == 1.0


def test_unknown_key_in_the_model_spec_is_one_line_naming_key_and_flag(tmp_path):
    proc = run_fsseg(["fit", *TINY_FEWSHOT, "--model.init_args.segmenter.colour", "red", *DATA,
                      "--trainer.max_steps", "1"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "colour" in line]
    assert lines and "--model.init_args.segmenter.colour" in lines[-1] and "unknown key" in lines[-1], proc.stderr


def test_method_without_student_initialiser_is_refused_for_specialisation():
    from fsseg.modules import SpecializeModule

    with pytest.raises(SpecError) as err:
        SpecializeModule(segmenter={"name": TOY, "backbone": "dinov2_tiny", "decoder_dim": 32}, image_size=56)
    message = str(err.value)
    assert "'toy' cannot be specialised" in message and "\n" not in message


def test_ablation_sweep_lists_the_registered_paper_methods():
    sweep = yaml.safe_load((CONFIGS / "sweep_ablation.yaml").read_text())
    assert sweep["parameters"]["model.init_args.segmenter.name"]["values"] == paper_methods()


def test_results_table_rows_are_the_registered_paper_rows():
    from fsseg.models import SEGMENTERS
    from fsseg.results import ABLATION_ROWS

    assert ABLATION_ROWS == {name: SEGMENTERS.get(name).paper_row for name in paper_methods()}
