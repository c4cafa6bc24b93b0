"""Inference: DINOv2 floor, FS-DINO variants and SAM image encoders (dual-encoder rows), in fp32 and
bf16 side by side, each row with its FLOPs (counted once per model), achieved GFLOP/s and fraction of
the measured matmul peak, and the fp32-vs-bf16 pixel agreement. ``python -m bench --sections inference``."""
from __future__ import annotations

from typing import List, Optional

from bench.common import (
    PeakMemory,
    build_fsdino_cfg,
    log,
    make_config,
    n_params,
    rand_inputs,
    run_worker,
    timeit,
    timeit_interleaved,
    worker_main,
)

NAME = "inference"


def sam_blockwise(sam, x, cfg: dict, device: str, dino=None, dq=None) -> dict:
    """SAM image-encoder latency per image, composed from its parts timed separately: preprocess +
    patch embed, one windowed block, one global-attention block, neck (every block of a kind has the
    same shapes and cost), ``total = pre + n_window x window + n_global x global + neck``. Used on a
    machine where one full ViT-H pass takes tens of seconds (minutes under load); ``dino``/``dq``: a DINOv2 pass timed in the same
    window, so the SAM figure can be related to the DINOv2 passes measured elsewhere in the run."""
    import torch

    from fsseg.flops import count_flops

    e = sam.encoder
    reps, warm = cfg["reps"], 1
    with torch.inference_mode():
        xp = sam.preprocess(x)
        tok = e.patch_embed(xp)
        if e.pos_embed is not None:
            tok = tok + e.pos_embed
        glob = [i for i, b in enumerate(e.blocks) if b.window_size == 0]
        win = [i for i, b in enumerate(e.blocks) if b.window_size > 0]
        t_pre = timeit(lambda: (e.patch_embed(sam.preprocess(x)) + (e.pos_embed if e.pos_embed is not None else 0)),
                       warm, reps, device)
        t_win = timeit(lambda: e.blocks[win[0]](tok), warm, reps, device) if win else None
        t_glob = timeit(lambda: e.blocks[glob[0]](tok), warm, reps, device) if glob else None
        t_neck = timeit(lambda: e.neck(tok.permute(0, 3, 1, 2)), warm, reps, device)
        t_dino = timeit(lambda: dino(dq), warm, reps, device) if dino is not None else None
        f_pre = count_flops(lambda: e.patch_embed(sam.preprocess(x)))
        f_win = count_flops(lambda: e.blocks[win[0]](tok)) if win else 0
        f_glob = count_flops(lambda: e.blocks[glob[0]](tok)) if glob else 0
        f_neck = count_flops(lambda: e.neck(tok.permute(0, 3, 1, 2)))
    total = (t_pre["median_s"] + len(win) * (t_win["median_s"] if t_win else 0)
             + len(glob) * (t_glob["median_s"] if t_glob else 0) + t_neck["median_s"])
    out = dict(median_s=total, runs=reps, warmup=warm, composed=True, n_window_blocks=len(win),
               n_global_blocks=len(glob), preprocess_patch_embed=t_pre, window_block=t_win, global_block=t_glob,
               neck=t_neck, flops=f_pre + len(win) * f_win + len(glob) * f_glob + f_neck)
    if t_dino is not None:
        out["dinov2_pass_same_window"] = t_dino
        out["ratio_to_dinov2_pass"] = total / t_dino["median_s"]
    return out


