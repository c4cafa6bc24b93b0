"""fsseg.kernels (AVX512-BF16 attention and fp32-exact dot products of bf16 rows): the same function
as torch's ops at the same precision, used exactly where they apply, and a clear fallback elsewhere.
No timing assertions (speed is in `make bench`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fsseg.kernels
from fsseg.kernels import bf16_kernels_status
from fsseg.kernels.cpu_bf16 import REQUIRED_CPU_FLAGS, missing_cpu_flags
from fsseg.models import DINOv2Encoder
from fsseg.models import correlation as corr_mod

OK, WHY = bf16_kernels_status()
needs_kernels = pytest.mark.skipif(not OK, reason=f"fsseg bf16 kernels unavailable here: {WHY}")


def test_a_cpu_without_avx512_bf16_is_refused_with_its_reason():
    skylake = {"avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    ok, why = bf16_kernels_status(cpu_flag_set=skylake)
    assert not ok and "avx512_bf16" in why
    assert missing_cpu_flags(skylake | {"avx512_bf16"}) == []
    assert bf16_kernels_status(cpu_flag_set=set(REQUIRED_CPU_FLAGS)) == (True, "")


def _split(qkv, heads):
    B, N, _ = qkv.shape
    return qkv.reshape(B, N, 3, heads, 64).permute(2, 0, 3, 1, 4).unbind(0)


def _merge(x):
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


@needs_kernels
@pytest.mark.parametrize("B,N,H,scale", [(1, 1, 2, 1.0), (2, 17, 3, 1.0), (1, 33, 1, 3.0), (2, 257, 4, 2.0),
                                         (1, 1370, 2, 1.0)])
def test_attention_is_torch_attention_at_bf16_precision(B, N, H, scale):
    # N: one token, partial 16-key tiles, partial 24-query blocks, DINOv2-B's 1370 tokens at 518
    g = torch.Generator().manual_seed(N)
    qkv = (torch.randn(B, N, 3 * H * 64, generator=g) * scale).bfloat16()
    q, k, v = _split(qkv, H)
    ref = _merge(F.scaled_dot_product_attention(q.double(), k.double(), v.double()))
    torch_bf16 = _merge(F.scaled_dot_product_attention(q, k, v)).double()
    ours = fsseg.kernels.bf16_attention(qkv, H, 64 ** -0.5)
    assert ours.dtype == torch.bfloat16 and ours.shape == (B, N, H * 64)
    err, err_torch = (ours.double() - ref).abs(), (torch_bf16 - ref).abs()
    # as close to exact attention as torch's own bf16 kernel (both round P and the output to bf16)
    assert err.mean() <= 1.1 * err_torch.mean() + 1e-6
    assert err.max() <= 2 * err_torch.max() + 1e-3


@needs_kernels
def test_attention_one_key_returns_its_value():
    # worked by hand: with one token softmax is 1, so the output is V exactly
    qkv = torch.randn(3, 1, 3 * 2 * 64).bfloat16()
    out = fsseg.kernels.bf16_attention(qkv, 2, 0.125)
    assert torch.equal(out, qkv[:, :, 2 * 2 * 64:])


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
    enc = DINOv2Encoder("dinov2_tiny", img_size=56, tap_block=1, embed_dim=128, num_heads=2, depth=2, **kw)
    for blk in enc.vit.blocks:
        blk.ls1.gamma.data.fill_(1.0)
        blk.ls2.gamma.data.fill_(1.0)
    return enc


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = {"attention": 0, "dot": 0}
    attention, dot = fsseg.kernels.bf16_attention, fsseg.kernels.bf16_scaled_dot

    def counted_attention(*a):
        calls["attention"] += 1
        return attention(*a)

    def counted_dot(*a):
        calls["dot"] += 1
        return dot(*a)

    monkeypatch.setattr(fsseg.kernels, "bf16_attention", counted_attention)
    monkeypatch.setattr(fsseg.kernels, "bf16_scaled_dot", counted_dot)
    return calls


@needs_kernels
def test_dinov2_bf16_pass_uses_the_kernel_and_agrees_with_torch(kernel_calls):
    enc = _tiny_encoder_with_live_attention().eval()
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fp32 = enc(x).last
        assert kernel_calls["attention"] == 0  # fp32 pass: torch's attention
        enc.to(torch.bfloat16)
        ours = enc(x).last.float()
        assert kernel_calls["attention"] == 2  # one per block
        for blk in enc.vit.blocks:
            blk.attn.bf16_kernel = False
        torch_bf16 = enc(x).last.float()
        assert kernel_calls["attention"] == 2
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
    off = _tiny_encoder_with_live_attention(bf16_attention_kernel=False).eval().to(torch.bfloat16)
    with torch.inference_mode():
        off(x)
    assert kernel_calls["attention"] == 4


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
    monkeypatch.setattr(corr_mod, "_bf16_dot_applies", lambda *a: False)
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
