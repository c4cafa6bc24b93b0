"""The benchmark's targets (PASS / MISS), each with the measured figure and why it lands where it does."""
from __future__ import annotations

from typing import List, Optional

from bench.report.formatting import PREC_LABEL, floor_latency, fmt_s


def targets(cfg: dict, res: dict) -> List[dict]:
    out = []
    dev = "cpu"
    inf = res.get("inference", {}).get(dev)
    if inf:
        r1 = [r for r in inf["rows"] if r["shots"] == 1 and r["kind"].startswith("fsdino_")]
        worst = min(r1, key=lambda r: r["speedup_vs_dual_sam_h"])
        per = ", ".join(f"{r['kind'][7:]} {r['speedup_vs_dual_sam_h']:.1f}x" for r in r1)
        out.append(dict(name="FS-DINO 1-shot >= 20x faster than DINOv2-B + SAM-H (CPU)", target=">= 20x",
                        measured=f"{worst['speedup_vs_dual_sam_h']:.1f}x (slowest variant, {worst['kind'][7:]}); {per}",
                        value=worst["speedup_vs_dual_sam_h"], passed=worst["speedup_vs_dual_sam_h"] >= 20.0,
                        why=_why_20x(inf, r1)))
        for K in cfg["shots"]:
            rk = [r for r in inf["rows"] if r["shots"] == K and r["kind"].startswith("fsdino_")]
            per = ", ".join(f"{r['kind'][7:]} {100 * r['segmenter_only_vs_floor']:.1f}% "
                            f"(end-to-end difference {100 * r['overhead_vs_floor']:+.1f}%)" for r in rk)
            worst = max(rk, key=lambda r: r["segmenter_only_vs_floor"])
            ok = [r["kind"][7:] for r in rk if r["segmenter_only_vs_floor"] <= 0.10]
            out.append(dict(name=f"Segmenter overhead <= 10% of the {1 + K} DINOv2 passes it needs ({K}-shot)",
                            target="<= 10%", measured=per, value=worst["segmenter_only_vs_floor"],
                            passed=worst["segmenter_only_vs_floor"] <= 0.10,
                            why=_why_overhead(rk, ok)))
    reuse = res.get("reuse", {}).get("by_precision", {})
    if reuse:
        ratios = {(p, v): d["ratio_once_vs_encoder_passes"] for p, ru in reuse.items() for v, d in ru["variants"].items()}
        worst = max(ratios.values())
        ru0 = next(iter(reuse.values()))
        per = "; ".join(f"{PREC_LABEL.get(p, p)}: " + ", ".join(f"{v} {d['ratio_once_vs_encoder_passes']:.3f}x"
                                                                for v, d in ru["variants"].items())
                        for p, ru in reuse.items())
        out.append(dict(name=f"N={ru0['queries']} queries on one {ru0['shots']}-shot set <= 1.15x the cost of "
                             f"{ru0['encoder_passes']} encoder passes (every variant, every precision)",
                        target="<= 1.15x", measured=per, value=worst, passed=worst <= 1.15,
                        why=_why_reuse(reuse)))
    dist = res.get("training", {}).get("distillation")
    if dist:
        out.append(dict(name="Warm teacher cache >= 10x faster distillation per step", target=">= 10x",
                        measured=f"{dist['speedup']:.1f}x ({dist['no_cache']['median_s']:.2f}s -> "
                                 f"{dist['warm_cache']['median_s']:.3f}s per step, teacher {dist['teacher']})",
                        value=dist["speedup"], passed=dist["speedup"] >= 10.0,
                        why=("the cached step skips the SAM teacher (read from disk instead) and runs only DINOv2 "
                             f"blocks 1-{3} + the adapter (forward and backward) at the student resolution "
                             f"{dist['student_resolution']}; teacher-bound steps: {dist['no_cache']['runs']}")))
    if inf:
        out.extend(precision_targets(inf, res.get("instruction_peak", {}).get(dev)))
    if res.get("loader"):
        from bench.loader import target

        t = target(res["loader"])
        if t:
            out.append(t)
    return out