def worker(spec: dict) -> dict:
    """Fresh process. ``dino``: DINOv2 floor + every FS-DINO variant (they share the DINOv2 passes);
    ``sam``: one SAM image encoder (+ the distillation benchmark, whose teacher it is)."""
    import torch

    from fsseg.flops import count_flops

    torch.manual_seed(0)
    cfg = make_config(spec["quick"])
    cfg.update(spec.get("overrides", {}))  # run.py --override, for a partial run
    device = spec["device"]
    kind = spec["kind"]
    size = cfg["size"]
    out: dict = dict(kind=kind, device=device)
    dm = None
    if kind == "sam" and spec.get("distill"):
        from fsseg.modules import DistillationModule

        # built outside inference_mode: its adapter is trained afterwards
        dm = DistillationModule(backbone=cfg["backbone"], teacher=spec["variant"], resolution=size).to(device)
    if kind == "dino":
        import copy

        from bench.machine import matmul_peak
        from fsseg.kernels.onednn_linear import packed_weight_bytes
        from fsseg.models import DINOv2Encoder
        from fsseg.precision import hold_frozen_in

        precs = spec["precisions"]
        enc = DINOv2Encoder(cfg["backbone"]).to(device)
        models = {v: build_fsdino_cfg(cfg, v, size).to(device) for v in cfg["variants"]}
        inputs = {K: rand_inputs(1, K, size, device) for K in cfg["shots"]}
        out["floor"] = dict(params=n_params(enc), configs={p: {} for p in precs}, flops={})
        out["fsdino"] = {}
        for v, m in models.items():
            parts = {k: n_params(p) for k, p in m.parts().items()}
            out["fsdino"][v] = dict(params=n_params(m), params_parts=parts, flops={}, agreement_vs_fp32={},
                                    params_segmenter=n_params(m) - parts["encoder"], configs={p: {} for p in precs})
        mem = PeakMemory(device)
        with torch.inference_mode():
            for K in cfg["shots"]:  # FLOPs once per model and K (the same in every precision)
                q, s, mk = inputs[K]
                out["floor"]["flops"][str(K)] = count_flops(lambda q=q, s=s: (enc(q), enc(s.flatten(0, 1))))
                for v, m in models.items():
                    out["fsdino"][v]["flops"][str(K)] = count_flops(lambda m=m, q=q, s=s, mk=mk: m(q, s, mk))
        # one copy of every model per precision (the frozen DINOv2 held in bf16 weights, as
        # FSDINO.set_precision does), so that each row's precisions are timed in alternation: on a
        # shared machine minutes apart is not the same machine, and the speed-up is what is read
        encs, nets = {"32": enc}, {"32": models}
        for p in precs:
            if p != "32":
                encs[p] = hold_frozen_in(copy.deepcopy(enc), p)
                nets[p] = {v: copy.deepcopy(m).set_precision(p) for v, m in models.items()}
        # the peak again, in this process just before its rows: the fp32 rate of a shared machine moves
        # by tens of percent between minutes (bench.machine's start-of-run peak is the other measurement)
        out["window_peak"] = {p: matmul_peak(p, device) for p in precs}
        with torch.inference_mode():
            for i, K in enumerate(cfg["shots"]):  # increasing size
                q, s, mk = inputs[K]
                reps = cfg["reps"] if i == 0 else cfg["reps_large"]
                warm = cfg["warmup"] if i == 0 else 0
                # the DINOv2 passes FSDINO.forward makes: query (batch 1) + supports (batch K)
                floor = {p: (lambda e=encs[p], q=q, s=s: (e(q), e(s.flatten(0, 1)))) for p in precs}
                if i == 0:  # every copy once before its memory is read: OneDNNLinear packs its weights on
                    for p, fn in floor.items():  # first use, a one-off copy reported on its own
                        fn()
                        out["floor"].setdefault("packed_weights_mb", {})[p] = packed_weight_bytes(encs[p]) / 2**20
                peak = {}
                for p, fn in floor.items():  # peak memory of one call per precision (untimed)
                    mem.reset()
                    fn()
                    peak[p] = mem.peak()
                for p, r in timeit_interleaved(floor, warm, reps, device).items():
                    out["floor"]["configs"][p][str(K)] = dict(r, peak_mem_mb=peak[p])
                    log(f"[{p}] floor {K}-shot: {r['median_s']:.3f}s, +{peak[p]:.0f} MB")
                for v in models:
                    fwd, masks = {}, {}
                    for p in precs:
                        m = nets[p][v]
                        # segmenter-only parts first (each with its own warm-up; this also warms the variant)
                        qf = m.extract(q)
                        sf = m.extract(s.flatten(0, 1), with_embedding=False)
                        enc_s = m.encode_support_features(sf, mk)
                        early = m.encoder(q).early
                        out["fsdino"][v]["configs"][p][str(K)] = dict(
                            decode=timeit(lambda m=m, qf=qf, e=enc_s: m.decode(qf, e, (size, size)), 1, 5, device),
                            adapter=timeit(lambda m=m, e=early: m.adapter(e), 1, 5, device),
                            support_prompts=timeit(lambda m=m, sf=sf, mk=mk: m.encode_support_features(sf, mk),
                                                   1, 5, device))
                        del qf, sf, enc_s, early
                        mem.reset()
                        masks[p] = m(q, s, mk)["logits"] > 0
                        peak[p] = mem.peak()
                        fwd[p] = lambda m=m, q=q, s=s, mk=mk: m(q, s, mk)
                    for p, r in timeit_interleaved(fwd, 0, reps, device).items():
                        c = out["fsdino"][v]["configs"][p][str(K)]
                        c.update(r)
                        c["peak_mem_mb"] = peak[p]
                        if p != "32":  # same random weights and inputs: share of pixels predicted as in fp32
                            a = (masks[p] == masks["32"]).float().mean().item()
                            out["fsdino"][v]["agreement_vs_fp32"].setdefault(p, {})[str(K)] = a
                        log(f"[{p}] {v} {K}-shot: {c['median_s']:.3f}s (decode {c['decode']['median_s']:.3f}s), "
                            f"+{c['peak_mem_mb']:.0f} MB")
        out["mem_method"] = mem.method
    elif kind == "sam":
        from fsseg.models import DINOv2Encoder, SAMImageEncoder

        variant = spec["variant"]
        sam = dm.teacher if dm is not None else SAMImageEncoder(variant).to(device)
        dino = DINOv2Encoder(cfg["backbone"]).to(device)  # reference pass, same window
        out["params"] = n_params(sam)
        out["img_size"] = sam.img_size
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        mem = PeakMemory(device)
        mem.reset()
        if spec.get("blockwise", not spec["quick"]):
            r = sam_blockwise(sam, x, cfg, device, dino=dino, dq=x)
            r["peak_mem_mb"] = mem.peak()
            r["note"] = ("composed from timed parts (patch embed, 1 windowed block, 1 global block, neck), "
                         f"{r['runs']} runs after 1 warm-up each: timed by parts so the whole benchmark fits its 20-minute budget on a 2-core CPU (a full ViT-H pass is tens of seconds there, minutes under load); "
                         "peak memory = peak over the parts (inference frees each block's activations)")
            log(f"SAM {variant} per image (blockwise): {r['median_s']:.2f}s = "
                f"{r.get('ratio_to_dinov2_pass', float('nan')):.1f} DINOv2 passes, +{r['peak_mem_mb']:.0f} MB")
        else:
            with torch.inference_mode():
                r = timeit(lambda: sam(x), 1, spec["reps"], device)
                r["peak_mem_mb"] = mem.peak()
                r["flops"] = count_flops(lambda: sam(x))
                t_d = timeit(lambda: dino(x), 1, cfg["reps"], device)
            r["dinov2_pass_same_window"] = t_d
            r["ratio_to_dinov2_pass"] = r["median_s"] / t_d["median_s"]
            log(f"SAM {variant} per image: {r['median_s']:.2f}s, +{r['peak_mem_mb']:.0f} MB")
        out["configs"] = {"1": r}
        out["mem_method"] = mem.method
        if dm is not None:
            from bench.distillation_step import distillation_composed

            out["distillation"] = distillation_composed(dm, cfg, device, r)
    else:
        raise ValueError(kind)
    return out


