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
