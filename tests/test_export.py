"""`fsseg export`: ONNX (supports baked in) matches PyTorch under onnxruntime; safetensors round-trip."""

import json

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from safetensors.torch import load_file

from fsseg.cli import main as cli_main
from fsseg.export import SMALL_MODEL, EncodedSegmenter, trained_state_dict
from fsseg.modules import FewShotModule

LOGIT_TOL = 1e-4  # max abs difference onnxruntime vs PyTorch on the logits (measured ~1e-6 on CPU)


def _support(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        img = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        mask = np.zeros((80, 100), np.uint8)
        mask[10 + 5 * k:60, 20:70] = 255
        Image.fromarray(img).save(root / "images" / f"{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"{k}.png")
    return root


def test_export_onnx_parity_and_safetensors(tmp_path, capsys):
    support = _support(tmp_path / "support")
    out = tmp_path / "export"
    cli_main(["export", "--small", "--support_dir", str(support), "--output_dir", str(out),
              "--max_diff", str(LOGIT_TOL)])
    printed = capsys.readouterr().out
    assert "max abs diff of logits" in printed
    rec = json.loads((out / "export.json").read_text())
    assert rec["onnx_vs_torch_max_abs_diff_logits"] <= LOGIT_TOL
    assert rec["onnx_vs_torch_pred_agreement"] == 1.0
    assert rec["supports"] == "baked-in constants" and rec["class_names"] == ["support"]

    # rebuild the PyTorch reference independently and compare on a fresh input
    hp = json.loads((out / "hparams.json").read_text())
    assert {k: hp[k] for k in SMALL_MODEL} == SMALL_MODEL
    torch.manual_seed(0)
    module = FewShotModule(**SMALL_MODEL).eval()  # export --small builds the same seeded model
    weights = load_file(str(out / "weights.safetensors"))
    ref = trained_state_dict(module.model)
    assert set(weights) == set(ref) and not any(k.startswith("encoder.") for k in weights)
    for k, v in ref.items():
        assert torch.equal(weights[k], v), k
    fresh = FewShotModule(**SMALL_MODEL)  # other random init: loading the safetensors restores them
    missing, unexpected = fresh.model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "adapter.")) for k in missing)
    for k, v in trained_state_dict(fresh.model).items():
        assert torch.equal(v, weights[k])

    from data_modules import SupportQueryFolderDataModule

    sb = SupportQueryFolderDataModule(str(support), str(support), image_size=112).support_batch()
    encs = module.set_support_set(sb["support"], sb["support_masks"], sb["class_names"])
    wrapper = EncodedSegmenter(module.model, encs).eval()
    q = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, pred = wrapper(q)
    sess = ort.InferenceSession(str(out / "fsseg_segmenter.onnx"), providers=["CPUExecutionProvider"])
    o_logits, o_pred = sess.run(["logits", "pred"], {"query": q.numpy()})  # batch 3: dynamic batch
    assert o_logits.shape == (3, 1, 112, 112) and o_pred.shape == (3, 112, 112)
    assert np.abs(o_logits - logits.numpy()).max() <= LOGIT_TOL
    assert (o_pred == pred.numpy()).mean() > 0.999