def best_peaks(start: dict, window: dict) -> dict:
    """Per precision the higher of the start-of-run peak and the one measured just before the
    inference rows (both kept, ``measured``): the hardware's rate is the best one seen, so no row reads
    above 100% because the peak was taken at a slow moment."""
    out = {}
    for p in dict.fromkeys([*start, *window]):
        seen = {k: v for k, v in (("start of run", start.get(p)), ("before the inference rows", window.get(p))) if v}
        best = max(seen.values(), key=lambda v: v["gflops"])
        out[p] = dict(best, measured={k: round(v["gflops"], 1) for k, v in seen.items()})
    return out


def roofline(flops: float, latency_s: float, peak: Optional[dict]) -> dict:
    """Achieved GFLOP/s of a row and its fraction of the matmul peak of its precision."""
    gflops = flops / latency_s / 1e9
    return dict(gflop=flops / 1e9, gflops_per_s=gflops,
                fraction_of_peak=gflops / peak["gflops"] if peak else float("nan"))


def assemble_inference(cfg: dict, w: dict, peaks: Optional[dict] = None) -> dict:
    """Rows of the main table (fp32) and of the precision table from the worker results; ``peaks``:
    this device's measured matmul peaks by precision (``bench.machine``)."""
    peaks = peaks or {}
    rows = []
    floor = w["dino"]["floor"]
    sams = {k: w[k] for k in cfg["sam_variants"]}
    sam_lat = {k: v["configs"]["1"]["median_s"] for k, v in sams.items()}
    sam_flops = {k: v["configs"]["1"].get("flops", 0) for k, v in sams.items()}
    weights_mb = lambda p: p * 4 / 2**20  # noqa: E731  fp32
    fp32 = peaks.get("32")
    for K in cfg["shots"]:
        fl = floor["configs"]["32"][str(K)]
        fl_flops = floor["flops"][str(K)]
        rows.append(dict(name=f"DINOv2 alone (floor, {1 + K} images)", kind="floor", shots=K,
                         latency_s=fl["median_s"], runs=fl["runs"], peak_mem_mb=fl["peak_mem_mb"],
                         weights_mb=weights_mb(floor["params"]), params=floor["params"], timing=fl,
                         **roofline(fl_flops, fl["median_s"], fp32)))
        for key, res in sams.items():
            lat = fl["median_s"] + (1 + K) * sam_lat[key]
            params = floor["params"] + res["params"]
            label = cfg["sam_variants"][key] + (f" as {key} stand-in" if cfg["quick"] else "")
            rows.append(dict(name=f"DINOv2 + SAM {label} (dual encoder)", kind=f"dual_{key}",
                             shots=K, latency_s=lat, runs=res["configs"]["1"]["runs"],
                             peak_mem_mb=max(fl["peak_mem_mb"], res["configs"]["1"]["peak_mem_mb"]),
                             weights_mb=weights_mb(params), params=params,
                             flops=fl_flops + (1 + K) * sam_flops[key],
                             composition=f"DINOv2 floor ({fl['median_s']:.3f}s) + {1 + K} x SAM per image "
                                         f"({sam_lat[key]:.3f}s)"))
        for v in cfg["variants"]:
            r = w["dino"]["fsdino"][v]
            c = r["configs"]["32"][str(K)]
            seg = c["decode"]["median_s"] + c["adapter"]["median_s"] + c["support_prompts"]["median_s"]
            rows.append(dict(name=f"FS-DINO {v}", kind=f"fsdino_{v}", shots=K, latency_s=c["median_s"],
                             runs=c["runs"], peak_mem_mb=c["peak_mem_mb"], weights_mb=weights_mb(r["params"]),
                             params=r["params"], params_segmenter=r["params_segmenter"],
                             params_parts=r["params_parts"],
                             overhead_vs_floor=c["median_s"] / fl["median_s"] - 1.0,
                             segmenter_only_s=seg, segmenter_only_vs_floor=seg / fl["median_s"],
                             decode_s=c["decode"]["median_s"],
                             speedup_vs_dual_sam_h=(fl["median_s"] + (1 + K) * sam_lat["sam_h"]) / c["median_s"],
                             speedup_vs_dual_sam_b=(fl["median_s"] + (1 + K) * sam_lat["sam_b"]) / c["median_s"],
                             timing=c, **roofline(r["flops"][str(K)], c["median_s"], fp32)))
    return dict(rows=rows, precision_rows=precision_rows(cfg, w["dino"], peaks), peaks=peaks,
                sam_per_image_s=sam_lat, sam_timing={k: v["configs"]["1"] for k, v in sams.items()},
                sam_input=sams["sam_h"]["img_size"], mem_method=w["dino"].get("mem_method"),
                packed_weights_mb=w["dino"]["floor"].get("packed_weights_mb", {}))


