"""`fsseg predict`: supports encoded once, masks/overlays at each photo's own size, summaries."""

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import PredictionWriter
from fsseg.cli import run_cli
from fsseg.export import SMALL_MODEL
from fsseg.modules import FewShotModule
from tests.shared_data import SHARED

REPO = Path(__file__).resolve().parents[1]

EIFFEL = SHARED / "fss1000-eiffel"
CONFIG = str(REPO / "lightning_configs" / "predict.yaml")


def small_module(seed: int = 0) -> FewShotModule:
    torch.manual_seed(seed)
    return FewShotModule(**SMALL_MODEL).eval()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "small.ckpt"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(small_module())
    trainer.save_checkpoint(str(path))
    return str(path)


def predict(ckpt: str, support: str, query: str, out: Path, *extra: str):
    return run_cli(["predict", "--config", CONFIG, "--ckpt_path", ckpt, "--data.support_dir", support,
                    "--data.query_dir", query, "--data.image_size", "112", "--trainer.accelerator", "cpu",
                    "--trainer.callbacks.output_dir", str(out),
                    "--trainer.default_root_dir", str(out.parent / "run"), *extra])


def read_summary(out: Path) -> tuple[list[dict], list[dict]]:
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "summary.jsonl") as f:
        recs = [json.loads(line) for line in f]
    return rows, recs


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


def test_writer_resizes_class_index_masks_nearest(tmp_path):
    w = PredictionWriter(str(tmp_path), print_summary=False)
    pred = torch.zeros(8, 8, dtype=torch.long)
    pred[:4, :4] = 1
    pred[4:, 4:] = 2
    img = tmp_path / "q.jpg"
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(img)
    rec = w.write_one(pred, str(img), (30, 50), ["a", "b"])
    mask = np.asarray(Image.open(rec["mask"]))
    assert mask.shape == (30, 50) and set(np.unique(mask)) == {0, 1, 2}
    assert mask[0, 0] == 1 and mask[-1, -1] == 2 and mask[0, -1] == 0
    assert Image.open(rec["overlay"]).size == (50, 30)
    assert abs(sum(rec["fractions"].values()) - 1) < 1e-6
    # one class -> 0/255
    rec1 = w.write_one((pred == 1).long(), str(img), (30, 50), ["a"], index=1)
    assert set(np.unique(np.asarray(Image.open(rec1["mask"])))) == {0, 255}
    assert Path(rec1["mask"]).name == "q_1.png"  # same stem twice -> index suffix


@pytest.mark.shared_data
@pytest.mark.skipif(not (EIFFEL / "query").is_dir(),
                    reason=f"shared test data not found at {EIFFEL} (set FSSEG_SHARED_DATA)")
def test_predict_eiffel_cli(small_ckpt, tmp_path):
    out = tmp_path / "pred"
    cli = predict(small_ckpt, str(EIFFEL), str(EIFFEL / "query"), out, "--data.batch_size", "4")
    assert cli.model.support_encodings_computed == 1  # one class, encoded once for all 22 queries
    queries = sorted((EIFFEL / "query").glob("*.jpg"))
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


