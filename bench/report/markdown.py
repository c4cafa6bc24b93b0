"""``results.md``: the machine, the targets, and one table per measurement."""
from __future__ import annotations

from pathlib import Path
from typing import List

from bench.report.formatting import PREC_LABEL, floor_latency, fmt_p, fmt_s


def _section(L: list, heading: str) -> None:
    """A results.md heading (``## ...``) with its blank lines."""
    L += ["", heading, ""]


def write_markdown(cfg: dict, res: dict, path: Path) -> None:
    mi = res["machine"]
    L = ["# fsseg cost benchmark (`make bench`)", ""]
    L.append(f"Machine: **{mi['cpu']}**, {mi['cores']} cores, {mi['ram_gib']} GiB RAM, torch {mi['torch']}, "
             f"{mi['threads']} torch threads, Python {mi['python']}"
             + (f", GPU {mi.get('gpu')}" if mi.get("cuda") else ", no GPU") + ".")
    if "loadavg_start" in mi:
        L.append(f"Load average at start {mi['loadavg_start']}, at end {mi.get('loadavg_end')} "
                 "(other jobs sharing the cores slow every figure alike; ratios are what to read).")
    L.append(f"Run: {'--quick (tiny models, not representative)' if cfg['quick'] else 'full-size models'}, "
             f"backbone `{cfg['backbone']}`, random weights, fp32 unless a table says otherwise, "
             f"`torch.inference_mode()`, batch 1. Total runtime {res.get('runtime_s', 0) / 60:.1f} min.")
    for dev, pk in res.get("peak", {}).items():
        one = next(iter(pk.values()))
        L.append("")
        L.append(f"Measured matrix-multiply peak ({dev}, {one['n']}^3 product, best of {one['reps']}, "
                 f"{one['threads']} threads): "
                 + ", ".join(f"**{PREC_LABEL.get(p, p)} {v['gflops']:.0f} GFLOP/s**" for p, v in pk.items())
                 + (f" (bf16/fp32 {pk['bf16-mixed']['gflops'] / pk['32']['gflops']:.2f}x)" if "bf16-mixed" in pk else "")
                 + ". Every inference row's GFLOP/s is read against the peak of its own precision.")
        if any(len(v.get("by_library", {})) > 1 for v in pk.values()):
            L.append("Each peak is the faster of torch.mm and oneDNN's matmul, timed in alternation (on x86 torch.mm's "
                     "fp32 is MKL's sgemm, which on AMD CPUs runs below the cores' rate): "
                     + "; ".join(f"{PREC_LABEL.get(p, p)} " + ", ".join(f"{k} {g:.0f}" for k, g in v["by_library"].items())
                                 for p, v in pk.items() if "by_library" in v) + " GFLOP/s.")
        ip = res.get("instruction_peak", {}).get(dev)
        if ip and "gflops" in ip:
            g = ip["gflops"]
            L.append(f"The cores' instruction rate (register-only 512-bit multiply-adds, best of {ip['reps']}, "
                     f"{ip['threads']} threads): fp32 FMA {g['32']:.0f}, bf16 dot product (vdpbf16ps) "
                     f"{g['bf16-mixed']:.0f} GFLOP/s (bf16/fp32 {ip['ratio']:.2f}x); the matmul peaks are "
                     + ", ".join(f"{PREC_LABEL.get(p, p)} {100 * pk[p]['gflops'] / g[p]:.0f}%" for p in g if p in pk)
                     + " of it.")
        elif ip:
            L.append(f"The cores' instruction rate: not measured ({ip['skipped']}).")
        if any("measured" in v for v in pk.values()):
            L.append("The peak is the higher of two measurements, at the start of the run and in the inference "
                     "process just before its rows (the fp32 rate of this shared machine moves between minutes): "
                     + "; ".join(f"{PREC_LABEL.get(p, p)} " + ", ".join(f"{k} {g:.0f}" for k, g in v["measured"].items())
                                 for p, v in pk.items() if "measured" in v) + " GFLOP/s.")
    L.append("")
    L.append("Every latency is the median of the timed runs listed (after warm-up). Peak memory: "
             f"{res['inference'].get('cpu', {}).get('mem_method', 'n/a')} (extra memory for the computation, "
             "on top of the fp32 weights, which are listed separately).")
    _section(L, "## Targets")
    L.append("| target | measured | result | why |")
    L.append("|---|---|---|---|")
    for t in res["targets"]:
        L.append(f"| {t['name']} | {t['measured']} | **{'PASS' if t['passed'] else 'MISS'}** | {t['why']} |")
    for dev, inf in res["inference"].items():
        _section(L, f"## Inference at {cfg['size']}x{cfg['size']} ({dev})")
        L.append(f"SAM image encoders see the query and every support resized to {inf['sam_input']}x{inf['sam_input']} "
                 "(their native input), one image at a time. SAM per-image latency: ")
        for k, v in inf["sam_per_image_s"].items():
            t = inf["sam_timing"][k]
            raw = inf.get("sam_per_image_s_raw", {}).get(k, t["median_s"])
            ratio = t.get("ratio_to_dinov2_pass")
            L.append(f"- SAM {cfg['sam_variants'][k]}: **{fmt_s(v)}**"
                     + (f" = {ratio:.1f} DINOv2-B passes at {cfg['size']} (ratio measured in the SAM process; "
                        f"{fmt_s(raw)} there, under that moment's load)" if ratio else "")
                     + (f"; {t['note']}" if t.get("note") else f"; median of {t['runs']} after {t['warmup']} warm-up"))
        L.append("")
        L.append((inf.get("sam_normalization", "") + ". ") if inf.get("sam_normalization") else "")
        L.append("Dual-encoder rows = DINOv2 floor + (1+K) x SAM per image; the prompt/decoder part of "
                 "Matcher/VRP-SAM-style methods (SAM prompt encoder + mask decoder, Matcher's point sampling) is "
                 "negligible next to the encoders and not included, so those rows are a lower bound.")
        L.append("")
        L.append("| shots | pipeline | latency | runs | vs floor | segmenter-only | speed-up vs DINOv2+SAM-H | "
                 "vs DINOv2+SAM-B | GFLOP | GFLOP/s (% of fp32 peak) | peak extra mem | weights | params (segmenter) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in inf["rows"]:
            if r["kind"].startswith("fsdino"):
                L.append(f"| {r['shots']} | {r['name']} | {fmt_s(r['latency_s'])} | {r['runs']} | "
                         f"{100 * r['overhead_vs_floor']:+.1f}% | {fmt_s(r['segmenter_only_s'])} "
                         f"({100 * r['segmenter_only_vs_floor']:.1f}%) | {r['speedup_vs_dual_sam_h']:.1f}x | "
                         f"{r['speedup_vs_dual_sam_b']:.1f}x | {_roof(r)} | {r['peak_mem_mb']:.0f} MB | {r['weights_mb']:.0f} MB | "
                         f"{fmt_p(r['params'])} ({fmt_p(r['params_segmenter'])}) |")
            else:
                vs = "—" if r["kind"] == "floor" else f"{r['latency_s'] / floor_latency(inf, r):.1f}x"
                L.append(f"| {r['shots']} | {r['name']} | {fmt_s(r['latency_s'])} | {r['runs']} | {vs} | — | — | — | "
                         f"{_roof(r)} | {r['peak_mem_mb']:.0f} MB | {r['weights_mb']:.0f} MB | {fmt_p(r['params'])} |")
        L.append("")
        L.append("`vs floor`: end-to-end latency relative to DINOv2 alone on the same 1+K images. "
                 "`segmenter-only`: adapter + support prompts + decode timed directly (and its share of the floor). "
                 "`params (segmenter)`: everything but the frozen DINOv2. `GFLOP`: FLOPs of the row counted once "
                 "with `fsseg.flops` (torch's FlopCounterMode plus explicit attention formulas; dual rows: DINOv2 + (1+K) SAM passes, SAM counted by its parts); GFLOP/s = "
                 "GFLOP / latency."
                 + ("" if not inf.get("packed_weights_mb") else
                    " DINOv2's block weights packed into oneDNN's layout on first use (`OneDNNLinear`), kept across "
                    "calls and not in `peak extra mem`: " + ", ".join(
                        f"{PREC_LABEL.get(p, p)} {mb:.0f} MB" for p, mb in inf["packed_weights_mb"].items()) + "."))
        L.extend(_precision_md(cfg, inf))
    for prec, ru in res.get("reuse", {}).get("by_precision", {}).items():
        _section(L, f"## Support reuse ({PREC_LABEL.get(prec, prec)}): {ru['queries']} queries on one {ru['shots']}-shot "
                 f"support set ({cfg['size']}x{cfg['size']})")
        L.append(f"{ru['encoder_passes']} DINOv2 passes ({ru['shots']} supports in one batch + {ru['queries']} queries one "
                 f"by one): {fmt_s(ru['encoder_passes_s'])}; one query pass {fmt_s(ru['encoder_query_pass']['median_s'])} "
                 f"(median of {ru['encoder_query_pass']['runs']}), adapter {fmt_s(ru['adapter']['median_s'])}.")
        L.append("")
        L.append("| variant | supports encoded once | vs encoder passes | decode per query | re-encoded per query | re-encode / once |")
        L.append("|---|---|---|---|---|---|")
        for v, d in ru["variants"].items():
            L.append(f"| {v} | {fmt_s(d['encode_once_s'])} | {d['ratio_once_vs_encoder_passes']:.3f}x | "
                     f"{fmt_s(d['decode']['median_s'])} | {fmt_s(d['reencode_s'])} | {d['ratio_reencode_vs_once']:.2f}x |")
        L.append("")
        L.append(ru.get("note", "") + ".")
    sp = res.get("specialized_vs_episodic")
    if sp:
        _section(L, "## Specialised (support-free) vs episodic, as K grows")
        if sp.get("skipped"):
            L.append(f"Skipped: {sp['skipped']}")
        else:
            L.append(f"{sp['note']}. Specialised: {fmt_s(sp['specialized']['median_s'])} per query "
                     f"({fmt_p(sp['params_specialized'])} params incl. shared encoder); one DINOv2 pass: "
                     f"{fmt_s(sp['encoder_single_pass']['median_s'])}.")
            L.append("")
            L.append("| K | episodic FS-DINO full | specialised | episodic / specialised |")
            L.append("|---|---|---|---|")
            for r in sp["rows"]:
                L.append(f"| {r['shots']} | {fmt_s(r['episodic']['median_s'])} | {fmt_s(r['specialized']['median_s'])} | "
                         f"{r['ratio_episodic_vs_specialized']:.1f}x |")
    tr = res.get("training", {})
    if tr:
        _section(L, "## Training throughput (batch 1)")
        L.append("| stage | without cache | with warm cache | speed-up | notes |")
        L.append("|---|---|---|---|---|")
        d = tr.get("distillation")
        if d:
            L.append(f"| distillation (teacher SAM {d['teacher']} at {d['teacher_input']}, student {d['student_resolution']}) | "
                     f"{d['no_cache']['steps_per_s']:.4f} steps/s ({fmt_s(d['no_cache']['median_s'])}/step, "
                     f"{d['no_cache']['runs']} step(s)) | {d['warm_cache']['steps_per_s']:.2f} steps/s "
                     f"({fmt_s(d['warm_cache']['median_s'])}/step, {d['warm_cache']['runs']} steps) | "
                     f"{d['speedup']:.1f}x | {d['no_cache']['note']}"
                     + ("" if d["no_cache"].get("composed") else f"; cache-filling step {fmt_s(d['cold_cache_step_s'])}")
                     + f"; teacher calls with warm cache: {d['warm_cache']['teacher_calls']} |")
        f = tr.get("fewshot")
        if f:
            L.append(f"| few-shot ({f['variant']}, 1-shot, {f['size']}) | {f['no_cache']['steps_per_s']:.3f} steps/s "
                     f"({fmt_s(f['no_cache']['median_s'])}/step) | {f['warm_cache']['steps_per_s']:.3f} steps/s "
                     f"({fmt_s(f['warm_cache']['median_s'])}/step) | {f['speedup']:.1f}x | frozen DINOv2+adapter "
                     f"features cached (feature_cache='all'); cache-filling step {fmt_s(f['cold_cache_step_s'])} |")
    if res.get("loader"):
        from bench.loader import markdown

        _section(L, "## Input pipeline: CPU per training episode vs what a GPU eats")
        L += markdown(res["loader"])
    sc = res.get("scaling", {})
    if sc:
        _section(L, "## Scaling (FS-DINO full)")
        if "shots" in sc:
            L.append(f"Latency vs K at {sc['shots']['size']} (floor = (1+K) x one measured batch-1 DINOv2 pass; FS-DINO batches its K supports, so it can come out below): " + ", ".join(
                f"K={r['shots']} {fmt_s(r['fsdino']['median_s'])} (floor {fmt_s(r['dinov2_floor']['median_s'])})"
                for r in sc["shots"]["rows"]) + ".  ")
        if "resolution" in sc:
            L.append("Latency vs resolution (1-shot; the main-table size is taken from the main table): " + ", ".join(
                f"{r['resolution']} {fmt_s(r['fsdino']['median_s'])} (floor {fmt_s(r['dinov2_floor']['median_s'])})"
                for r in sc["resolution"]["rows"]) + ".  ")
        if "classes" in sc:
            L.append(f"Latency vs classes N (1-shot, {sc['classes']['size']}, `segment_multiclass`): " + ", ".join(
                f"N={r['classes']} {fmt_s(r['fsdino']['median_s'])}"
                + (f" (specialised {fmt_s(r['specialized']['median_s'])})" if "specialized" in r else "")
                for r in sc["classes"]["rows"]) + ".")
        L.append("")
        for p in res.get("plots", []):
            L.append(f"![{p}]({p})")
    if res.get("skipped"):
        L.append("")
        L.append("## Notes, deviations, skipped parts")
        for s in res["skipped"]:
            L.append(f"- {s}")
    path.write_text("\n".join(L) + "\n")


def _roof(r: dict) -> str:
    if "gflops_per_s" not in r:
        return f"{r['flops'] / 1e9:.0f} | {r['flops'] / 1e9 / r['latency_s']:.0f}" if r.get("flops") else "— | —"
    return f"{r['gflop']:.4g} | {r['gflops_per_s']:.0f} ({100 * r['fraction_of_peak']:.0f}%)"


def _precision_md(cfg: dict, inf: dict) -> List[str]:
    """The fp32 / bf16 table and the trained demo model's agreement, as markdown lines."""
    rows = inf.get("precision_rows") or []
    precs = list(rows[0]["by_precision"]) if rows else []
    L = []
    if len(precs) > 1:
        L += ["", f"### fp32 and {', '.join(PREC_LABEL.get(p, p) for p in precs[1:])} side by side "
                  f"({cfg['size']}x{cfg['size']}, random weights)", ""]
        L.append("Low precision = `FSDINO.set_precision` (`fsseg.precision`): frozen DINOv2 + adapter held in bf16 "
                 "weights and run natively, the rest under autocast; the correlation cosines (fp32 sums), the Mamba "
                 "scan and the SAM decoder (attention softmax, final upsampling) in fp32; on a CPU with AVX512-BF16 "
                 "DINOv2's attention (both precisions) and the correlation's dot products run in `fsseg.kernels`, "
                 "and DINOv2's linear layers on oneDNN (`OneDNNLinear`) in both precisions. Each row's "
                 "precisions are separate copies of the model timed in alternation (same machine state). "
                 "`pixels = fp32`: share of predicted mask pixels (logit > 0) equal to the fp32 model's on the "
                 "same input.")
        L.append("")
        head = "| shots | model | GFLOP | " + " | ".join(
            f"{PREC_LABEL.get(p, p)} latency | {PREC_LABEL.get(p, p)} GFLOP/s (% of its peak)" for p in precs)
        head += " | " + " | ".join(f"{PREC_LABEL.get(p, p)} speed-up | {PREC_LABEL.get(p, p)} pixels = fp32"
                                   for p in precs[1:]) + " |"
        L.append(head)
        L.append("|" + "---|" * (3 + 2 * len(precs) + 2 * (len(precs) - 1)))
        for r in rows:
            cells = [f"{r['shots']}", r["name"], f"{r['gflop']:.4g}"]
            for p in precs:
                e = r["by_precision"][p]
                cells += [fmt_s(e["latency_s"]), f"{e['gflops_per_s']:.0f} ({100 * e['fraction_of_peak']:.0f}%)"]
            for p in precs[1:]:
                e = r["by_precision"][p]
                agree = e.get("pixel_agreement_vs_fp32")
                cells += [f"{e['speedup_vs_fp32']:.2f}x", "—" if agree is None else f"{100 * agree:.2f}%"]
            L.append("| " + " | ".join(cells) + " |")
    da = inf.get("demo_agreement")
    if da:
        L += ["", "### Low precision on the trained demo model (its test episodes)", ""]
        if da.get("skipped"):
            L.append(f"Not measured: {da['skipped']}.")
        else:
            L.append(f"Checkpoint `{da['checkpoint']}`, {da['dataset']} fold {da['fold']}, {da['shots']}-shot, "
                     f"{da['image_size']} px, {da['by_precision']['32']['episodes']} test episodes.")
            L.append("")
            L.append("| precision | mIoU | FB-IoU | mIoU - fp32 | predicted pixels = fp32 |")
            L.append("|---|---|---|---|---|")
            for p, e in da["by_precision"].items():
                L.append(f"| {PREC_LABEL.get(p, p)} | {e['miou']:.2f} | {e['fbiou']:.2f} | "
                         f"{e.get('miou_diff_vs_fp32', 0.0):+.2f} | "
                         + ("—" if p == "32" else f"{100 * e['pixel_agreement_vs_fp32']:.3f}%") + " |")
    return L
