"""Checkpoints in the official key layouts (made here), loaded from a path and over loopback HTTP."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from fsseg.models import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    DINOv2Encoder,
    MambaLayer,
    SAMImageEncoder,
    WeightsError,
    build_segmenter,
    load_adapter_state,
    mamba_ssm_available,
    resolve_checkpoint,
)
from fsseg.models.adapter import BottleneckAdapter


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def official_dinov2_layout(enc: DINOv2Encoder) -> dict:
    """timm state dict -> layout of dinov2_*_pretrain.pth (what checkpoint_filter_fn expects)."""
    sd = {k: v.clone() for k, v in enc.vit.state_dict().items()}
    C = sd["cls_token"].shape[-1]
    if "reg_token" in sd:  # timm no_embed_class -> official: cls slot in pos_embed, register_tokens
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros(1, 1, C), sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, C)
    assert any(k.endswith("ls1.gamma") for k in sd)
    return sd


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler = functools.partial(handler)
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize("reg", [False, True])
def test_dinov2_official_layout_path_and_http(tmp_path, http_root, reg):
    torch.manual_seed(0)
    over = dict(reg_tokens=4, no_embed_class=True) if reg else {}
    src = DINOv2Encoder("dinov2_tiny", **over)
    sd = official_dinov2_layout(src)
    assert sd["pos_embed"].shape[1] == 37 * 37 + 1
    root, base = http_root
    name = f"dinov2_tiny{'_reg4' if reg else ''}_pretrain.pth"
    path = root / name
    torch.save(sd, path)
    x = torch.rand(2, 3, 70, 98)
    with torch.no_grad():
        ref = src(x)
        for ck in (str(path), f"{base}/{name}"):
            enc = DINOv2Encoder("dinov2_tiny", checkpoint=ck, sha256=sha(path),
                                cache_dir=str(tmp_path / "cache"), **over)
            out = enc(x)
            assert torch.equal(out.early, ref.early) and torch.equal(out.last, ref.last)
            assert torch.equal(enc.forward_early(x), ref.early)
    assert (tmp_path / "cache" / name).is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".part")]


def test_checkpoint_errors(tmp_path, http_root):
    root, base = http_root
    src = DINOv2Encoder("dinov2_tiny")
    path = root / "err_pretrain.pth"
    torch.save(official_dinov2_layout(src), path)
    # wrong checksum (local and remote) names expected and actual
    bad = "0" * 64
    with pytest.raises(WeightsError, match=f"expected {bad}, got {sha(path)}"):
        resolve_checkpoint(path, sha256=bad)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_checkpoint(f"{base}/err_pretrain.pth", sha256=bad, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "err_pretrain.pth").exists()
    # missing file: a FileNotFoundError naming the path
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_checkpoint(missing)
    with pytest.raises(CheckpointNotFoundError):
        DINOv2Encoder("dinov2_tiny", checkpoint=str(missing))
    with pytest.raises(WeightsError, match="could not download"):
        resolve_checkpoint(f"{base}/absent.pth", cache_dir=tmp_path / "c")
    # another architecture: deeper model -> missing keys, named file
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: blocks\.4\..*err_pretrain|err_pretrain.*missing keys: blocks\.4\."):
        DINOv2Encoder("dinov2_tiny", checkpoint=str(path), depth=5)
    # another width -> shape mismatch / conversion failure, still a CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match="err_pretrain.pth"):
        DINOv2Encoder("dinov2_tiny", checkpoint=str(path), embed_dim=96)
    # a SAM-like checkpoint fed to the DINOv2 loader
    other = tmp_path / "sam_like.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        DINOv2Encoder("dinov2_tiny", checkpoint=str(other))


def _tiny_sam(dim: int = 32):
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from fsseg.models.teacher import build_sam_image_encoder

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=build_sam_image_encoder("tiny"),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            transformer_dim=dim, transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    ).eval()
    for p in sam.parameters():  # SAM's rel-pos params are zero-initialised; randomise all
        torch.nn.init.normal_(p, std=0.05)
    return sam


def test_sam_official_layout_teacher_and_decoder(tmp_path, http_root):
    sam = _tiny_sam()
    root, base = http_root
    path = root / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(x * 255.0))
        for ck in (str(path), f"{base}/sam_tiny.pth"):
            t = SAMImageEncoder("tiny", checkpoint=ck, sha256=sha(path), cache_dir=str(tmp_path))
            assert torch.allclose(t(x), ref, atol=1e-5)
        # non-square input: longest side resized, padded like SAM
        y = torch.rand(1, 3, 128, 64)
        r = torch.nn.functional.interpolate(y, size=(256, 128), mode="bilinear", align_corners=False, antialias=True)
        assert torch.allclose(t(y), sam.image_encoder(sam.preprocess(r * 255.0)), atol=1e-5)
    fp = t.fingerprint
    assert fp.startswith("sam-tiny-") and fp == SAMImageEncoder("tiny", checkpoint=str(path)).fingerprint
    assert fp != SAMImageEncoder("tiny").fingerprint
    assert not any(p.requires_grad for p in t.parameters())

    m = build_segmenter({"name": "full"}, backbone="dinov2_tiny", image_size=112, decoder_dim=32, decoder_depth=1,
                     decoder_mlp_dim=64, decoder_heads=2, sam_checkpoint=str(path)).eval()
    with torch.no_grad():
        emb, dense = torch.randn(1, 32, 16, 16), torch.randn(1, 32, 16, 16)
        sparse = torch.randn(1, 1, 32)
        pe = sam.prompt_encoder.get_dense_pe()
        assert torch.allclose(m.pe_layer((16, 16)).unsqueeze(0), pe, atol=1e-6)
        ref_masks, _ = sam.mask_decoder(emb, pe, sparse, dense, multimask_output=False)
        assert torch.allclose(m.decoder(emb, pe, sparse, dense), ref_masks[:, 0], atol=1e-5)
        mk = torch.randn(2, 1, 64, 64)
        assert torch.allclose(m.mask_downscaling(mk), sam.prompt_encoder._embed_masks(mk), atol=1e-5)
    assert m.pe_layer.positional_encoding_gaussian_matrix.requires_grad
    # a DINOv2 checkpoint is not a SAM checkpoint
    dino = tmp_path / "dinov2_for_sam.pth"
    torch.save(official_dinov2_layout(DINOv2Encoder("dinov2_tiny")), dino)
    with pytest.raises(CheckpointMismatchError, match="dinov2_for_sam.pth.*missing keys"):
        SAMImageEncoder("tiny", checkpoint=str(dino))
    with pytest.raises(CheckpointMismatchError, match="sam_tiny.pth"):  # SAM of another size
        SAMImageEncoder("tiny", checkpoint=str(path), depth=3)


def test_concurrent_downloads_are_atomic(tmp_path, http_root):
    root, base = http_root
    blob = root / "blob.pth"
    torch.save({"w": torch.randn(256, 256)}, blob)
    results, errors = [], []

    def fetch():
        try:
            results.append(resolve_checkpoint(f"{base}/blob.pth", sha256=sha(blob), cache_dir=tmp_path / "cc"))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(set(results)) == 1
    assert sha(results[0]) == sha(blob)
    assert [p.name for p in (tmp_path / "cc").iterdir()] == ["blob.pth"]


def test_adapter_checkpoint_formats(tmp_path):
    a = BottleneckAdapter(48, 32)
    sd = a.state_dict()
    files = {
        "plain.pth": sd,
        "prefixed.pth": {f"adapter.{k}": v for k, v in sd.items()},
        "lightning.ckpt": {"state_dict": {**{f"model.adapter.{k}": v for k, v in sd.items()}, "model.other.w": torch.zeros(1)},
                           "epoch": 3},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        b = BottleneckAdapter(48, 32)
        load_adapter_state(b, str(tmp_path / name))
        assert all(torch.equal(b.state_dict()[k], v) for k, v in sd.items()), name
    m = build_segmenter({"name": "compact"}, backbone="dinov2_tiny", image_size=112, decoder_dim=32, decoder_depth=1,
                     decoder_mlp_dim=64, decoder_heads=2, adapter_checkpoint=str(tmp_path / "lightning.ckpt"))
    assert torch.equal(m.adapter.expand.weight, a.expand.weight)
    torch.save(BottleneckAdapter(64, 32).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointMismatchError, match="shape mismatch.*wrong.pth|wrong.pth.*shape mismatch"):
        load_adapter_state(BottleneckAdapter(48, 32), str(tmp_path / "wrong.pth"))


def test_mamba_backends():
    torch.manual_seed(0)
    m = MambaLayer(16, backend="torch", expand=1)
    x = torch.randn(2, 37, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
    auto = MambaLayer(16, backend="auto", expand=1)
    auto.load_state_dict(m.state_dict())  # same class, same keys whatever the backend
    with torch.no_grad():
        assert torch.allclose(auto(x), m(x))
    with pytest.raises(ValueError, match="backend"):
        MambaLayer(16, backend="triton")
    if not mamba_ssm_available():
        with pytest.raises(ImportError, match="mamba-ssm"):
            MambaLayer(16, backend="cuda")


@pytest.mark.skipif(not (mamba_ssm_available() and torch.cuda.is_available()), reason="mamba-ssm / CUDA not available")
def test_mamba_cuda_matches_torch():  # pragma: no cover - needs a GPU with mamba-ssm
    torch.manual_seed(0)
    m = MambaLayer(32, backend="torch").cuda()
    c = MambaLayer(32, backend="cuda").cuda()
    c.load_state_dict(m.state_dict())
    x = torch.randn(2, 64, 32, device="cuda")
    with torch.no_grad():
        assert torch.allclose(m(x), c(x), atol=1e-3)
