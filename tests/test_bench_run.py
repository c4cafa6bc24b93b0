"""`make bench` smoke test: `bench.run --quick` writes results.json / results.md / PNGs with the
expected keys and sane numbers. No timing assertions (timings depend on the machine and its load)."""
import json
import math

import pytest


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from bench import run

    assert run.MEASUREMENTS[0] == "machine"  # the peak first, then one module per measurement
    out = tmp_path_factory.mktemp("bench")
    assert run.main(["--quick", "--output-dir", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_files_written(quick_run):
    out, res = quick_run
    md = (out / "results.md").read_text()
    assert "## Targets" in md and "Machine:" in md
    for t in res["targets"]:  # every target's verdict, as results.json has it
        assert f"| {t['name']} | {t['measured']} | **{'PASS' if t['passed'] else 'MISS'}** |" in md, t["name"]
    for name in res["plots"]:
        p = out / name
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {"latency_inference.png", "scaling_shots.png", "scaling_resolution.png", "scaling_classes.png"} <= set(res["plots"])


@pytest.mark.slow
def test_keys_and_numbers(quick_run):
    _, res = quick_run
    for key in ("machine", "config", "inference", "reuse", "training", "scaling", "specialized_vs_episodic",
                "targets", "runtime_s"):
        assert key in res, key
    m = res["machine"]
    for key in ("cpu", "cores", "ram_gib", "torch", "threads"):
        assert key in m
    assert all(math.isfinite(x) for x in _numbers(res))

    inf = res["inference"]["cpu"]
    kinds = {r["kind"] for r in inf["rows"]}
    assert {"floor", "dual_sam_h", "dual_sam_b", "fsdino_ba_pcs", "fsdino_compact", "fsdino_full",
            "fsdino_uino"} <= kinds
    assert {r["shots"] for r in inf["rows"]} == {1, 5}
    for r in inf["rows"]:
        assert _positive_finite(r["latency_s"]) and _positive_finite(r["params"]) and r["peak_mem_mb"] >= 0
        if r["kind"].startswith("fsdino"):
            assert _positive_finite(r["speedup_vs_dual_sam_h"]) and _positive_finite(r["segmenter_only_s"])
            assert r["timing"]["runs"] >= 2 and r["timing"]["median_s"] > 0

    assert set(res["reuse"]["by_precision"]) == {"32", "bf16-mixed"}
    for reuse in res["reuse"]["by_precision"].values():
        assert set(reuse["variants"]) == {"ba_pcs", "compact", "full", "uino"}
        for d in reuse["variants"].values():
            assert _positive_finite(d["encode_once_s"]) and _positive_finite(d["reencode_s"])
            assert _positive_finite(d["ratio_once_vs_encoder_passes"])

    # the matmul peak of every precision, and every inference row read against it
    peak = res["peak"]["cpu"]
    assert set(peak) == {"32", "bf16-mixed"} and all(_positive_finite(p["gflops"]) for p in peak.values())
    for r in inf["rows"]:
        if r["kind"] == "floor" or r["kind"].startswith("fsdino"):
            assert _positive_finite(r["gflop"]) and 0 < r["fraction_of_peak"]
    prows = inf["precision_rows"]
    assert {r["kind"] for r in prows} == {"floor", "fsdino_ba_pcs", "fsdino_compact", "fsdino_full", "fsdino_uino"}
    for r in prows:
        assert set(r["by_precision"]) == {"32", "bf16-mixed"}
        bf = r["by_precision"]["bf16-mixed"]
        assert _positive_finite(bf["speedup_vs_fp32"]) and _positive_finite(bf["gflops_per_s"])
        if r["kind"] != "floor":
            assert 0.97 <= bf["pixel_agreement_vs_fp32"] <= 1.0  # 0.995-0.999 on the reference machine
    da = inf["demo_agreement"]  # a clean clone has no `make demo` output: then it says so
    if da.get("skipped"):
        assert "make demo" in da["skipped"]
    else:
        assert 0.97 <= da["by_precision"]["bf16-mixed"]["pixel_agreement_vs_fp32"] <= 1

    tr = res["training"]
    for key in ("distillation", "fewshot"):
        assert _positive_finite(tr[key]["speedup"])
        assert _positive_finite(tr[key]["no_cache"]["steps_per_s"]) and _positive_finite(tr[key]["warm_cache"]["steps_per_s"])
    assert tr["distillation"]["warm_cache"]["teacher_calls"] == 0  # a warm cache never runs the teacher

    sc = res["scaling"]
    assert [r["shots"] for r in sc["shots"]["rows"]] == res["config"]["sweep_shots"]
    assert [r["resolution"] for r in sc["resolution"]["rows"]] == res["config"]["resolutions"]
    assert [r["classes"] for r in sc["classes"]["rows"]] == res["config"]["classes"]
    for group in ("shots", "resolution", "classes"):
        assert all(_positive_finite(r["fsdino"]["median_s"]) for r in sc[group]["rows"])

    sp = res["specialized_vs_episodic"]
    if not sp.get("skipped"):  # another engineer's module; skipped with a reason when absent
        assert [r["shots"] for r in sp["rows"]] == res["config"]["spec_shots"]
        assert all(_positive_finite(r["ratio_episodic_vs_specialized"]) for r in sp["rows"])

    names = " ".join(t["name"] for t in res["targets"])
    for word in ("20x", "10%", "1.15x", "teacher cache", "2.0x faster than fp32", "99% pixels", "bf16 matmul peak"):
        assert word in names
    for t in res["targets"]:
        assert isinstance(t["passed"], bool) and math.isfinite(t["value"])


def test_peak_is_the_best_of_the_two_measurements():
    from bench.inference import best_peaks, roofline

    start = {"32": dict(gflops=145.0, n=2048), "bf16-mixed": dict(gflops=400.0, n=2048)}
    window = {"32": dict(gflops=170.0, n=2048), "bf16-mixed": dict(gflops=380.0, n=2048)}
    best = best_peaks(start, window)
    assert best["32"]["gflops"] == 170.0 and best["bf16-mixed"]["gflops"] == 400.0
    assert best["32"]["measured"] == {"start of run": 145.0, "before the inference rows": 170.0}
    # 100 GFLOP in 0.8 s = 125 GFLOP/s: 73.5% of the best fp32 peak, not 86% of the slow one
    assert round(roofline(100e9, 0.8, best["32"])["fraction_of_peak"], 3) == 0.735
    assert best_peaks(start, {})["32"]["measured"] == {"start of run": 145.0}


@pytest.mark.slow
def test_quick_run_reports_both_peak_measurements(quick_run):
    out, res = quick_run
    peak = res["peak"]["cpu"]["32"]
    assert set(peak["measured"]) == {"start of run", "before the inference rows"}
    assert math.isclose(peak["gflops"], max(peak["measured"].values()), abs_tol=0.05)  # `measured` is rounded to 0.1
    assert "higher of two measurements" in (out / "results.md").read_text()
    # every GEMM library torch reaches is measured and the faster one is the peak (MKL alone would
    # flatter every row on AMD CPUs)
    from fsseg.kernels.onednn_linear import onednn_linear_available

    for p in res["peak"]["cpu"].values():
        libs = p["by_library"]
        assert set(libs) == ({"torch.mm", "oneDNN matmul"} if onednn_linear_available() else {"torch.mm"})
        assert math.isclose(p["gflops"], libs[p["library"]], abs_tol=0.06) and libs[p["library"]] == max(libs.values())
    assert "faster of torch.mm" in (out / "results.md").read_text()


@pytest.mark.slow
def test_quick_run_reports_the_instruction_rate_the_peaks_are_read_against(quick_run):
    out, res = quick_run
    from fsseg.kernels import cpu_kernels_status

    ip = res["instruction_peak"]["cpu"]
    md = (out / "results.md").read_text()
    if not cpu_kernels_status()[0]:
        assert "skipped" in ip and "instruction rate: not measured" in md
        return
    g = ip["gflops"]
    assert set(g) == {"32", "bf16-mixed"} and all(_positive_finite(x) for x in g.values())
    assert math.isclose(ip["ratio"], g["bf16-mixed"] / g["32"], rel_tol=1e-2)
    assert "bf16 dot product (vdpbf16ps)" in md and "the matmul peaks are" in md


def test_instruction_bound_worked_by_hand():
    # fp32 at 180 of a 200 GFLOP/s FMA rate (90%), bf16 dot products at 2.0x: 2.0x needs bf16 at 90%
    from bench.report.targets import _instruction_bound

    full1 = {"by_precision": {"32": {"gflops_per_s": 180.0}, "bf16-mixed": {"gflops_per_s": 300.0}}}
    text = _instruction_bound({}, full1, {"gflops": {"32": 200.0, "bf16-mixed": 400.0}, "ratio": 2.0})
    assert "2.00x the FLOPs" in text and "at 90% of its instruction rate" in text
    assert "bf16 at 90% of its own (it runs at 75%)" in text
    assert _instruction_bound({}, full1, {"skipped": "no AVX512-BF16"}) == "" and _instruction_bound({}, full1, None) == ""


def test_merge_results_takes_a_later_runs_sections(tmp_path):
    import json

    from bench.report import merge_results

    full = dict(sections=["inference", "loader"], inference={"cpu": 1}, loader={"rows": ["old"]}, runtime_s=60)
    part = dict(sections=["loader"], inference={}, loader={"rows": ["new"]}, runtime_s=30)
    (tmp_path / "a.json").write_text(json.dumps(full))
    (tmp_path / "b.json").write_text(json.dumps(part))
    res = merge_results([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    # the partial run measured the loader again: its rows replace the old ones; it did not run inference
    assert res["loader"] == {"rows": ["new"]} and res["inference"] == {"cpu": 1} and res["runtime_s"] == 90