def precision_rows(cfg: dict, dino: dict, peaks: dict) -> List[dict]:
    """fp32 and every lower precision side by side: the DINOv2 floor and each FS-DINO variant, per K,
    with latency, speed-up over fp32, GFLOP/s and fraction of that precision's matmul peak, and the
    share of predicted pixels equal to fp32 (same random weights and inputs)."""
    out = []
    precs = list(dino["floor"]["configs"])
    models = [("floor", "DINOv2 alone (floor)", dino["floor"])] + [
        (f"fsdino_{v}", f"FS-DINO {v}", dino["fsdino"][v]) for v in cfg["variants"]]
    for K in cfg["shots"]:
        for kind, name, d in models:
            base = d["configs"]["32"][str(K)]["median_s"]
            row = dict(kind=kind, name=name, shots=K, gflop=d["flops"][str(K)] / 1e9, by_precision={})
            for p in precs:
                t = d["configs"][p][str(K)]
                e = dict(latency_s=t["median_s"], runs=t["runs"], speedup_vs_fp32=base / t["median_s"],
                         **roofline(d["flops"][str(K)], t["median_s"], peaks.get(p)))
                if p != "32" and "agreement_vs_fp32" in d:
                    e["pixel_agreement_vs_fp32"] = d["agreement_vs_fp32"][p][str(K)]
                row["by_precision"][p] = e
            out.append(row)
    return out


