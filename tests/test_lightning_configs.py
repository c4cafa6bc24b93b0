"""The shipped configs: one per benchmark x protocol (fold and shots are arguments), base files that
exist, weights named once (``official``), and the stage-1 chain explaining a missing adapter."""

from __future__ import annotations

import re

import pytest
import yaml

from fsseg.models.build import require_previous_stage
from fsseg.models.weights import CheckpointNotFoundError, WeightsError
from fsseg.modules.checkpoints import resolve_official_weights
from tests.paths import CONFIGS

BENCHMARK_CONFIGS = {"pascal5i_hdmnet", "pascal5i_hsnet", "pascal5i_fsseg", "coco20i_hdmnet", "coco20i_hsnet",
                     "coco20i_fsseg", "fss1000_hsnet", "fss1000_fsseg"}


def _yamls():
    return sorted(p for p in CONFIGS.rglob("*.yaml"))


def test_one_config_per_benchmark_and_protocol():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert BENCHMARK_CONFIGS <= names
    assert not [n for n in names if re.search(r"fold\d|_[15]shot", n)]  # no fold/shot copies
    assert not (CONFIGS / "hdmnet").exists() and not (CONFIGS / "hsnet").exists()
    for name in BENCHMARK_CONFIGS:
        cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        args = cfg["data"]["init_args"]
        assert args.get("protocol", "fsseg") == name.split("_")[1], name
        assert args["shots"] == 1 and args.get("fold", 0) == 0, name


def test_base_files_exist_and_weights_are_named_once():
    for path in _yamls():
        text = path.read_text()
        assert "dl.fbaipublicfiles.com" not in text, path  # `official`, resolved from the code's registries
        cfg = yaml.safe_load(text) or {}
        for key in ("trainer", "model", "data"):
            if isinstance(cfg.get(key), str):
                assert (path.parent / cfg[key]).is_file(), (path, cfg[key])


def test_official_keyword_resolves_to_the_registries():
    args = {"backbone": "dinov2_vitb14", "dinov2_checkpoint": "official", "sam_checkpoint": "official"}
    assert resolve_official_weights(args) == {
        "dinov2_checkpoint": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        "sam_checkpoint": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"}
    assert args["dinov2_checkpoint"].endswith("dinov2_vitb14_pretrain.pth")
    with pytest.raises(WeightsError, match="backbone 'dinov2_tiny' has no official DINOv2 weights"):
        resolve_official_weights({"backbone": "dinov2_tiny", "dinov2_checkpoint": "official"})
    with pytest.raises(WeightsError, match="SAM encoder 'tiny' has no official weights"):
        resolve_official_weights({"teacher": "tiny", "sam_checkpoint": "official"})


def test_missing_previous_stage_says_how_to_start_otherwise(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "distill_518.yaml").read_text())
    missing = str(tmp_path / cfg["model"]["init_args"]["adapter_init"])
    with pytest.raises(CheckpointNotFoundError, match=r"adapter_init .*distill_252/checkpoints/last.ckpt: file not "
                                                      r"found.*run that stage first.*--model.init_args.adapter_init "
                                                      r"PATH.*--model.init_args.adapter_init null"):
        require_previous_stage("adapter_init", missing)
    require_previous_stage("adapter_init", None)
