"""Fast tests of fsseg.models (tiny DINOv2, tiny decoder, 56-112 px images)."""
from __future__ import annotations

import pytest
import torch

from fsseg.models import (
    FSDINO,
    SEGMENTERS,
    build_segmenter,
    masked_average_pool,
)
from fsseg.models.segmenters import takes
from fsseg.params import count, parameter_table

METHODS = SEGMENTERS.names(where=lambda s: s.preset_of is None)

TINY = dict(
    backbone="dinov2_tiny",
    image_size=112,
    decoder_dim=32,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_heads=2,
)
SMALL_CORRELATION = dict(mid_channels=32, head_channels=(16, 8, 8))


def tiny(variant: str, **kw) -> FSDINO:
    torch.manual_seed(0)
    spec = {"name": variant}
    # the compact MHCM (uino) has no reduction convs / 3-stage head to shrink
    if takes(variant, "correlation_kwargs") and variant != "uino":
        spec["correlation_kwargs"] = SMALL_CORRELATION
    if takes(variant, "mamba_backend"):
        spec["mamba_backend"] = "torch"
    return build_segmenter({**spec, **kw}, **TINY)


def rand_masks(*shape):
    m = (torch.rand(*shape) > 0.5).float()
    m[..., :8, :8] = 1.0  # never empty
    return m


@pytest.mark.slow
@pytest.mark.parametrize("variant", METHODS)
def test_shapes_all_variants(variant):
    m = tiny(variant).eval()
    with torch.no_grad():
        for K, (H, W) in [(1, (112, 112)), (5, (56, 56)), (2, (70, 98))]:
            out = m(torch.rand(2, 3, H, W), torch.rand(2, K, 3, H, W), rand_masks(2, K, H, W))
            assert out["logits"].shape == (2, H, W)
            assert out["prior"].shape == (2, H, W)
            assert torch.isfinite(out["logits"]).all() and torch.isfinite(out["prior"]).all()
        mc = m.segment_multiclass(torch.rand(2, 3, 56, 70), torch.rand(2, 3, 2, 3, 56, 70), rand_masks(2, 3, 2, 56, 70))
    assert mc["logits"].shape == (2, 3, 56, 70)
    assert mc["pred"].shape == (2, 56, 70) and mc["pred"].dtype == torch.int64
    assert 0 <= int(mc["pred"].min()) and int(mc["pred"].max()) <= 3
    full = torch.cat([torch.zeros_like(mc["logits"][:, :1]), mc["logits"]], 1)
    assert torch.equal(mc["pred"], full.argmax(1))


def test_paper_row_names_are_aliases():
    assert SEGMENTERS.canonical("BA+PCS") == "ba_pcs"
    assert SEGMENTERS.canonical("BA+SVP+PCS") == "compact"
    assert SEGMENTERS.canonical("BA+SVP+PCS+4D") == "full"
    assert SEGMENTERS.canonical("UINO-FSS") == "uino"
    with pytest.raises(KeyError, match="unknown segmenter 'nope'"):
        SEGMENTERS.canonical("nope")


def test_ba_pcs_uses_empty_sparse_prompt():
    m = tiny("ba_pcs")
    enc = m.encode_support(torch.rand(1, 2, 3, 56, 56), rand_masks(1, 2, 56, 56))
    assert enc.sparse.shape == (1, 0, 32)
    assert m.svp is None and m.correlation is None


def test_per_shot_tokens():
    m = tiny("compact", svp_kwargs=dict(per_shot_tokens=True))
    enc = m.encode_support(torch.rand(1, 3, 3, 56, 56), rand_masks(1, 3, 56, 56))
    assert enc.sparse.shape == (1, 3, 32)
    out = m.decode(m.extract(torch.rand(1, 3, 56, 56)), enc, (56, 56))
    assert out["logits"].shape == (1, 56, 56)


@pytest.mark.parametrize("variant", ["compact", "full", "uino"])
def test_gradients_frozen_and_trainable(variant):
    m = tiny(variant)
    m.train()
    assert not m.encoder.training and not m.adapter.training  # frozen parts stay in eval mode
    out = m(torch.rand(2, 3, 56, 56), torch.rand(2, 2, 3, 56, 56), rand_masks(2, 2, 56, 56))
    (out["logits"].mean() + out["prior"].mean()).backward()
    for name, p in list(m.encoder.named_parameters()) + list(m.adapter.named_parameters()):
        assert not p.requires_grad and p.grad is None, name
    for part in ("svp", "correlation", "decoder", "pe_layer", "mask_downscaling"):
        mod = getattr(m, part)
        if mod is None:
            continue
        params = [(n, p) for n, p in mod.named_parameters() if p.requires_grad]
        assert params, part
        for n, p in params:
            assert p.grad is not None, f"{part}.{n} got no gradient"
    assert any(p.grad.abs().sum() > 0 for p in m.decoder.parameters() if p.grad is not None)


def test_unfrozen_adapter_gets_gradient():
    m = tiny("compact", freeze_adapter=False)
    out = m(torch.rand(1, 3, 56, 56), torch.rand(1, 1, 3, 56, 56), rand_masks(1, 1, 56, 56))
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in m.adapter.parameters())
    assert all(p.grad is None for p in m.encoder.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["compact", "full", "uino"])