def normalize_dual(cfg: dict, res: dict) -> None:
    """Express each SAM per-image latency in DINOv2 passes measured in the same process and time
    window, then in seconds of the main table's DINOv2 passes (floor 1-shot = 2 passes): on a shared
    machine the load differs between the processes; this ratio is what carries over."""
    for inf in res.get("inference", {}).values():
        fl1 = next((r for r in inf["rows"] if r["kind"] == "floor" and r["shots"] == 1), None)
        if fl1 is None:
            continue
        d_pass = fl1["latency_s"] / 2.0
        norm = {}
        for k, t in inf["sam_timing"].items():
            ratio = t.get("ratio_to_dinov2_pass")
            norm[k] = ratio * d_pass if ratio else inf["sam_per_image_s"][k]
        inf["sam_per_image_s_raw"] = inf.get("sam_per_image_s_raw", dict(inf["sam_per_image_s"]))
        inf["sam_per_image_s"] = norm
        inf["sam_normalization"] = ("SAM per image = (SAM / DINOv2-pass ratio measured in the SAM process) x "
                                    "(one DINOv2 pass of the main table = floor 1-shot / 2)")
        floors = {r["shots"]: r["latency_s"] for r in inf["rows"] if r["kind"] == "floor"}
        for r in inf["rows"]:
            K = r["shots"]
            if r["kind"].startswith("dual_"):
                key = r["kind"][5:]
                r["latency_s"] = floors[K] + (1 + K) * norm[key]
                r["composition"] = (f"DINOv2 floor ({floors[K]:.3f}s) + {1 + K} x SAM per image ({norm[key]:.3f}s, "
                                    f"{inf['sam_timing'][key].get('ratio_to_dinov2_pass', float('nan')):.1f} DINOv2 passes)")
            elif r["kind"].startswith("fsdino_"):
                r["speedup_vs_dual_sam_h"] = (floors[K] + (1 + K) * norm["sam_h"]) / r["latency_s"]
                r["speedup_vs_dual_sam_b"] = (floors[K] + (1 + K) * norm["sam_b"]) / r["latency_s"]


def measure(cfg: dict, res: dict, devices: list, sections: frozenset = frozenset({NAME}),
            demo_dir: Optional[str] = None, **_) -> None:
    """The main inference table on every device; the SAM-H worker also hosts the distillation
    benchmark when ``training`` is among ``sections`` (its teacher: a ViT-H takes minutes per pass)."""
    from bench.demo_agreement import demo_agreement
    from bench.machine import matmul_peak, precisions_for

    primary = devices[-1]
    res.setdefault("inference", {})
    for dev in devices:
        precs = precisions_for(dev)
        peaks = res.get("peak", {}).get(dev) or {p: matmul_peak(p, dev) for p in precs}
        w = {}
        base = dict(quick=cfg["quick"], device=dev, overrides=cfg.get("overrides", {}))
        w["dino"] = run_worker(NAME, dict(base, kind="dino", precisions=precs), worker)
        peaks = best_peaks(peaks, w["dino"].get("window_peak", {}))
        res.setdefault("peak", {})[dev] = peaks
        w["sam_b"] = run_worker(NAME, dict(base, kind="sam", variant=cfg["sam_variants"]["sam_b"], reps=cfg["sam_reps"],
                                           blockwise=not cfg["quick"]), worker)
        w["sam_h"] = run_worker(NAME, dict(base, kind="sam", variant=cfg["sam_variants"]["sam_h"], reps=cfg["sam_h_reps"],
                                           blockwise=not cfg["quick"],
                                           distill=("training" in sections and dev == primary)), worker)
        res["inference"][dev] = assemble_inference(cfg, w, peaks)
        res["inference"][dev]["workers_wall_s"] = {k: v["wall_s"] for k, v in w.items()}
        if "distillation" in w["sam_h"]:
            res.setdefault("training", {})["distillation"] = w["sam_h"]["distillation"]
        res["inference"][dev]["demo_agreement"] = demo_agreement(
            precs, dev, demo_dir, max_batches=2 if cfg["quick"] else None)
    normalize_dual(cfg, res)


if __name__ == "__main__":  # the fresh process of bench.common.run_worker
    import sys

    if not worker_main(None, worker):
        sys.exit("bench.inference runs one worker (--worker SPEC); the benchmark: python -m bench --sections inference")