def _why_20x(inf: dict, r1: list) -> str:
    sam = inf["sam_per_image_s"]["sam_h"]
    fl = floor_latency(inf, r1[0])
    ceiling = (fl + 2 * sam) / fl
    low = [r["kind"][7:] for r in r1 if r["speedup_vs_dual_sam_h"] < 20.0]
    s = (f"SAM-H costs {fmt_s(sam)} per image ({inf['sam_input']}px) = "
         f"{inf['sam_timing']['sam_h'].get('ratio_to_dinov2_pass', sam / (fl / 2)):.1f} DINOv2-B passes at 518, run on "
         f"query + support, while both pipelines need the 2 DINOv2 passes ({fmt_s(fl)}): even a free segmenter "
         f"would be at most {ceiling:.1f}x faster on this CPU")
    if low:
        s += (f"; below 20x: {', '.join(low)} (the measured end-to-end forward also carries the segmenter and "
              "the load of the machine)")
    return s


def _why_overhead(rk: list, ok: list) -> str:
    bad = [r for r in rk if r["kind"][7:] not in ok]
    s = f"within 10%: {', '.join(ok) or 'none'}"
    if bad:
        s += "; over: " + ", ".join(f"{r['kind'][7:]} (decode {fmt_s(r['decode_s'])})" for r in bad)
        s += (": the 4D correlation (full: conv on the 1369-channel correlation volume) / Mamba scan (uino) "
              "and SAM's two-way decoder are not negligible next to a DINOv2-B pass on this CPU")
    s += (". Judged on the segmenter's own work timed directly (adapter + support prompts + decode, median of 5 "
          "after warm-up) over the floor; the end-to-end difference (forward minus floor, two separate "
          "measurements) is shown too but is at the mercy of the machine's load between the two")
    return s


def _why_reuse(reuse: dict) -> str:
    s = "supports encoded once, then per query one DINOv2 pass + adapter + decode"
    bad = [(p, v, d) for p, ru in reuse.items() for v, d in ru["variants"].items()
           if d["ratio_once_vs_encoder_passes"] > 1.15]
    if bad:
        s += ("; over 1.15x: " + ", ".join(f"{v} in {PREC_LABEL.get(p, p)} (decode {fmt_s(d['decode']['median_s'])}/query)"
                                         for p, v, d in bad)
              + ": the per-query decode is repeated N times, and in bf16 the encoder pass it is compared with "
                "shrinks while the fp32 parts of the decode (correlation cosines, Mamba scan, SAM decoder) do not")
    return s


def _peak_ratio(inf: dict) -> str:
    pk = inf.get("peaks") or {}
    return f" ({pk['bf16-mixed']['gflops'] / pk['32']['gflops']:.2f}x here)" if {"32", "bf16-mixed"} <= set(pk) else ""


def _instruction_bound(inf: dict, full1: dict, ip: Optional[dict]) -> str:
    """What the cores' instruction rates say about the bf16 speed-up (empty without the measurement)."""
    if not ip or "gflops" not in ip:
        return ""
    frac32 = full1["by_precision"]["32"]["gflops_per_s"] / ip["gflops"]["32"]
    bf16 = full1["by_precision"].get("bf16-mixed")
    now = f" (it runs at {100 * bf16['gflops_per_s'] / ip['gflops']['bf16-mixed']:.0f}%)" if bf16 else ""
    return (f". The cores' bf16 dot product does {ip['ratio']:.2f}x the FLOPs of their fp32 FMA per second "
            f"(register-only, {ip['gflops']['bf16-mixed']:.0f} vs {ip['gflops']['32']:.0f} GFLOP/s) and fp32 runs this "
            f"model at {100 * frac32:.0f}% of its instruction rate: 2.0x would need bf16 at "
            f"{100 * frac32 * 2.0 / ip['ratio']:.0f}% of its own{now}, end to end, while the softmax exponentials, "
            "normalisations and the decoder's fp32 parts take the same time in both precisions")


