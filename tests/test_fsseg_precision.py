"""One ``precision`` setting (fsseg.precision): resolution of ``auto``, bf16 on the small model, caches
keyed by dtype, and every CPU precision through `fsseg fit/test/predict`. No timing assertions."""
from __future__ import annotations

import pytest
import torch

from fsseg.cache import TensorDiskCache
from fsseg.cli import run_cli
from fsseg.models import build_segmenter
from fsseg.modules import FewShotModule
from fsseg.precision import cpu_has_native_bf16, resolve_precision
from tests.cli_utils import csv_logger, last_value, read_metrics, run_fsseg
from tests.image_folders import read_summary, synthetic_two_class
from tests.paths import CONFIGS

SMALL = dict(image_size=112)


def test_auto_is_fp32_on_a_cpu_without_native_bf16(tmp_path):
    # flags of a Skylake-SP (AVX-512 but no bf16 dot product), as /proc/cpuinfo lists them
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni\n")
    from fsseg.precision import cpu_flags

    flags = cpu_flags(cpuinfo)
    assert "avx512f" in flags and not cpu_has_native_bf16(flags)
    assert resolve_precision("auto", "cpu", cpu_flag_set=flags) == "32"
    assert resolve_precision("auto", "cpu", cpu_flag_set=flags | {"avx512_bf16"}) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", cpu_flag_set={"amx_bf16", "amx_tile"}) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", cpu_flag_set=set()) == "32"  # no /proc/cpuinfo: fp32


def test_precision_spellings_and_errors():
    assert resolve_precision("32-true") == "32" and resolve_precision(32) == "32"
    assert resolve_precision("bf16") == "bf16-mixed" and resolve_precision("bf16-mixed", "cuda") == "bf16-mixed"
    assert resolve_precision("16-mixed", "cuda") == "16-mixed"
    with pytest.raises(ValueError, match="16-mixed needs a GPU"):
        resolve_precision("16-mixed", "cpu")
    with pytest.raises(ValueError, match="not one of"):
        resolve_precision("fp8")


def test_bf16_small_model_holds_frozen_parts_in_bf16_and_agrees_with_fp32():
    torch.manual_seed(0)
    m32 = build_segmenter({"name": "tiny", "method": "full"}, **SMALL).eval()
    mb = build_segmenter({"name": "tiny", "method": "full"}, **SMALL).eval()
    mb.load_state_dict(m32.state_dict())
    mb.set_precision("bf16-mixed")
    assert mb.encoder_dtype == torch.bfloat16 and next(mb.adapter.parameters()).dtype == torch.bfloat16
    assert next(mb.decoder.parameters()).dtype == torch.float32  # trainable parts stay fp32
    g = torch.Generator().manual_seed(0)
    q, s = torch.rand(2, 3, 112, 112, generator=g), torch.rand(2, 1, 3, 112, 112, generator=g)
    mk = torch.zeros(2, 1, 112, 112)
    mk[..., 20:80, 30:90] = 1
    with torch.inference_mode():
        a, b = m32(q, s, mk), mb(q, s, mk)
    assert b["logits"].dtype == torch.float32 and b["prior"].dtype == torch.float32
    agree = ((a["logits"] > 0) == (b["logits"] > 0)).float().mean().item()
    assert agree > 0.97, agree
    assert (a["logits"] - b["logits"]).abs().max() < 0.1 * a["logits"].abs().max()
    with pytest.raises(ValueError, match="16-mixed needs a GPU"):
        mb.set_precision("16-mixed")


def test_feature_cache_never_mixes_dtypes(tmp_path):
    torch.manual_seed(0)
    module = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, **SMALL).eval()
    images = torch.rand(2, 3, 112, 112)
    names = ["a.jpg", "b.jpg"]
    ns32 = module.feature_namespace()
    module.feature_cache_store = TensorDiskCache(tmp_path, ns32)
    with torch.no_grad():
        f32 = module.extract(images, names)
        assert module.feature_cache_store.hits == 0
        module.extract(images, names)
        assert module.feature_cache_store.hits == 2  # the fp32 entries serve fp32
        module.model.set_precision("bf16-mixed")
        nsb = module.feature_namespace()
        # bf16 keys name their dtype; fp32 keys stay what they were before precisions existed
        assert ns32 != nsb and nsb.endswith("|dtype=bfloat16") and "dtype=" not in ns32
        module.feature_cache_store = TensorDiskCache(tmp_path, nsb)  # same folder, bf16 key
        fb = module.extract(images, names)
        assert module.feature_cache_store.hits == 0  # never served the fp32 entries
        assert fb.semantic.dtype == torch.bfloat16
        again = module.extract(images, names)
        assert module.feature_cache_store.hits == 2 and torch.equal(again.semantic, fb.semantic)
    assert not torch.equal(fb.semantic.float(), f32.semantic)


