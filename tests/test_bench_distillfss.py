"""bench/distillfss.py: the specialised-vs-episodic comparison in its quick form, on an untrained small
checkpoint; without a checkpoint it says so and writes nothing."""

import json

import pytest

TINY = dict(segmenter={"name": "tiny", "method": "full"}, image_size=56)
# mIoU of the quick run (2 classes, 1 and 2 shots, untrained seeded teacher): episodic, the specialised
# student at its initialisation, after its 2 steps
QUICK_MIOU = [(6.35, 6.10, 6.24), (8.38, 7.49, 7.55)]


@pytest.fixture(scope="module")
def tiny_fewshot_ckpt(untrained_ckpt) -> str:
    return untrained_ckpt(**TINY)


@pytest.mark.slow
def test_bench_quick(tmp_path, tiny_fewshot_ckpt):
    from bench import distillfss

    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.md").write_text("# other sections\n\nkept\n")
    assert distillfss.main(["--quick", "--ckpt", tiny_fewshot_ckpt, "--output-dir", str(out)]) == 0
    res = json.loads((out / "distillfss.json").read_text())
    assert len(res["rows"]) == 2 and res["config"]["quick"]
    got = [tuple(r[key]["miou"] for key in ("episodic", "specialised_init", "specialised")) for r in res["rows"]]
    assert got == [pytest.approx(row, abs=0.3) for row in QUICK_MIOU], got
    for r in res["rows"]:
        for key in ("episodic", "specialised_init", "specialised"):
            # the N-way maps binarised per class pool the same intersections and unions
            assert r[key]["dataset_fg_iou"] == pytest.approx(r[key]["miou"], abs=1e-6)
        for key in ("specialised", "episodic", "episodic_cached"):
            assert r["ms_per_query"][key] > 0 and r["gflop_per_query"][key] > 0
    md = (out / "results.md").read_text()
    assert md.startswith("# other sections\n\nkept\n") and md.count(distillfss.BEGIN) == 1
    # a second run replaces its section instead of appending another
    distillfss.write_section(out / "results.md", distillfss.to_markdown(res))
    assert (out / "results.md").read_text().count(distillfss.BEGIN) == 1


def test_bench_without_checkpoint_fails(tmp_path, capsys):
    from bench import distillfss

    assert distillfss.main(["--quick", "--demo-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path)]) == 2
    assert "no trained FS-DINO checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "distillfss.json").exists()
