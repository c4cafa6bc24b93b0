"""`fsseg export`: ONNX (supports baked in) matches PyTorch under onnxruntime; safetensors round-trip."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fsseg.cli import main as cli_main
from fsseg.export.wrappers import EncodedSegmenter, trained_state_dict
from fsseg.inference import SMALL_MODEL
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


@pytest.mark.slow
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


def _identity_model(path, size, n=3):
    """A stand-in ONNX segmenter: logits = the query itself, pred = its argmax over channels."""
    import onnx
    from onnx import TensorProto, helper

    q = helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", 3, size, size])
    lo = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n, size, size])
    pr = helper.make_tensor_value_info("pred", TensorProto.INT64, ["batch", size, size])
    g = helper.make_graph([helper.make_node("Identity", ["query"], ["logits"]),
                           helper.make_node("ArgMax", ["query"], ["pred"], axis=1, keepdims=0)], "t", [q], [lo, pr])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(path))


def test_image_graph_resizes_bit_for_bit_like_fsseg_predict(tmp_path):
    """fsseg_image_segmenter.onnx's preprocessing equals data_modules' cv2 INTER_LINEAR read (every
    float of the model input), and its mask upsampling equals PredictionWriter's nearest, for photos
    smaller and larger than the model size, odd sizes, 2x, 1x1."""
    import cv2

    from data_modules.transforms import image_to_tensor, resize_image
    from fsseg.export.image_graph import add_image_io

    rng = np.random.default_rng(0)
    for size in (112, 518):
        _identity_model(tmp_path / "m.onnx", size)
        add_image_io(tmp_path / "m.onnx", tmp_path / "img.onnx", size, num_classes=3)
        sess = ort.InferenceSession(str(tmp_path / "img.onnx"), providers=["CPUExecutionProvider"])
        shapes = [(1, 1), (2 * size, 2 * size), (size, size), (37, 801), (1203, 455), (600, 601)]
        for h, w in shapes:
            img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
            query = image_to_tensor(resize_image(img, size))
            logits, pred, mask = sess.run(["logits", "pred", "mask"], {"image": img})
            assert np.array_equal(logits[0], query.numpy()), (size, h, w)  # bit-equal model input
            ref = torch.nn.functional.interpolate(query.argmax(0)[None, None].float(), size=(h, w), mode="nearest")
            assert pred.shape == (h, w) and np.array_equal(pred, ref[0, 0].long().numpy()), (size, h, w)
            assert np.array_equal(mask, pred.astype(np.uint8))  # several classes: the class index


@pytest.mark.slow
def test_specialised_checkpoint_exports_and_matches_fsseg_predict_on_eiffel_photos(tmp_path, shared_data):
    """README path: specialise on the eiffel supports, `fsseg export` the specialised checkpoint with no
    --support_dir, run the uint8 any-size graph on the original photos: its masks equal `fsseg predict`'s."""
    from data_modules.image_io import read_image
    from tests.cli_utils import run_fsseg
    from tests.paths import CONFIGS

    eiffel = shared_data("fss1000-eiffel")
    cfg = str(CONFIGS / "specialize_folder.yaml")
    run_fsseg(["fit", "--config", cfg, "--data.support_dir", str(eiffel), "--trainer.max_epochs", "1",
               "--data.repeats", "1"], cwd=tmp_path)
    ckpt = tmp_path / "runs" / "specialize" / "checkpoints" / "last.ckpt"
    run_fsseg(["predict", "--config", cfg, "--data.support_dir", "null", "--data.query_dir", str(eiffel / "query"),
               "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "pred")], cwd=tmp_path)
    proc = run_fsseg(["export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "export")], cwd=tmp_path)
    assert "fsseg export [" in proc.stderr  # progress
    rec = json.loads((tmp_path / "export" / "export.json").read_text())
    assert rec["model"].startswith("specialized") and rec["class_names"] == ["fss1000-eiffel"]
    assert rec["classes"] == {"0": "background", "1": "fss1000-eiffel"} and rec["image_size"] == 112
    sess = ort.InferenceSession(rec["image_onnx"], providers=["CPUExecutionProvider"])
    equal = total = 0
    photos = sorted((eiffel / "query").glob("*.jpg"))
    for photo in photos:
        (mask,) = sess.run(["mask"], {"image": read_image(photo)})
        ref = np.asarray(Image.open(tmp_path / "pred" / "masks" / f"{photo.stem}.png"))
        assert mask.shape == ref.shape
        equal, total = equal + int((mask == ref).sum()), total + ref.size
    agreement = equal / total
    print(f"eiffel: {len(photos)} photos, ONNX (uint8, original size) = fsseg predict on {100 * agreement:.4f}% of pixels")
    assert len(photos) == 22 and agreement >= 0.999