def test_encode_support_once_decode_many(variant):
    m = tiny(variant).eval()
    sup, sm = torch.rand(1, 3, 3, 70, 98), rand_masks(1, 3, 70, 98)
    queries = [torch.rand(1, 3, 70, 98) for _ in range(3)]
    with torch.no_grad():
        enc = m.encode_support(sup, sm)
        # cached support features path gives the same encoding
        feats = m.extract(sup.flatten(0, 1), with_embedding=False)
        enc2 = m.encode_support_features(feats, sm)
        assert torch.allclose(enc.sparse, enc2.sparse) and torch.allclose(enc.prototype, enc2.prototype)
        for q in queries:
            a = m.decode(m.extract(q), enc, (70, 98))
            b = m(q, sup, sm)
            assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
            assert torch.allclose(a["prior"], b["prior"], atol=1e-5)
        # batch of queries against a support batch of 1 (broadcast)
        qb = torch.cat(queries)
        c = m.decode(m.extract(qb), enc, (70, 98))
        ref = torch.stack([m(q, sup, sm)["logits"][0] for q in queries])
        assert torch.allclose(c["logits"], ref, atol=1e-4)


def test_empty_support_mask_error():
    with pytest.raises(ValueError, match="empty"):
        masked_average_pool(torch.rand(2, 4, 5, 5), torch.zeros(2, 70, 70))
    m = tiny("compact")
    with pytest.raises(ValueError, match="support mask is empty"):
        m.encode_support(torch.rand(1, 1, 3, 56, 56), torch.zeros(1, 1, 56, 56))
    # a one-pixel mask survives the resize to the feature grid
    mk = torch.zeros(1, 70, 70)
    mk[0, 33, 33] = 1
    assert torch.isfinite(masked_average_pool(torch.rand(1, 4, 5, 5), mk)).all()


def test_shot_fusion_options():
    for sf in ("mean_corr", "mean_prior"):
        m = tiny("full", correlation_kwargs=dict(mid_channels=32, head_channels=(16, 8, 8), shot_fusion=sf)).eval()
        with torch.no_grad():
            out = m(torch.rand(1, 3, 56, 56), torch.rand(1, 3, 3, 56, 56), rand_masks(1, 3, 56, 56))
        assert out["prior"].shape == (1, 56, 56)
    with pytest.raises(ValueError, match="shot_fusion"):
        tiny("full", correlation_kwargs=dict(shot_fusion="max"))


def test_parameter_counts_dinov2_b_518():
    models = {}
    with torch.device("meta"):
        for v in METHODS:
            spec = {"name": v, "mamba_backend": "torch"} if takes(v, "mamba_backend") else {"name": v}
            models[v] = build_segmenter(spec, image_size=518)
    full, compact = models["full"], models["compact"]
    assert count(full.adapter) == 1_249_408  # "~1.25M" (FS-DINO sec. 3.3.1)
    assert count(full.correlation) == 3_703_632  # 4D module (~3.70M)
    assert count(full.pcs) == 0
    # compact: SVP + decoder (trainable) + PE + downscaling = 3.71M trainable in stage 2; with the
    # adapter (the paper's "5M upon DINOv2") 4.96M; all segmenter parameters 5.51M.
    tr = count(compact, True)
    assert tr == 3_708_108
    assert tr + count(compact.adapter) == 4_957_516
    assert count(compact) - count(compact.encoder) == 5_509_552
    assert count(full.encoder) == 86_579_712  # DINOv2 ViT-B/14
    table = parameter_table()
    assert "4D correlation" in table and "compact" in table


@pytest.mark.parametrize("masking", ["features", "none"])
def test_shot_mean_volume_is_the_mean_of_the_shot_volumes(masking):
    # the correlation is linear in the normalised, masked support features: the mean_corr fusion
    # computes one volume of the mean support instead of K volumes (fsseg/models/correlation.py)
    from fsseg.models.correlation import correlation_volume

    gen = torch.Generator().manual_seed(0)
    fq, fs = torch.randn(2, 32, 12, 12, generator=gen), torch.randn(2, 4, 32, 12, 12, generator=gen)
    masks = (torch.rand(2, 4, 48, 48, generator=gen) > 0.6).float()
    per_shot = correlation_volume(fq, fs, masks, 9, masking)
    mean = correlation_volume(fq, fs, masks, 9, masking, shot_mean=True)
    assert per_shot.shape == (2, 4, 81, 9, 9) and mean.shape == (2, 1, 81, 9, 9)
    torch.testing.assert_close(mean, per_shot.mean(dim=1, keepdim=True), rtol=0, atol=1e-6)
    one = correlation_volume(fq, fs[:, :1], masks[:, :1], 9, masking, shot_mean=True)
    assert torch.equal(one, correlation_volume(fq, fs[:, :1], masks[:, :1], 9, masking))


def test_mamba_fallback_on_a_gpu_warns_once_with_the_import_error(tmp_path, monkeypatch):
    """A broken mamba-ssm CUDA build: ``auto`` falls back to the torch scan on a CUDA input and says so
    once, with the import error (it used to swallow every error silently)."""
    import sys
    import warnings
    from types import SimpleNamespace

    from fsseg.models import mamba

    pkg = tmp_path / "mamba_ssm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mamba_ssm", raising=False)
    monkeypatch.setattr(mamba, "_import_error", [])
    monkeypatch.setattr(mamba, "_warned", [])
    layer = mamba.MambaLayer(16, backend="auto")
    cuda_input = SimpleNamespace(is_cuda=True)  # what the choice reads of the input
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not layer._use_cuda(cuda_input) and not layer._use_cuda(cuda_input)
    messages = [str(w.message) for w in caught if "mamba-ssm" in str(w.message)]
    assert len(messages) == 1 and "OSError: libcudart.so.12" in messages[0], messages
    with pytest.raises(ImportError, match="libcudart"):
        mamba.MambaLayer(16, backend="cuda")