def _synthetic_two_class(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name, colour in [("red_square", (220, 30, 30)), ("blue_disc", (30, 30, 220))]:
        (root / "support" / name / "images").mkdir(parents=True)
        (root / "support" / name / "masks").mkdir(parents=True)
        for k in range(2):
            img = rng.integers(0, 80, (96, 96, 3), dtype=np.uint8)
            mask = np.zeros((96, 96), np.uint8)
            y, x = 20 + 10 * k, 30 - 5 * k
            mask[y:y + 40, x:x + 40] = 255
            img[mask > 0] = colour
            Image.fromarray(img).save(root / "support" / name / "images" / f"{k}.png")
            Image.fromarray(mask).save(root / "support" / name / "masks" / f"{k}.png")
    (root / "query").mkdir()
    for i, (h, w) in enumerate([(70, 130), (150, 90), (64, 64)]):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[5:h // 2, 5:w // 2] = (220, 30, 30)
        img[h // 2:h - 5, w // 2:w - 5] = (30, 30, 220)
        Image.fromarray(img).save(root / "query" / f"q{i}.png")
    return root / "support", root / "query"


def test_predict_multiclass_cli(small_ckpt, tmp_path):
    support, query = _synthetic_two_class(tmp_path / "data")
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


def test_output_folder_never_mixes_runs(tmp_path):
    """A folder holding an earlier run's masks is refused (the message names --overwrite); overwrite
    clears them first, so the folder holds this run's masks only."""
    out = tmp_path / "out"
    img = tmp_path / "q.png"
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(img)
    pred = torch.zeros(8, 8, dtype=torch.long)
    first = PredictionWriter(str(out), print_summary=False)
    for i in range(3):
        first.write_one(pred, str(img), (30, 50), ["a"], index=i)
    assert len(list((out / "masks").glob("*.png"))) == 3
    with pytest.raises(ValueError, match="--overwrite true"):
        PredictionWriter(str(out), print_summary=False).write_one(pred, str(img), (30, 50), ["a"])
    again = PredictionWriter(str(out), print_summary=False, overwrite=True)
    rec = again.write_one(pred, str(img), (30, 50), ["a"])
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["q.png"]
    assert Path(rec["mask"]).is_absolute() and Path(rec["image"]).is_absolute()


def test_default_prediction_folder_is_fresh_per_run(tmp_path):
    from fsseg.cli import default_predict_dir

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    first = default_predict_dir(str(ckpt), "photos/")
    assert first == (tmp_path / "run" / "predictions" / "photos").resolve()
    (first / "masks").mkdir(parents=True)
    assert default_predict_dir(str(ckpt), "photos/") == first.with_name("photos_2")


def test_multiclass_writer_names_classes_legend_and_per_class_masks(tmp_path):
    w = PredictionWriter(str(tmp_path / "out"), print_summary=False, per_class_masks=True)
    pred = torch.zeros(8, 8, dtype=torch.long)
    pred[:4] = 2
    pred[4:, :4] = 1
    img = tmp_path / "q.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(img)
    rec = w.write_one(pred, str(img), (40, 60), ["dog", "cat"])
    dog = np.asarray(Image.open(rec["class_masks"]["dog"]))
    cat = np.asarray(Image.open(rec["class_masks"]["cat"]))
    index = np.asarray(Image.open(rec["mask"]))
    assert np.array_equal(dog, (index == 1) * 255) and np.array_equal(cat, (index == 2) * 255) and cat.any()
    over = np.asarray(Image.open(rec["overlay"]))
    assert over.shape == (40, 60, 3)
    from fsseg.visualize import PALETTE

    assert (over[2:14, 2:13] == PALETTE[1]).all(-1).any()  # the legend's swatch of class 1
    summary = w.summary()
    assert summary["classes"] == {"0": "background", "1": "dog", "2": "cat"}


def test_large_photo_overlay_capped_and_mask_full_size(tmp_path):
    w = PredictionWriter(str(tmp_path / "out"), print_summary=False, overlay_max_side=256)
    pred = torch.zeros(8, 8, dtype=torch.long)
    pred[2:6, 2:6] = 1
    img = tmp_path / "big.jpg"
    Image.fromarray(np.full((900, 1600, 3), 120, np.uint8)).save(img)
    rec = w.write_one(pred, str(img), (900, 1600), ["a"])
    assert Image.open(rec["mask"]).size == (1600, 900)
    assert Image.open(rec["overlay"]).size == (256, 144)
    ref = torch.nn.functional.interpolate(pred[None, None].float(), size=(900, 1600), mode="nearest")[0, 0]
    assert np.array_equal(np.asarray(Image.open(rec["mask"])), ref.numpy().astype(np.uint8) * 255)


def test_soft_masks_read_by_one_rule_in_predict_and_the_web_demo(tmp_path):
    from data_modules.folder import FolderDataset
    from data_modules.masks import BadSampleError, binary_mask_from_array, soft_mask_to_binary
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
