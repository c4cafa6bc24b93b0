"""``fsseg.flops`` against counts worked out by hand: the same figure on every attention path, so that
``make bench``'s GFLOP/s do not depend on which ops a torch release's ``FlopCounterMode`` knows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fsseg.flops import attention_backward_flops, attention_flops, count_flops
from fsseg.models import DINOv2Encoder


def _vit_by_hand(image: int, patch: int, dim: int, depth: int, mlp_ratio: int = 4) -> int:
    """A ViT's matmul FLOPs (2 per multiply-add) for one image: patch embedding, then per block
    qkv, scores, softmax-weighted sum, output projection and the two MLP layers."""
    grid = image // patch
    n = grid * grid + 1  # + the class token
    patch_embed = 2 * (3 * patch * patch) * dim * grid * grid
    qkv = 2 * n * dim * 3 * dim
    scores = 2 * n * n * dim  # summed over heads: heads x 2 n n head_dim
    weighted_sum = 2 * n * n * dim
    proj = 2 * n * dim * dim
    mlp = 2 * n * dim * (mlp_ratio * dim) * 2
    return patch_embed + depth * (qkv + scores + weighted_sum + proj + mlp)


def test_hand_count_of_a_tiny_vit():
    # 56 px, 14 px patches: 16 patches + class token = 17 tokens, width 128, 2 blocks
    assert _vit_by_hand(56, 14, 128, 2) == (2 * 588 * 128 * 16
                                            + 2 * (2 * 17 * 128 * 384 + 4 * 17 * 17 * 128 + 2 * 17 * 128 * 128
                                                   + 4 * 17 * 128 * 512))
    assert _vit_by_hand(56, 14, 128, 2) == 16_073_728


@pytest.mark.parametrize("path", ["fsseg", "torch_sdpa", "torch_math"])
def test_dinov2_counts_the_same_on_every_attention_path(path):
    """fsseg's kernels + oneDNN linears, torch's fused CPU attention (0 FLOPs in torch 2.14.1's own
    counter), and torch's decomposed attention (plain bmm) all count the hand figure."""
    enc = DINOv2Encoder("dinov2_tiny", tap_block=1, embed_dim=128, num_heads=2, depth=2,
                        onednn_linears=path == "fsseg", attention_kernel=path == "fsseg").eval()
    x = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    backend = SDPBackend.MATH if path == "torch_math" else SDPBackend.FLASH_ATTENTION
    with torch.inference_mode(), sdpa_kernel([backend]):
        assert count_flops(lambda: enc(x)) == _vit_by_hand(56, 14, 128, 2)


@pytest.mark.parametrize("backend,v_dim", [(SDPBackend.FLASH_ATTENTION, 16), (SDPBackend.MATH, 16),
                                           (SDPBackend.MATH, 8)])
def test_sdpa_forward_and_backward_follow_one_formula(backend, v_dim):
    """Fused (explicit formula) and decomposed (torch's bmm formula) attention agree forward and
    backward, with different query/key lengths (the fused CPU kernel wants the value as wide as the
    query; the decomposed one takes any width)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 7, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 3, 11, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 3, 11, v_dim, generator=g, requires_grad=True)
    fwd, bwd = attention_flops(6, 7, 11, 16, v_dim), attention_backward_flops(6, 7, 11, 16, v_dim)
    with sdpa_kernel([backend]):
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == fwd
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == fwd + bwd
    assert fwd == 2 * 6 * 7 * 11 * 16 + 2 * 6 * 7 * 11 * v_dim and bwd == 2 * fwd


@pytest.mark.parametrize("window", [0, 5])
def test_sam_block_by_hand(window):
    """SAM's attention (``segment_anything/modeling/image_encoder.py`` ``Attention``: matmuls and the
    decomposed relative-position einsums) counted as by hand, global and windowed (8x8 grid padded
    to 10x10: four 5x5 windows)."""
    from segment_anything.modeling.image_encoder import Block

    dim, heads, grid = 64, 2, 8
    size = window or grid
    block = Block(dim=dim, num_heads=heads, use_rel_pos=True, window_size=window, input_size=(size, size)).eval()
    head_dim = dim // heads
    windows, n = (4, 25) if window else (1, grid * grid)
    per_window = (2 * n * dim * 3 * dim  # qkv
                  + 2 * heads * n * n * head_dim * 2  # scores + weighted sum
                  + 2 * heads * n * size * head_dim * 2  # rel-pos terms along height and width
                  + 2 * n * dim * dim)  # proj
    mlp = 2 * grid * grid * dim * 4 * dim * 2
    with torch.no_grad():
        assert count_flops(lambda: block(torch.rand(1, grid, grid, dim))) == windows * per_window + mlp


def test_full_size_encoders_by_hand_on_the_meta_device():
    """The figures ``make bench`` reads its GFLOP/s against, without computing anything: DINOv2-B at
    518 (1369 patches + class token, 12 blocks, width 768) and SAM ViT-H at 1024 (64x64 tokens, 28
    windowed blocks of 25 padded 14x14 windows, 4 global blocks, 16 heads of 80, neck 1x1 + 3x3)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    with torch.device("meta"):
        dino = DINOv2Encoder("dinov2_vitb14", onednn_linears=False, attention_kernel=False).eval()
        dino_flops = count_flops(lambda: dino(torch.empty(1, 3, 518, 518)))
        sam = ImageEncoderViT(depth=32, embed_dim=1280, img_size=1024, mlp_ratio=4, num_heads=16, patch_size=16,
                              qkv_bias=True, use_rel_pos=True, global_attn_indexes=[7, 15, 23, 31], window_size=14,
                              out_chans=256, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
        sam_flops = count_flops(lambda: sam(torch.empty(1, 3, 1024, 1024)))
    assert dino_flops == _vit_by_hand(518, 14, 768, 12) == 303_147_436_032

    dim, heads, head_dim, tokens = 1280, 16, 80, 64 * 64

    def attention_layer(n, side):  # qkv, scores + weighted sum, rel-pos (height, width), proj
        return 2 * n * dim * 3 * dim + 4 * heads * n * n * head_dim + 4 * heads * n * side * head_dim + 2 * n * dim * dim

    mlp = 4 * tokens * dim * 4 * dim
    by_hand = (2 * 3 * 16 * 16 * dim * tokens + 28 * (25 * attention_layer(196, 14) + mlp)
               + 4 * (attention_layer(tokens, 64) + mlp) + 2 * tokens * dim * 256 + 2 * tokens * 256 * 256 * 9)
    assert sam_flops == by_hand == 5_961_082_830_848
