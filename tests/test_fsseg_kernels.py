"""fsseg.kernels (bf16 and fp32 attention, fp32-exact dot products of bf16 rows) and OneDNNLinear: the
same function as torch's ops at the same precision, used exactly where they apply, and a clear
fallback elsewhere. No timing assertions (speed is in `make bench`)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fsseg.kernels
from fsseg.kernels import cosine_volume, cpu_kernels_status
from fsseg.kernels.cpu_kernels import REQUIRED_CPU_FLAGS, missing_cpu_flags
from fsseg.models import DINOv2Encoder
from fsseg.models import correlation as corr_mod

OK, WHY = cpu_kernels_status()
needs_kernels = pytest.mark.skipif(not OK, reason=f"fsseg CPU kernels unavailable here: {WHY}")


def test_a_cpu_without_avx512_bf16_is_refused_with_its_reason():
    skylake = {"avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    ok, why = cpu_kernels_status(cpu_flag_set=skylake)
    assert not ok and "avx512_bf16" in why
    assert missing_cpu_flags(skylake | {"avx512_bf16"}) == []
    assert cpu_kernels_status(cpu_flag_set=set(REQUIRED_CPU_FLAGS)) == (True, "")


def _split(qkv, heads):
    B, N, width = qkv.shape
    return qkv.reshape(B, N, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def _merge(x):
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def _attention_kernel(dtype):
    return fsseg.kernels.bf16_attention if dtype == torch.bfloat16 else fsseg.kernels.fp32_attention


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B,N,H,D,scale", [(1, 1, 2, 64, 1.0), (2, 17, 3, 64, 1.0), (1, 33, 1, 64, 3.0),
                                           (2, 257, 4, 64, 2.0), (1, 1370, 2, 64, 1.0), (2, 41, 8, 16, 2.0),
                                           (1, 1369, 8, 16, 1.0), (1, 300, 3, 32, 1.0)])
def test_attention_is_torch_attention_at_its_precision(B, N, H, D, scale, dtype):
    # N: one token, partial 16-key tiles, partial 24-query blocks, DINOv2-B's 1370 tokens at 518;
    # D: DINOv2's 64-wide heads, the adapter's 16 (8 heads of 128) at 518, and 32
    g = torch.Generator().manual_seed(N)
    qkv = (torch.randn(B, N, 3 * H * D, generator=g) * scale).to(dtype)
    q, k, v = _split(qkv, H)
    ref = _merge(F.scaled_dot_product_attention(q.double(), k.double(), v.double()))
    torch_same_dtype = _merge(F.scaled_dot_product_attention(q, k, v)).double()
    ours = _attention_kernel(dtype)(qkv, H, D ** -0.5)
    assert ours.dtype == dtype and ours.shape == (B, N, H * D)
    err, err_torch = (ours.double() - ref).abs(), (torch_same_dtype - ref).abs()
    if dtype == torch.bfloat16:
        # as close to exact attention as torch's own bf16 kernel (both round P and the output to bf16)
        assert err.mean() <= 1.1 * err_torch.mean() + 1e-6
        assert err.max() <= 2 * err_torch.max() + 1e-3
    else:
        # fp32 rounding of a 64-term product, an ~1-ulp exponential and an N-term sum: a few 1e-7 here,
        # the order of torch's own fp32 kernel (not bit-equal: another summation order)
        assert err.max() <= 4 * err_torch.max() + 1e-6 and err.mean() <= 3 * err_torch.mean() + 1e-8


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_one_key_returns_its_value(dtype):
    # worked by hand: with one token softmax is 1, so the output is V exactly
    qkv = torch.randn(3, 1, 3 * 2 * 64).to(dtype)
    out = _attention_kernel(dtype)(qkv, 2, 0.125)
    assert torch.equal(out, qkv[:, :, 2 * 2 * 64:])


@needs_kernels
def test_attention_kernels_refuse_the_other_dtype_and_other_head_sizes():
    with pytest.raises(RuntimeError, match="fp32_attention: needs a Float"):
        fsseg.kernels.fp32_attention(torch.zeros(1, 4, 3 * 64).bfloat16(), 1, 1.0)
    with pytest.raises(RuntimeError, match="bf16_attention: needs a BFloat16"):
        fsseg.kernels.bf16_attention(torch.zeros(1, 4, 3 * 64), 1, 1.0)
    with pytest.raises(RuntimeError, match="head size must be 16, 32 or 64, got 48"):
        fsseg.kernels.fp32_attention(torch.zeros(1, 4, 3 * 2 * 48), 2, 1.0)
    with pytest.raises(RuntimeError, match=r"qkv must be \[B, N, 3 \* heads \* head size\]"):
        fsseg.kernels.fp32_attention(torch.zeros(1, 4, 100), 2, 1.0)


@needs_kernels
def test_scaled_dot_is_exact_where_fp32_is():
    # small integers and power-of-two scales: every product and sum is exact in fp32, so the result
    # must equal the integer matmul exactly (a bf16 result could not hold it: |values| up to ~2000)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-8, 9, (2, 37, 96), generator=g).float()
    b = torch.randint(-8, 9, (2, 130, 96), generator=g).float()
    rs = 2.0 ** torch.randint(-3, 4, (2, 37), generator=g).float()
    cs = 2.0 ** torch.randint(-3, 4, (2, 130), generator=g).float()
    out = fsseg.kernels.bf16_scaled_dot(a.bfloat16(), b.bfloat16(), rs, cs)
    exact = torch.einsum("bmc,bnc->bmn", a.double(), b.double()) * rs.double()[:, :, None] * cs.double()[:, None]
    assert out.dtype == torch.float32 and torch.equal(out.double(), exact)
    assert exact.abs().max() > 256  # beyond what bf16's 8-bit mantissa holds for odd sums


@needs_kernels
def test_scaled_dot_matches_an_fp32_matmul_of_the_bf16_values():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 300, 768, generator=g).bfloat16(), torch.randn(1, 145, 768, generator=g).bfloat16()
    rs, cs = torch.rand(1, 300, generator=g), torch.rand(1, 145, generator=g)
    out = fsseg.kernels.bf16_scaled_dot(a, b, rs, cs).double()
    ref = torch.einsum("bmc,bnc->bmn", a.double(), b.double()) * rs.double()[:, :, None] * cs.double()[:, None]
    bound = torch.einsum("bmc,bnc->bmn", a.double().abs(), b.double().abs()) * rs.double()[:, :, None] * cs.double()[:, None]
    assert ((out - ref).abs() <= 768 * 2.0 ** -24 * bound + 1e-30).all()  # fp32 summation error bound


def _tiny_encoder_with_live_attention(**kw):
    # 64-dim heads as every DINOv2; layer scale 1 (the random init's 1e-5 would hide the attention)
    enc = DINOv2Encoder("dinov2_tiny", tap_block=1, embed_dim=128, num_heads=2, depth=2, **kw)
    for blk in enc.vit.blocks:
        blk.ls1.gamma.data.fill_(1.0)
        blk.ls2.gamma.data.fill_(1.0)
    return enc


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = {"attention": 0, "fp32_attention": 0, "dot": 0}
    attention, fp32_attention, dot = fsseg.kernels.bf16_attention, fsseg.kernels.fp32_attention, fsseg.kernels.bf16_scaled_dot

    def counted_attention(*a):
        calls["attention"] += 1
        return attention(*a)

    def counted_fp32_attention(*a):
        calls["fp32_attention"] += 1
        return fp32_attention(*a)

    def counted_dot(*a):
        calls["dot"] += 1
        return dot(*a)

    monkeypatch.setattr(fsseg.kernels, "bf16_attention", counted_attention)
    monkeypatch.setattr(fsseg.kernels, "fp32_attention", counted_fp32_attention)
    monkeypatch.setattr(fsseg.kernels, "bf16_scaled_dot", counted_dot)
    return calls


@needs_kernels
def test_dinov2_bf16_pass_uses_the_kernel_and_agrees_with_torch(kernel_calls):
    enc = _tiny_encoder_with_live_attention().eval()
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fp32 = enc(x).last
        assert kernel_calls == {"attention": 0, "fp32_attention": 2, "dot": 0}  # fp32 pass: one per block
        for blk in enc.vit.blocks:
            blk.attn.cpu_kernel = False
        torch_fp32 = enc(x).last
        assert (fp32 - torch_fp32).abs().max() <= 1e-5 * torch_fp32.abs().max()
        for blk in enc.vit.blocks:
            blk.attn.cpu_kernel = True
        enc.to(torch.bfloat16)
        ours = enc(x).last.float()
        assert kernel_calls["attention"] == 2  # one per block
        for blk in enc.vit.blocks:
            blk.attn.cpu_kernel = False
        torch_bf16 = enc(x).last.float()
        assert kernel_calls["attention"] == 2 and kernel_calls["fp32_attention"] == 2
    assert not torch.equal(ours, fp32)
    cos = lambda u, v: F.cosine_similarity(u.flatten(), v.flatten(), dim=0).item()  # noqa: E731
    assert cos(ours, fp32) > 0.999 and cos(torch_bf16, fp32) > 0.999
    assert (ours - fp32).abs().mean() <= 1.5 * (torch_bf16 - fp32).abs().mean() + 1e-4


@needs_kernels
def test_kernel_only_where_it_applies(kernel_calls):
    enc = _tiny_encoder_with_live_attention().eval()
    x = torch.rand(1, 3, 56, 56)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc(x)  # fp32 weights under a bf16 autocast: bf16 compute, kernel
    assert kernel_calls["attention"] == 2
    enc.to(torch.bfloat16)
    with torch.no_grad():
        enc(x)
    assert kernel_calls["attention"] == 4
    enc.vit.requires_grad_(True)  # a trainable encoder: the kernel has no backward, torch's attention
    out = enc(x).last
    out.float().sum().backward()
    assert kernel_calls["attention"] == 4 and enc.vit.blocks[0].attn.qkv.weight.grad is not None
    enc.float()
    enc(x).last.sum().backward()  # fp32 with gradients: torch's attention too
    assert kernel_calls["fp32_attention"] == 0
    off = _tiny_encoder_with_live_attention(attention_kernel=False).eval()
    with torch.inference_mode():
        off(x)
        off.to(torch.bfloat16)(x)
    assert kernel_calls["attention"] == 4 and kernel_calls["fp32_attention"] == 0


@needs_kernels
@pytest.mark.parametrize("pos", [False, True])
def test_adapter_attention_block_runs_the_kernel_as_multihead_attention(kernel_calls, pos):
    # the adapter's blocks: 8 heads of 16 on 128 channels; with a position encoding q and k see
    # x + pos while v sees x, so the packed projection is split in the kernel path
    from fsseg.models.adapter import SelfAttentionBlock

    g = torch.Generator().manual_seed(3)
    blk = SelfAttentionBlock(dim=128, num_heads=8, mlp_dim=256).eval()
    x = torch.randn(2, 300, 128, generator=g)
    p = torch.randn(1, 300, 128, generator=g) if pos else None
    with torch.inference_mode():
        ours = blk(x, p)
        assert kernel_calls["fp32_attention"] == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16 = blk(x, p).float()
        assert kernel_calls["attention"] == 1
    ref = _block_reference(blk, x, p)
    assert (ours - ref).abs().max() <= 1e-5
    assert (ours_bf16 - ref).abs().max() <= 0.1 and F.cosine_similarity(ours_bf16.flatten(), ref.flatten(), dim=0) > 0.999
    blk.train()
    torch_path = blk(x.requires_grad_(), p)  # gradients wanted: nn.MultiheadAttention, which has a backward
    torch_path.sum().backward()
    assert kernel_calls["fp32_attention"] == 1 and blk.attn.in_proj_weight.grad is not None
    assert (torch_path.detach() - ref).abs().max() <= 1e-5


def _block_reference(blk, x, pos):
    """The block's function written out in float64 (post-norm residual MHA + FFN)."""
    a, E, H = blk.attn, blk.attn.embed_dim, blk.attn.num_heads
    d = lambda t: t.detach().double()  # noqa: E731
    x = d(x)
    qk = x if pos is None else x + d(pos)
    w, b = d(a.in_proj_weight), d(a.in_proj_bias)
    q, k = (F.linear(qk, w[i * E:(i + 1) * E], b[i * E:(i + 1) * E]) for i in range(2))
    v = F.linear(x, w[2 * E:], b[2 * E:])
    heads = lambda t: t.unflatten(-1, (H, E // H)).transpose(1, 2)  # noqa: E731
    att = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).flatten(2)
    y = F.layer_norm(x + F.linear(att, d(a.out_proj.weight), d(a.out_proj.bias)), (E,), d(blk.norm1.weight), d(blk.norm1.bias))
    m = F.linear(F.relu(F.linear(y, d(blk.mlp[0].weight), d(blk.mlp[0].bias))), d(blk.mlp[3].weight), d(blk.mlp[3].bias))
    return F.layer_norm(y + m, (E,), d(blk.norm2.weight), d(blk.norm2.bias)).float()


def _bf16_valued(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16().float()


@needs_kernels
@pytest.mark.parametrize("masking", ["features", "none"])
def test_correlation_volume_bf16_path_equals_fp32_path(kernel_calls, monkeypatch, masking):
    g = 9
    fq, fs = _bf16_valued(2, 64, g, g), _bf16_valued(2, 3, 64, g, g, seed=1)
    masks = (torch.rand(2, 3, 36, 36, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    ours = corr_mod.correlation_volume(fq, fs, masks, g, masking)
    assert kernel_calls["dot"] == 1
    memo = corr_mod.SupportMemo()  # the support rows and scales kept: the same numbers
    with torch.inference_mode():
        for _ in range(2):
            assert torch.equal(corr_mod.correlation_volume(fq, fs, masks, g, masking, memo=memo), ours)
    assert kernel_calls["dot"] == 3 and list(memo._terms) == [("bf16_rows", 2, g, masking)]
    monkeypatch.setattr(cosine_volume, "bf16_dot_applies", lambda *a: False)
    ref = corr_mod.correlation_volume(fq, fs, masks, g, masking)
    assert ours.shape == ref.shape == (2, 3, g * g, g, g) and ours.dtype == torch.float32
    assert (ours - ref).abs().max() < 2e-6  # cosines: both fp32 sums of the same products


@needs_kernels
def test_correlation_volume_keeps_fp32_for_values_bf16_cannot_hold(kernel_calls):
    g = 9
    fq = torch.randn(1, 64, g, g)  # an fp32 encoder's features: not bf16 numbers
    fs = _bf16_valued(1, 2, 64, g, g)
    masks = torch.ones(1, 2, 18, 18)
    corr_mod.correlation_volume(fq, fs, masks, g)
    corr_mod.correlation_volume(_bf16_valued(1, 64, 12, 12), fs, masks, g)  # resized to g: fp32 values
    assert kernel_calls["dot"] == 0


# --- OneDNNLinear: DINOv2's linear layers on oneDNN for CPU inference ---------------------------------
from fsseg.kernels import onednn_linear as onednn_mod  # noqa: E402
from fsseg.kernels.onednn_linear import OneDNNLinear  # noqa: E402

needs_onednn = pytest.mark.skipif(not onednn_mod.onednn_linear_available(), reason="no oneDNN linear op here")


@needs_onednn
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_linear_is_the_linear_layer(dtype, gelu):
    g = torch.Generator().manual_seed(0)
    plain = torch.nn.Linear(96, 200)
    layer = OneDNNLinear.adopt(plain).to(dtype)
    assert layer.weight is plain.weight or layer.weight.dtype != plain.weight.dtype  # adopted, not copied
    x = torch.randn(2, 37, 96, generator=g).to(dtype)
    with torch.inference_mode():
        assert layer.onednn_applies(x)
        ours = layer(x, gelu=gelu).double()
        torch_out = F.linear(x, layer.weight, layer.bias)
        torch_out = (F.gelu(torch_out) if gelu else torch_out).double()
    exact = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    exact = F.gelu(exact) if gelu else exact
    # as close to the exact result as torch's own op: fp32 summation order / one bf16 rounding
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert (ours - exact).abs().max() <= tol * exact.abs().max()
    assert (ours - exact).abs().mean() <= 2 * (torch_out - exact).abs().mean() + 1e-7


@needs_onednn
def test_onednn_linear_only_where_it_applies():
    layer = OneDNNLinear.adopt(torch.nn.Linear(64, 32))
    x = torch.randn(3, 64)
    assert not layer.onednn_applies(x)  # trainable weights, gradients on: F.linear (the fused op has no backward)
    with torch.no_grad():
        assert layer.onednn_applies(x)
    layer.requires_grad_(False)  # frozen, as DINOv2
    assert layer.onednn_applies(x)
    assert not layer.onednn_applies(x.requires_grad_(True))  # gradients through the input: F.linear
    x = x.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer.onednn_applies(x)  # autocast decides F.linear's dtype
    assert not layer.onednn_applies(x.bfloat16())  # fp32 weights, bf16 input: F.linear's error
    assert not layer.onednn_applies(x.half())
    layer.enabled = False
    assert not layer.onednn_applies(x)
    layer.enabled = True
    traced = torch.jit.trace(layer, (x,), check_trace=False)  # what the TorchScript ONNX exporter records
    assert "mkldnn" not in str(traced.graph) and "linear" in str(traced.graph)
    assert torch.allclose(traced(x), layer(x), atol=1e-6)


def test_dinov2_blocks_use_onednn_linears_with_the_same_keys_and_flops():
    from fsseg.flops import count_flops

    fast = _tiny_encoder_with_live_attention().eval()
    plain = _tiny_encoder_with_live_attention(onednn_linears=False, attention_kernel=False).eval()
    plain.load_state_dict(fast.state_dict())
    linears = [m for m in fast.vit.blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 4 and all(isinstance(m, OneDNNLinear) for m in linears)  # qkv, proj, fc1, fc2
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    flops = {}
    with torch.inference_mode():
        for name, enc in (("fast", fast), ("plain", plain)):
            flops[name] = count_flops(lambda enc=enc: enc(x))
            out = enc(x)
        assert (out.last - fast(x).last).abs().max() <= 1e-5 * out.last.abs().max()
    # the fused ops and fsseg's kernels count as the ops they replace (make bench reads GFLOP/s from this)
    assert flops["fast"] == flops["plain"] > 0


@needs_onednn
def test_packed_weight_follows_every_change_of_the_weight():
    import copy

    layer = OneDNNLinear.adopt(torch.nn.Linear(64, 32)).requires_grad_(False)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))

    def agrees(m):
        return torch.allclose(m(x), F.linear(x, m.weight, m.bias), atol=1e-5)

    with torch.no_grad():
        assert agrees(layer) and "_packed" in layer.__dict__
        layer.weight.mul_(-2)  # in place: a stale packed copy would be a silent wrong result
        assert agrees(layer)
        layer.load_state_dict({"weight": torch.randn(32, 64), "bias": torch.zeros(32)})  # copies in place
        assert agrees(layer)
        clone = copy.deepcopy(layer)
        assert "_packed" not in clone.__dict__ and agrees(clone)
        layer.weight = torch.nn.Parameter(torch.randn(32, 64), requires_grad=False)  # a new tensor
        assert agrees(layer)
        layer.to(torch.bfloat16)
        out = layer(x.bfloat16())
        assert out.dtype == torch.bfloat16
        # torch's bf16 linear of the same bf16 numbers, to one rounding of the output (8-bit mantissa)
        ref = F.linear(x.bfloat16(), layer.weight, layer.bias).float()
        assert torch.allclose(out.float(), ref, rtol=2 ** -7, atol=1e-2)


@pytest.mark.slow
def test_bf16_linear_where_onednn_has_no_bf16_falls_back_to_torch():
    """An x86 CPU without AVX-512 (oneDNN limited to AVX2 here by ONEDNN_MAX_CPU_ISA, which its own
    ISA check follows): the bf16 OneDNNLinear and a bf16 FS-DINO pass run torch's F.linear instead of
    failing in oneDNN ("could not create a primitive descriptor"); fp32 keeps oneDNN."""
    import os
    import subprocess
    import sys
    import textwrap

    from tests.paths import REPO

    code = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from fsseg.kernels.onednn_linear import OneDNNLinear, onednn_dtypes
        from fsseg.models import build_segmenter
        assert onednn_dtypes() == (torch.float32,), onednn_dtypes()
        lin = OneDNNLinear(64, 32).bfloat16()
        x = torch.randn(8, 64).bfloat16()
        with torch.inference_mode():
            assert not lin.onednn_applies(x) and torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
            assert lin.float().onednn_applies(x.float())
            m = build_segmenter({"name": "compact"}, backbone="dinov2_tiny", image_size=56, decoder_dim=32, decoder_mlp_dim=64,
                             decoder_heads=2).eval().set_precision("bf16-mixed")
            out = m(torch.rand(1, 3, 56, 56), torch.rand(1, 1, 3, 56, 56), torch.ones(1, 1, 56, 56))
        assert torch.isfinite(out["logits"]).all()
        print("ok")
    """)
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.slow
def test_kernels_switch_off_and_say_plainly_why_they_cannot_build(tmp_path):
    """The documented switch (``set_cpu_kernels_enabled``, ``--cpu_kernels false``, ``FSSEG_CPU_KERNELS=0``)
    turns the kernels off; without a compiler the reason is one plain line (it was ninja's "build
    stopped"); separate checkouts build into separate folders (the source's path is in the key)."""
    import os
    import subprocess
    import sys

    from fsseg.kernels import cpu_kernels, set_cpu_kernels_enabled
    from tests.paths import REPO

    before = list(cpu_kernels._enabled)
    try:
        set_cpu_kernels_enabled(False)
        ok, why = cpu_kernels_status()
        assert not ok and "turned off" in why
    finally:
        cpu_kernels._enabled[:] = before
    code = "from fsseg.kernels import cpu_kernels_status as s; print(s()[1])"
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"), CXX="/nonexistent/c++")
    flags_ok = not missing_cpu_flags()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if flags_ok:
        assert out.stdout.strip() == "no C++ compiler to build them ('/nonexistent/c++' not on PATH; install g++, or set CXX)"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, FSSEG_CPU_KERNELS="0"), capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "turned off (--cpu_kernels false or FSSEG_CPU_KERNELS=0)"
    # another checkout (same source, another path) has its own build folder
    other = tmp_path / "checkout" / "cpu_kernels.cpp"
    other.parent.mkdir()
    other.write_bytes(cpu_kernels.SOURCE.read_bytes())
    here = cpu_kernels._build_dir()
    try:
        cpu_kernels.SOURCE = other
        assert cpu_kernels._build_dir() != here
    finally:
        cpu_kernels.SOURCE = Path(cpu_kernels.__file__).with_name("cpu_kernels.cpp")