def test_teacher_cache_key_names_the_dtype():
    from fsseg.modules import DistillationModule

    dm = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56)
    ns32 = dm.teacher_namespace((64, 64))
    dm.set_precision("bf16-mixed")
    nsb = dm.teacher_namespace((64, 64))
    assert "dtype=" not in ns32 and nsb.endswith("|dtype=bfloat16")
    out = dm.teacher_embeddings({"image": torch.rand(1, 3, 64, 64), "path": ["x.jpg"]})
    assert out.dtype == torch.float32  # the distillation loss reads fp32


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "auto"])
def test_fit_test_predict_in_every_cpu_precision(precision, tmp_path, monkeypatch, tiny_fewshot):
    base = ["--data.init_args.dataset", "synthetic", "--data.init_args.batch_size", "2",
            "--data.init_args.train_episodes_per_epoch", "4", "--data.init_args.val_episodes", "2",
            "--data.init_args.test_episodes", "4", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--precision", precision]
    fit_dir = tmp_path / "fit"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    # in-process (as tests/test_cli_predict.py): three subprocess start-ups would cost more than the runs
    cli = run_cli(["fit", *tiny_fewshot, *base, "--trainer.max_epochs", "1", "--trainer.default_root_dir",
               str(fit_dir), *csv_logger(fit_dir),
               "--trainer.callbacks", f'[{{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
               f'"init_args": {{"dirpath": "{fit_dir / "ckpt"}", "save_last": true}}}}]'])
    want = "32-true" if resolve_precision(precision) == "32" else "bf16-mixed"
    assert cli.trainer.precision == want
    assert cli.model.model.encoder_dtype == (torch.float32 if want == "32-true" else torch.bfloat16)
    ckpt = str(fit_dir / "ckpt" / "last.ckpt")
    assert last_value(read_metrics(fit_dir), "train/loss") > 0
    run_cli(["test", *tiny_fewshot, *base, "--ckpt_path", ckpt, "--trainer.default_root_dir", str(fit_dir),
             *csv_logger(fit_dir / "test")])
    # the seeded run's figure in fp32 (7.70); bf16 (also `auto` on a CPU with bf16 dot products) within 0.3 of it
    assert last_value(read_metrics(fit_dir / "test"), "test/miou") == pytest.approx(7.70, abs=0.3)
    support, query = synthetic_two_class(tmp_path / "data")
    out = tmp_path / "pred"
    cli = run_cli(["predict", "--config", str(CONFIGS / "predict.yaml"), "--ckpt_path", ckpt,
                   "--data.support_dir", str(support), "--data.query_dir", str(query), "--data.image_size", "112",
                   "--trainer.accelerator", "cpu", "--trainer.callbacks.output_dir", str(out),
                   "--trainer.default_root_dir", str(tmp_path / "run"), "--precision", precision])
    assert cli.trainer.precision == want
    rows, _ = read_summary(out)
    assert len(rows) == 3


@pytest.mark.slow
def test_16_mixed_on_cpu_is_a_one_line_error(tmp_path, tiny_fewshot):
    proc = run_fsseg(["fit", *tiny_fewshot, "--data.init_args.dataset", "synthetic", "--trainer.accelerator", "cpu",
                      "--trainer.precision", "16-mixed", "--trainer.max_epochs", "1"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "16-mixed needs a GPU" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_export_and_demo_ui_take_the_same_precision(tmp_path):
    # export: onnxruntime's CPU provider runs fp32 graphs only; demo-ui: 16-mixed needs a GPU
    proc = run_fsseg(["export", "--small", "--support_dir", str(tmp_path), "--precision", "bf16-mixed"], cwd=tmp_path,
                     check=False)
    assert proc.returncode != 0 and "onnxruntime's CPU provider" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_fsseg(["demo-ui", "--small", "--precision", "16-mixed"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "16-mixed needs a GPU" in proc.stderr and "Traceback" not in proc.stderr


def _trainer_on(device: str, precision: str):
    """What ``setup`` reads of a Lightning trainer that will run the module on ``device`` (Lightning
    calls ``setup`` while the weights are still on the CPU)."""
    from types import SimpleNamespace

    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), precision=precision,
                           datamodule=None)


def test_precision_is_resolved_for_the_trainers_device_not_the_weights(tmp_path):
    """Stage 2 on a GPU with 16-mixed: setup runs with the weights on the CPU; it used to refuse
    ("16-mixed needs a GPU"). Stage 1 the same, with the SAM teacher kept out of float16."""
    from callbacks import FrozenFeatureCache, TeacherEmbeddingCache
    from fsseg.modules import DistillationModule

    module = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, **SMALL)
    module._trainer = _trainer_on("cuda:0", "16-mixed")
    module.setup("fit")
    assert module.model.encoder_dtype == torch.float16 and module.model.precision == "16-mixed"
    FrozenFeatureCache(cache_dir=str(tmp_path / "f")).setup(module._trainer, module, "fit")
    assert module.feature_cache_store is not None and module.model.encoder_dtype == torch.float16

    dm = DistillationModule(backbone="dinov2_tiny", teacher="tiny", resolution=56)
    dm._trainer = _trainer_on("cuda:0", "16-mixed")
    TeacherEmbeddingCache(cache_dir=str(tmp_path / "t")).setup(dm._trainer, dm, "fit")
    dm.setup("fit")
    assert next(dm.encoder.parameters()).dtype == torch.float16
    assert next(dm.teacher.parameters()).dtype in (torch.bfloat16, torch.float32)
    assert dm.teacher_precision in ("bf16-mixed", "32")
    with pytest.raises(ValueError, match="16-mixed needs a GPU"):  # a CPU trainer still refuses it
        FewShotModule(segmenter={"name": "tiny", "method": "compact"}, **SMALL).model.set_precision("16-mixed", torch.device("cpu"))


def test_sam_vit_h_width_block_under_16_mixed_stays_finite_and_close():
    """A SAM ViT-H-width block (1280 channels, 16 heads) whose residual stream holds values beyond
    float16's range, as SAM ViT-H's does (segment-anything issue 540): held and run in float16 it
    gives inf/NaN; run as ``teacher_precision('16-mixed')`` says, inside the trainer's float16
    autocast, it stays finite and close to fp32 (bf16: 1e-2 relative, fp32: 1e-5)."""
    import copy

    from segment_anything.modeling.image_encoder import Block

    from fsseg.precision import compute_dtype, precision_region, teacher_precision

    torch.manual_seed(0)
    block = Block(dim=1280, num_heads=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True, window_size=0,
                  input_size=(8, 8), norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).eval()
    x = torch.randn(1, 8, 8, 1280)
    x[..., :8] *= 1e5  # outlier channels of the residual stream
    with torch.no_grad():
        reference = block(x)
        half = copy.deepcopy(block).half()(x.half())
    assert not torch.isfinite(half).all()  # the hazard: float16 overflows
    for bf16_supported, tolerance in ((True, 1e-2), (False, 1e-5)):
        precision = teacher_precision("16-mixed", "cuda", bf16_supported=bf16_supported)
        assert precision == ("bf16-mixed" if bf16_supported else "32")
        dtype = compute_dtype(precision)
        held = copy.deepcopy(block).to(dtype)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16), precision_region(precision, "cpu"):
            out = held(x.to(dtype)).float()
        assert torch.isfinite(out).all()
        err = ((out - reference).norm() / reference.norm()).item()
        assert err < tolerance, (precision, err)
        inner = (out - reference)[..., 8:].norm() / reference[..., 8:].norm()  # the ordinary channels too
        assert inner.item() < 10 * tolerance, (precision, inner.item())
