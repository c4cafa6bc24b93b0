"""SupportEncoding.memo: the correlation's support-side terms are computed once per support set and
reused for every later query, exactly as if computed afresh; never under gradients; per batch size."""
from __future__ import annotations

import pytest
import torch

from fsseg.kernels.cosine_volume import onednn_support_query_products
from fsseg.kernels.onednn_linear import onednn_linear_available
from fsseg.models.correlation import SupportMemo, correlation_volume
from tests.test_models_fsdino import rand_masks, tiny


def _encode(m, K, B=1, size=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, mk = torch.rand(B, K, 3, size, size, generator=g), rand_masks(B, K, size, size)
    return m.encode_support(s, mk)


@pytest.mark.parametrize("variant", ["full", "uino"])  # the variants with a correlation
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_memoised_decodes_equal_fresh_ones(variant, K, precision):
    m = tiny(variant).eval().set_precision(precision)
    with torch.inference_mode():
        enc = _encode(m, K)
        queries = [m.extract(torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(i))) for i in range(3)]
        memoised = [m.decode(q, enc, (56, 56))["logits"] for q in queries]
        assert enc.memo._terms, "the support-side terms were not kept"
        for q, out in zip(queries, memoised):
            enc.memo = SupportMemo()  # computed afresh for this query
            assert torch.equal(m.decode(q, enc, (56, 56))["logits"], out)


def test_memo_holds_terms_per_batch_size():
    m = tiny("full").eval()
    with torch.inference_mode():
        enc = _encode(m, 3)  # a support batch of 1, broadcast over a query batch of 2
        q2 = m.extract(torch.rand(2, 3, 56, 56))
        two = m.decode(q2, enc, (56, 56))["logits"]
        one = m.decode(q2[0:1], enc, (56, 56))["logits"]
        assert {k[1] for k in enc.memo._terms} == {1, 2}
        assert torch.allclose(one[0], two[0], atol=1e-5)


@pytest.mark.slow
def test_no_memo_under_gradients():
    # a training step builds its terms inside its graph: two decodes, two backward passes
    m = tiny("uino").train()
    enc = _encode(m, 3)
    q = m.extract(torch.rand(1, 3, 56, 56))
    for _ in range(2):
        m.decode(q, enc, (56, 56))["logits"].sum().backward(retain_graph=True)
    assert enc.memo._terms == {}
    memo = SupportMemo()
    calls = []
    for _ in range(2):
        memo.get(("k",), lambda: calls.append(1))
    assert len(calls) == 2
    with torch.no_grad():
        for _ in range(2):
            memo.get(("k",), lambda: calls.append(1))
    assert len(calls) == 3


def test_support_query_products_equal_einsum():
    g = torch.Generator().manual_seed(0)
    s, q = torch.randn(2, 3, 50, 64, generator=g), torch.randn(2, 64, 49, generator=g)
    ref = torch.einsum("bksc,bcq->bksq", s.double(), q.double())
    with torch.inference_mode():
        out = onednn_support_query_products(s, q)
    if out is None:  # no oneDNN here: the volume below runs einsum either way
        assert not onednn_linear_available()
        out = torch.einsum("bksc,bcq->bksq", s, q)
    assert out.shape == (2, 3, 50, 49) and (out.double() - ref).abs().max() < 1e-4
    # and through the volume, for a batch > 1 and K > 1 (shot mean)
    fq, fs, masks = torch.randn(2, 64, 7, 7, generator=g), torch.randn(2, 3, 64, 7, 7, generator=g), rand_masks(2, 3, 28, 28)
    with torch.inference_mode():
        fast = correlation_volume(fq, fs, masks, 7, shot_mean=True)
    slow = correlation_volume(fq, fs, masks, 7, shot_mean=True)  # outside inference: einsum
    assert fast.shape == slow.shape == (2, 1, 49, 7, 7) and torch.allclose(fast, slow, atol=1e-6)
