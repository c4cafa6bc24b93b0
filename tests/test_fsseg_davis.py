"""DAVIS-2017 one-shot video path: ``fsseg davis`` (model side) and ``fsseg davis-eval`` (scores).

The expected scores are worked out by hand from the published definitions (docs/protocols/davis17.md);
equality with the official evaluator itself was measured outside the test suite (it cannot run here;
it gave the same figures and byte-identical CSVs on ``hand_made_case`` below too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.readers.davis import davis_palette, read_index_png, read_sequences, write_index_png
from fsseg import davis_eval as de
from fsseg.cli import main as fsseg_main
from fsseg.video import VideoObjectSegmenter, merge_objects
from fsseg.video import main as video_main
from tests.cli_utils import run_fsseg
from tests.shared_data import SHARED

SHARED_DAVIS = SHARED / "davis"
needs_shared = pytest.mark.skipif(not (SHARED_DAVIS / "ImageSets").is_dir(),
                                  reason=f"shared DAVIS tree not found at {SHARED_DAVIS} (set FSSEG_SHARED_DATA)")


def square(shape=(30, 40), rows=(2, 6), cols=(2, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


# -- per-frame measures, by hand ---------------------------------------------------------------------
def test_boundary_map_is_the_outline_offset_towards_the_origin():
    b = de.boundary_map(square((10, 10)))  # object: rows 2..5, cols 2..5
    expected = np.zeros((10, 10), bool)
    expected[1:6, 1:6] = True
    expected[2:5, 2:5] = False  # the 5x5 outline at rows/cols 1..5: 16 pixels
    assert b.sum() == 16 and np.array_equal(b, expected)
    # last row / column: only the east / south neighbour counts, the corner never
    full = np.ones((4, 4), bool)
    assert not de.boundary_map(full).any()


def test_disk_and_boundary_tolerance():
    assert np.array_equal(de.disk(2), np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1],
                                                [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], np.uint8))
    assert de.boundary_tolerance((30, 40)) == 1     # ceil(0.008 * 50) = ceil(0.4)
    assert de.boundary_tolerance((480, 854)) == 8   # ceil(7.84)
    assert de.boundary_tolerance((480, 910)) == 9   # ceil(8.23)


def test_f_measure_by_hand():
    gt = square()  # 30x40 frame: tolerance 1 px (a 3x3 cross)
    assert de.f_measure(gt, gt) == 1.0
    assert de.f_measure(gt, square(cols=(3, 7))) == 1.0  # 1 px off: every boundary pixel within reach
    # 2 px off: outlines at cols 1..5 and 3..7; 10 of the 16 pixels of each are within 1 px of the other
    assert de.f_measure(gt, square(cols=(4, 8))) == pytest.approx(10 / 16)
    empty = np.zeros_like(gt)
    assert de.f_measure(gt, empty) == 0.0 and de.f_measure(empty, gt) == 0.0
    assert de.f_measure(empty, empty) == 1.0


def test_jaccard_by_hand():
    gt = square()
    assert de.jaccard(gt, square(cols=(4, 8))) == pytest.approx(8 / 24)
    empty = np.zeros_like(gt)
    assert list(de.jaccard(np.stack([gt, empty]), np.stack([empty, empty]))) == [0.0, 1.0]


def test_statistics_mean_recall_and_four_bin_decay_by_hand():
    v = np.arange(18) / 17  # bins cut at frames 0, 4, 9, 13, 17 (edges shared): [0:5] [4:10] [9:14] [13:18]
    mean, recall, decay = de.statistics(v)
    assert mean == pytest.approx(0.5) and recall == pytest.approx(9 / 18)
    assert decay == pytest.approx(np.mean(v[0:5]) - np.mean(v[13:18])) and decay == pytest.approx(-13 / 17)
    # 3 frames: cuts at 0, 1, 1, 2, 2 -> first bin frames 0-1, last bin frame 2
    assert de.statistics(np.array([1.0, 0.2, 0.0])) == pytest.approx((0.4, 1 / 3, 0.6))


# -- a hand-made DAVIS tree ----------------------------------------------------------------------------
def write_tree(root: Path, annotations: list[np.ndarray], name: str = "seq") -> None:
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(f"{name}\n")
    for t, a in enumerate(annotations):
        write_index_png(a, root / "Annotations" / "480p" / name / f"{t:05d}.png")
        frame = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*a.shape, 3), 40 * t % 255, np.uint8)).save(frame)


def hand_made_case(tmp_path: Path) -> tuple[Path, Path]:
    """30x40, 6 frames (1..4 scored), object 1 = a 4x4 square, object 2 = a 6x10 box, void strip."""
    gt = np.zeros((30, 40), np.uint8)
    gt[square()] = 1
    gt[20:26, 20:30] = 2
    gt[10:12, 0:4] = 255
    root, results = tmp_path / "davis", tmp_path / "results"
    write_tree(root, [gt] * 6)
    preds = [np.where(gt == 255, 0, gt) for _ in range(4)]
    preds[1][10:12, 0:4] = 2                     # frame 2: object 2 also on the void strip
    for t in (2, 3):                             # frames 3, 4: object 1 two pixels to the right
        preds[t][square()] = 0
        preds[t][square(cols=(4, 8))] = 1
    preds[3][preds[3] == 2] = 0                  # frame 4: object 2 missed
    for t, p in enumerate(preds, start=1):
        write_index_png(p, results / "seq" / f"{t:05d}.png")
    return root, results


def test_evaluate_hand_made_sequence(tmp_path):
    root, results = hand_made_case(tmp_path)
    scores = de.evaluate(root, results)
    assert [o.name for o in scores.objects] == ["seq_1", "seq_2"]
    o1, o2 = scores.objects
    np.testing.assert_allclose(o1.j, [1, 1, 1 / 3, 1 / 3])
    np.testing.assert_allclose(o1.f, [1, 1, 10 / 16, 10 / 16])
    # void pixels are background (the semi-supervised evaluator passes no void mask): the strip is a
    # false positive of 8 pixels (J 60/68) with 9 boundary pixels out of reach (precision 32/41)
    np.testing.assert_allclose(o2.j, [1, 60 / 68, 1, 0])
    f2 = 2 * (32 / 41) / (32 / 41 + 1)
    np.testing.assert_allclose(o2.f, [1, f2, 1, 0])
    # 4 frames: cuts 0, 1, 2, 2, 3 -> decay = mean(frames 1-2) - mean(frames 3-4)
    s1, s2 = scores.per_object()
    assert s1 == pytest.approx({"J-Mean": 2 / 3, "J-Recall": 0.5, "J-Decay": 2 / 3,
                                "F-Mean": 0.8125, "F-Recall": 1.0, "F-Decay": 0.375})
    assert s2 == pytest.approx({"J-Mean": (2 + 60 / 68) / 4, "J-Recall": 0.75, "J-Decay": (1 + 60 / 68) / 2 - 0.5,
                                "F-Mean": (2 + f2) / 4, "F-Recall": 0.75, "F-Decay": (1 + f2) / 2 - 0.5})
    g = scores.global_row()
    assert g["J-Mean"] == pytest.approx((s1["J-Mean"] + s2["J-Mean"]) / 2)
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    # the CSVs: the reference's columns, %.3f; a stale CSV in the folder is overwritten, never read
    (results / "global_results-val.csv").write_text("J&F-Mean\n0.999\n")
    (results / "per-sequence_results-val.csv").write_text("stale\n")
    de.main(["--davis_root", str(root), "--results_dir", str(results)])
    jm = (s1["J-Mean"] + s2["J-Mean"]) / 2
    fm = (s1["F-Mean"] + s2["F-Mean"]) / 2
    assert (results / "global_results-val.csv").read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        f"{(jm + fm) / 2:.3f},{jm:.3f},{0.625:.3f},{(s1['J-Decay'] + s2['J-Decay']) / 2:.3f},"
        f"{fm:.3f},{0.875:.3f},{(s1['F-Decay'] + s2['F-Decay']) / 2:.3f}\n")
    assert (results / "per-sequence_results-val.csv").read_text() == (
        "Sequence,J-Mean,F-Mean\n"
        f"seq_1,0.667,0.812\nseq_2,{s2['J-Mean']:.3f},{s2['F-Mean']:.3f}\n")


def test_bad_results_are_clear_errors(tmp_path):
    root, results = hand_made_case(tmp_path)
    bad = read_index_png(results / "seq" / "00002.png")
    bad[0, 0] = 3  # an id the first annotation does not have (the reference stops there too)
    write_index_png(bad, results / "seq" / "00002.png")
    with pytest.raises(SystemExit, match=r"00002\.png: object id 3 in the results.*only 2 object"):
        de.main(["--davis_root", str(root), "--results_dir", str(results)])
    write_index_png(bad[:, :20].clip(0, 2), results / "seq" / "00002.png")
    with pytest.raises(SystemExit, match=r"00002\.png: 20x30 result, the annotation is 40x30"):
        de.main(["--davis_root", str(root), "--results_dir", str(results)])
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(results / "seq" / "00002.png")
    with pytest.raises(SystemExit, match=r"00002\.png: mode RGB PNG"):
        de.main(["--davis_root", str(root), "--results_dir", str(results)])
    (results / "seq" / "00002.png").unlink()
    with pytest.raises(SystemExit, match=r"00002\.png: missing result frame"):
        de.main(["--davis_root", str(root), "--results_dir", str(results)])


# -- the model side ------------------------------------------------------------------------------------
def test_merge_rule_background_unless_a_logit_is_positive_then_the_largest():
    logits = torch.tensor([[[-1.0, 2.0, 0.5]], [[-3.0, 1.0, 0.7]]])  # 2 objects, 1x3 pixels
    assert merge_objects(logits, [1, 3]).tolist() == [[0, 1, 3]]


def small_module():
    from fsseg.inference import load_module

    return load_module(None, small=True)


@pytest.mark.slow
@pytest.mark.parametrize("memory", [False, True])
def test_supports_encoded_once_and_frames_batched(memory):
    module = small_module()
    seg = VideoObjectSegmenter(module, batch_size=8, memory=memory)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 70, 3), dtype=np.uint8) for _ in range(5)]
    first = np.zeros((48, 70), np.uint8)
    first[5:20, 5:30], first[25:40, 40:60], first[0, 0] = 2, 5, 255  # ids need not be 1..N
    calls = {"extract": 0, "two_shot": 0}
    extract, encode = module.model.extract, module.model.encode_support_features

    def counting_extract(*a, **k):
        calls["extract"] += 1
        return extract(*a, **k)

    def counting_encode(feats, masks):
        calls["two_shot"] += masks.shape[1] == 2
        return encode(feats, masks)

    module.model.extract, module.model.encode_support_features = counting_extract, counting_encode
    maps = seg.segment(frames, first)
    assert seg.support_encodings_computed == 2  # one per object, not per frame
    # first frame once + the 4 later frames: in one batch, or one by one with --memory
    assert calls["extract"] == (5 if memory else 2)
    # --memory: frames 2..4 also use the previous frame as a second shot (for each object it found there)
    assert (calls["two_shot"] > 0) == memory and calls["two_shot"] <= 2 * 3
    assert np.array_equal(maps[0], np.where(first == 255, 0, first))
    assert all(m.shape == (48, 70) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 2, 5} for m in maps)


@needs_shared
def test_perfect_results_score_one(tmp_path):
    for seq in read_sequences(SHARED_DAVIS):
        for p in seq.annotation_paths:  # void 255 is background for the semi-supervised scores
            a = read_index_png(p)
            write_index_png(np.where(a == 255, 0, a), tmp_path / seq.name / p.name)
    scores = de.evaluate(SHARED_DAVIS, tmp_path)
    assert len(scores.objects) == 8
    assert scores.global_row() == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                                   "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}


@pytest.mark.slow
@needs_shared
def test_davis_small_model_end_to_end(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(SystemExit, match="give --ckpt_path"):  # no silent run with random weights
        video_main(["--davis_root", str(SHARED_DAVIS), "--output_dir", str(out)])
    assert not out.exists()
    # in this process through the CLI's tool table (the scoring below runs as a real subprocess)
    fsseg_main(["davis", "--small", "--davis_root", str(SHARED_DAVIS), "--output_dir", str(out)])
    palette = davis_palette().flatten().tolist()
    widths = set()
    for seq in read_sequences(SHARED_DAVIS):
        written = sorted((out / seq.name).glob("*.png"))
        assert [p.stem for p in written] == seq.frame_ids  # one PNG per frame, official names
        for frame, res in zip(seq.frame_paths, written):
            with Image.open(res) as im, Image.open(frame) as fr:
                assert im.mode == "P" and im.size == fr.size and im.getpalette()[:768] == palette
                widths.add(im.size[0])
        first = read_index_png(seq.annotation_paths[0])
        assert np.array_equal(read_index_png(written[0]), np.where(first == 255, 0, first))
    assert widths == {854, 910}
    res = run_fsseg(["davis-eval", "--davis_root", str(SHARED_DAVIS), "--results_dir", str(out),
                     "--output_dir", str(tmp_path / "scores")], tmp_path)
    assert "J&F-Mean=" in res.stdout
    rows = (tmp_path / "scores" / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean" and len(rows) == 1 + 8
    assert rows[1].startswith("blackswan_1,") and rows[-1].startswith("synth-wide_2,")


@pytest.mark.slow
def test_device_choice_for_the_inference_tools(capsys):
    """``--device`` of ``fsseg davis`` and ``fsseg demo-ui``: ``auto`` is the GPU when one is visible;
    a GPU that is not there is a one-line error naming the flag; the precision is applied after the
    move (emulated GPU: the meta device), so 16-mixed is accepted for a GPU."""
    from fsseg.inference import inference_device, load_module, place_module
    from fsseg.webui import main as webui_main

    assert inference_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert inference_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1: 0 CUDA GPU"):
            inference_device("cuda:1")
        with pytest.raises(SystemExit, match="fsseg davis: --device cuda"):
            video_main(["--small", "--davis_root", "x", "--output_dir", "y", "--device", "cuda"])
        with pytest.raises(SystemExit):
            webui_main(["--small", "--device", "cuda"])
        assert "--device cuda" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a device"):
        inference_device("gpu0")
    module = place_module(load_module(None, small=True), torch.device("meta"), "16-mixed")
    assert next(module.parameters()).device.type == "meta" and module.model.encoder_dtype == torch.float16


@needs_shared
def test_davis_on_the_chosen_device_and_precision(tmp_path, capsys):
    out = tmp_path / "bf16"
    seq = read_sequences(SHARED_DAVIS)[0]
    fsseg_main(["davis", "--small", "--davis_root", str(SHARED_DAVIS), "--output_dir", str(out), "--device", "cpu",
                "--precision", "bf16-mixed", "--sequences", seq.name])
    assert "model on cpu at precision bf16-mixed" in capsys.readouterr().out
    assert [p.stem for p in sorted((out / seq.name).glob("*.png"))] == seq.frame_ids


@pytest.mark.slow
@needs_shared
def test_davis_sequences_and_the_printed_scoring_command_agree(tmp_path, capsys):
    """`fsseg davis --sequences blackswan` prints a scoring command that scores exactly that sequence;
    `davis-eval --set` also takes a list file."""
    import shlex

    out = tmp_path / "results"
    fsseg_main(["davis", "--small", "--davis_root", str(SHARED_DAVIS), "--output_dir", str(out),
                "--sequences", "blackswan"])
    printed = capsys.readouterr().out
    command = next(line for line in printed.splitlines() if line.startswith("score: fsseg davis-eval"))
    args = shlex.split(command[len("score: fsseg "):])
    assert args[-2:] == ["--sequences", "blackswan"]
    res = run_fsseg(args, tmp_path)
    assert "DAVIS-2017 sequences blackswan" in res.stdout and "blackswan_1" in res.stdout
    rows = (out / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[1:] == [r for r in rows[1:] if r.startswith("blackswan_1,")] and len(rows) == 2
    names = tmp_path / "mine.txt"
    names.write_text("blackswan\n")
    res = run_fsseg(["davis-eval", "--davis_root", str(SHARED_DAVIS), "--results_dir", str(out),
                     "--set", str(names)], tmp_path)
    assert (out / "per-sequence_results-mine.csv").read_text().splitlines() == rows
