"""callbacks.PredictionWriter: class-index masks and overlays at each photo's own size, legends, per-class
masks, and an output folder that never mixes two runs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import PredictionWriter


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