def precision_targets(inf: dict, ip: Optional[dict] = None) -> List[dict]:
    """bf16 speed-up, bf16 accuracy on the trained demo model, and the encoder's fraction of peak
    (``ip``: the device's instruction peak, ``bench.machine.instruction_peak``)."""
    out = []
    rows = inf.get("precision_rows") or []
    full1 = next((r for r in rows if r["kind"] == "fsdino_full" and r["shots"] == 1), None)
    if full1 and "bf16-mixed" in full1["by_precision"]:
        e = full1["by_precision"]["bf16-mixed"]
        out.append(dict(name="bf16 FS-DINO full 1-shot >= 2.0x faster than fp32", target=">= 2.0x",
                        measured=f"{e['speedup_vs_fp32']:.2f}x ({fmt_s(full1['by_precision']['32']['latency_s'])} -> "
                                 f"{fmt_s(e['latency_s'])}; random weights: {100 * e['pixel_agreement_vs_fp32']:.2f}% "
                                 "pixels as fp32)",
                        value=e["speedup_vs_fp32"], passed=e["speedup_vs_fp32"] >= 2.0,
                        why=("bf16 DINOv2 (92% of the FLOPs) runs at the bf16 fraction of peak shown below; the "
                             f"bf16/fp32 peak ratio{_peak_ratio(inf)} bounds the speed-up when both precisions run "
                             "at the same fraction of their peak; the fp32 parts (cosines, Mamba scan, SAM "
                             "decoder) and the non-matmul ops do not speed up" + _instruction_bound(inf, full1, ip))))
    da = inf.get("demo_agreement") or {}
    if da.get("skipped"):
        out.append(dict(name="bf16 masks: >= 99% pixels = fp32 and mIoU within 0.5 (trained demo model)",
                        target=">= 99%, |dmIoU| <= 0.5", measured="not measured", value=0.0, passed=False,
                        why=da["skipped"]))
    elif "bf16-mixed" in da.get("by_precision", {}):
        e = da["by_precision"]["bf16-mixed"]
        ok = e["pixel_agreement_vs_fp32"] >= 0.99 and abs(e["miou_diff_vs_fp32"]) <= 0.5
        out.append(dict(name="bf16 masks: >= 99% pixels = fp32 and mIoU within 0.5 (trained demo model)",
                        target=">= 99%, |dmIoU| <= 0.5",
                        measured=f"{100 * e['pixel_agreement_vs_fp32']:.3f}% pixels, mIoU {e['miou']:.2f} vs "
                                 f"{da['by_precision']['32']['miou']:.2f} ({e['miou_diff_vs_fp32']:+.2f})",
                        value=e["pixel_agreement_vs_fp32"], passed=ok,
                        why=f"{e['episodes']} test episodes of the demo model, each precision on the same episodes"))
    floor1 = next((r for r in rows if r["kind"] == "floor" and r["shots"] == 1), None)
    if floor1 and "bf16-mixed" in floor1["by_precision"]:
        f32, fb = floor1["by_precision"]["32"], floor1["by_precision"]["bf16-mixed"]
        ok = fb["fraction_of_peak"] >= 0.60 and f32["fraction_of_peak"] >= 0.85
        out.append(dict(name="DINOv2 encoder >= 60% of the bf16 matmul peak and >= 85% of the fp32 peak",
                        target=">= 60% / >= 85%",
                        measured=f"bf16 {100 * fb['fraction_of_peak']:.0f}% ({fb['gflops_per_s']:.0f} GFLOP/s), fp32 "
                                 f"{100 * f32['fraction_of_peak']:.0f}% ({f32['gflops_per_s']:.0f} GFLOP/s)",
                        value=fb["fraction_of_peak"], passed=ok,
                        why=("2 passes (query + support) at batch 1; linear layers on oneDNN (bias and GELU fused, "
                             "OneDNNLinear), attention in fsseg.kernels; the rest of the time is the softmax "
                             "exponentials, LayerNorm, layer scale, the residual adds and the position-embedding "
                             "resampling, which run at memory speed, not matmul speed")))
    return out
