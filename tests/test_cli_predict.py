"""`fsseg predict`: supports encoded once, masks/overlays at each photo's own size, summaries."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsseg.cli import run_cli
from fsseg.inference import SMALL_MODEL
from fsseg.modules import FewShotModule
from tests.image_folders import read_summary, synthetic_two_class
from tests.paths import CONFIGS

CONFIG = str(CONFIGS / "predict.yaml")


def small_module(seed: int = 0) -> FewShotModule:
    torch.manual_seed(seed)
    return FewShotModule(**SMALL_MODEL).eval()


def predict(ckpt: str, support: str, query: str, out: Path, *extra: str):
    return run_cli(["predict", "--config", CONFIG, "--ckpt_path", ckpt, "--data.support_dir", support,
                    "--data.query_dir", query, "--data.image_size", "112", "--trainer.accelerator", "cpu",
                    "--trainer.callbacks.output_dir", str(out),
                    "--trainer.default_root_dir", str(out.parent / "run"), *extra])


def test_segment_multiclass_encoded_matches_segment_multiclass():
    m = small_module().model
    g = torch.Generator().manual_seed(0)
    q = torch.rand(2, 3, 112, 112, generator=g)
    s = torch.rand(1, 2, 2, 3, 112, 112, generator=g)
    sm = (torch.rand(1, 2, 2, 112, 112, generator=g) > 0.5).float()
    with torch.no_grad():
        ref = m.segment_multiclass(q, s.expand(2, -1, -1, -1, -1, -1), sm.expand(2, -1, -1, -1, -1))
        encs = [m.encode_support(s[:, c], sm[:, c]) for c in range(2)]
        got = m.segment_multiclass_encoded(q, encs)
    assert got["logits"].shape == (2, 2, 112, 112) and got["pred"].shape == (2, 112, 112)
    torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=1e-5)
    assert torch.equal(got["pred"], ref["pred"])


@pytest.mark.slow
def test_predict_eiffel_cli(small_ckpt, tmp_path, shared_data):
    eiffel = shared_data("fss1000-eiffel", "query").parent
    out = tmp_path / "pred"
    cli = predict(small_ckpt, str(eiffel), str(eiffel / "query"), out, "--data.batch_size", "4")
    assert cli.model.support_encodings_computed == 1  # one class, encoded once for all 22 queries
    queries = sorted((eiffel / "query").glob("*.jpg"))
    assert len(queries) == 22
    masks = sorted((out / "masks").glob("*.png"))
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(masks) == 22 and len(overlays) == 22
    sizes = set()
    for q in queries:
        with Image.open(q) as im:
            size = im.size
        sizes.add(size)
        mask = Image.open(out / "masks" / f"{q.stem}.png")
        assert mask.size == size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / "overlays" / f"{q.stem}.png").size == size
    assert len(sizes) > 5  # photos of various sizes, each kept
    rows, recs = read_summary(out)
    assert len(rows) == 22 and len(recs) == 22
    assert list(rows[0])[5:] == ["background", "fss1000-eiffel"]
    for r in recs:
        assert abs(sum(r["fractions"].values()) - 1) < 1e-6


@pytest.mark.slow
def test_predict_multiclass_cli(small_ckpt, tmp_path):
    support, query = synthetic_two_class(tmp_path / "data")
    out = tmp_path / "pred"
    cli = predict(small_ckpt, str(support), str(query), out)
    assert cli.model.support_encodings_computed == 2  # two classes, each encoded once
    rows, recs = read_summary(out)
    assert len(rows) == 3
    assert recs[0]["classes"] == ["blue_disc", "red_square"]
    for q in sorted(query.glob("*.png")):
        mask = Image.open(out / "masks" / f"{q.stem}.png")
        assert mask.size == Image.open(q).size
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}  # class index, not 0/255


def test_predict_step_contract_and_single_encoding():
    m = small_module()
    g = torch.Generator().manual_seed(1)
    m.set_support_set(torch.rand(1, 2, 1, 3, 96, 96, generator=g), torch.ones(1, 2, 1, 96, 96), ["a", "b"])
    batch = {"query": torch.rand(3, 3, 112, 112, generator=g), "query_original_size": torch.tensor([[10, 20]] * 3),
             "query_path": ["x.jpg", "y.jpg", "z.jpg"]}
    for i in range(2):
        out = m.predict_step(batch, i)
    assert m.support_encodings_computed == 2
    assert out["pred"].shape == (3, 112, 112) and out["pred"].dtype == torch.int64
    assert out["logits"].shape == out["probs"].shape == (3, 2, 112, 112)
    assert out["class_names"] == ["a", "b"] and out["query_path"] == batch["query_path"]
    assert int(out["pred"].max()) <= 2


def test_default_prediction_folder_is_fresh_per_run(tmp_path):
    from fsseg.cli import default_predict_dir

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    first = default_predict_dir(str(ckpt), "photos/")
    assert first == (tmp_path / "run" / "predictions" / "photos").resolve()
    (first / "masks").mkdir(parents=True)
    assert default_predict_dir(str(ckpt), "photos/") == first.with_name("photos_2")


def test_soft_masks_read_by_one_rule_in_predict_and_the_web_demo(tmp_path):
    from data_modules.image_io import BadSampleError, binary_mask_from_array, soft_mask_to_binary
    from data_modules.readers.folder import FolderDataset
    from fsseg.webui import mask_from_upload

    soft = np.zeros((40, 40), np.uint8)
    soft[10:30, 10:30] = 255
    soft[9, 10:30], soft[30, 10:30] = 100, 180  # anti-aliased edges
    expected = (soft >= 128).astype(np.uint8)
    assert np.array_equal(soft_mask_to_binary(soft), expected)
    voc = np.zeros((40, 40), np.uint8)
    voc[10:30, 10:30] = 15
    voc[9, 10:30] = 255  # class index with an ignore border: not a soft mask
    assert soft_mask_to_binary(voc) is None
    with pytest.raises(BadSampleError, match="--data.mask_encoding threshold128"):
        binary_mask_from_array(voc)
    assert np.array_equal(mask_from_upload(soft, (40, 40)), expected.astype(bool))
    root = tmp_path / "support"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(soft).save(root / "masks" / "a.png")
    (root / "images" / "notes.txt").write_text("x")
    ds = FolderDataset(str(root), class_name="tower")
    assert ds.class_names == {0: "tower"}
    assert np.array_equal(ds.load("images/a.png" if "images/a.png" in ds.records else next(iter(ds.records)), [0])[1][0],
                          expected)
    assert [s["reason"] for s in ds.skipped_files] == ["not an image file"]


@pytest.mark.slow
def test_stopped_run_still_writes_summary_and_names_the_flag(small_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    support, query = tmp_path / "support", tmp_path / "query"
    (support / "images").mkdir(parents=True)
    (support / "masks").mkdir()
    query.mkdir()
    img = rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)
    mask = np.zeros((60, 70), np.uint8)
    mask[10:40, 10:50] = 255
    Image.fromarray(img).save(support / "images" / "s.png")
    Image.fromarray(mask).save(support / "masks" / "s.png")
    for name in ("a", "b"):
        Image.fromarray(img).save(query / f"{name}.png")
    (query / "c.jpg").write_bytes(b"")  # zero-byte photo, after a and b
    out = tmp_path / "pred"
    with pytest.raises(Exception, match="--skip_bad_queries true"):
        predict(small_ckpt, str(support), str(query), out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and "--skip_bad_queries" in summary["error"]
    assert summary["images"] == 2 and all(Path(r["mask"]).is_file() for r in summary["written"])
    assert summary["checkpoint"] == str(Path(small_ckpt).resolve()) and summary["image_size"] == 112
    assert summary["precision"] and summary["classes"] == {"0": "background", "1": "support"}
    # the same run with --skip_bad_queries true into the same folder: refused without --overwrite
    with pytest.raises(Exception, match="--overwrite true"):
        predict(small_ckpt, str(support), str(query), out, "--skip_bad_queries", "true")
    predict(small_ckpt, str(support), str(query), out, "--skip_bad_queries", "true", "--overwrite", "true",
            "--class_name", "blob")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["images"] == 2
    assert summary["skipped_queries"]["count"] == 1 and summary["classes"]["1"] == "blob"


@pytest.mark.slow
def test_quiet_by_default_verbose_shows_framework_messages(small_ckpt, tmp_path):
    from tests.cli_utils import run_fsseg

    support = tmp_path / "support"
    (support / "images").mkdir(parents=True)
    (support / "masks").mkdir()
    img = np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    mask = np.zeros((60, 70), np.uint8)
    mask[10:40, 10:50] = 255
    Image.fromarray(img).save(support / "images" / "s.png")
    Image.fromarray(mask).save(support / "masks" / "s.png")
    args = ["predict", "--ckpt_path", small_ckpt, "--data.support_dir", str(support), "--data.query_dir",
            str(support / "images"), "--trainer.accelerator", "cpu"]
    quiet = run_fsseg([*args, "--output_dir", str(tmp_path / "a")], tmp_path)
    text = quiet.stdout + quiet.stderr
    for noise in ("Tip:", "GPU available", "deprecated", "No CUDA runtime", "Restoring states"):
        assert noise not in text, noise
    assert "s.png (70x60)" in text and "predictions: 1 masks" in text
    loud = run_fsseg([*args, "--output_dir", str(tmp_path / "b"), "--verbose"], tmp_path)
    assert "GPU available" in loud.stdout + loud.stderr
