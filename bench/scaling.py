"""FS-DINO full latency vs shots K, input resolution and classes N. ``python -m bench --sections scaling``."""
from __future__ import annotations

from typing import Optional

from bench.common import build_fsdino_cfg, log, rand_inputs, timeit


def scaling_bench(cfg: dict, device: str, inference: Optional[dict] = None) -> dict:
    """FS-DINO full: latency vs K, vs input resolution (1-shot), vs N classes (1-shot multiclass)."""
    import torch

    res: dict = {}
    sz = cfg["sweep_size"]
    with torch.inference_mode():
        m = build_fsdino_cfg(cfg, "full", sz).to(device)
        t1 = timeit(lambda: m.encoder(rand_inputs(1, 1, sz, device)[0]), cfg["warmup"], cfg["reps"], device)
        q, _, _ = rand_inputs(1, 1, sz, device)
        rows = []
        for i, K in enumerate(cfg["sweep_shots"]):
            _, s, mk = rand_inputs(1, K, sz, device)
            reps = cfg["reps"] if K <= 5 else cfg["reps_large"]
            r = timeit(lambda s=s, mk=mk: m(q, s, mk), cfg["warmup"] if i == 0 else 0, reps, device)
            rows.append(dict(shots=K, fsdino=r, dinov2_floor=dict(median_s=(1 + K) * t1["median_s"],
                                                                  note="(1+K) x one measured DINOv2 pass")))
            log(f"scaling K={K} @{sz}: {r['median_s']:.3f}s")
        res["shots"] = dict(size=sz, variant="full", rows=rows, encoder_single_pass=t1)
        rows = []
        for R in cfg["resolutions"]:
            if R == cfg["size"] and inference:  # the main table already measured this point
                row = next(r for r in inference["rows"] if r["kind"] == "fsdino_full" and r["shots"] == 1)
                fl = next(r for r in inference["rows"] if r["kind"] == "floor" and r["shots"] == 1)
                rows.append(dict(resolution=R, fsdino=row["timing"], dinov2_floor=fl["timing"], from_main_table=True))
                continue
            if R == cfg["size"] and not cfg["quick"]:  # separate invocation: filled from the main table on merge
                rows.append(dict(resolution=R, pending_main_table=True))
                continue
            mr = build_fsdino_cfg(cfg, "full", R).to(device)
            qr, sr, mkr = rand_inputs(1, 1, R, device)
            r = timeit(lambda mr=mr, qr=qr, sr=sr, mkr=mkr: mr(qr, sr, mkr), cfg["warmup"], cfg["reps"], device)
            f = timeit(lambda mr=mr, qr=qr, sr=sr: (mr.encoder(qr), mr.encoder(sr.flatten(0, 1))), 0, cfg["reps"], device)
            rows.append(dict(resolution=R, fsdino=r, dinov2_floor=f))
            log(f"scaling res={R} 1-shot: {r['median_s']:.3f}s (floor {f['median_s']:.3f}s)")
        res["resolution"] = dict(shots=1, variant="full", rows=rows)
        spec_cls = None
        try:
            from fsseg.models.specialized import SpecializedSegmenter as spec_cls
        except Exception as e:
            res["classes_specialized_skipped"] = f"{type(e).__name__}: {e}"
        rows = []
        for i, N in enumerate(cfg["classes"]):
            qn, s, mk = rand_inputs(1, 1, sz, device, N=N)
            r = timeit(lambda qn=qn, s=s, mk=mk: m.segment_multiclass(qn, s, mk), 1 if i == 0 else 0,
                       cfg["reps"], device)
            row = dict(classes=N, fsdino=r)
            if spec_cls is not None:
                sp = spec_cls.from_fsdino(m, [f"c{j}" for j in range(N)]).to(device).eval()
                row["specialized"] = timeit(lambda sp=sp, qn=qn: sp(qn), 1, cfg["reps"], device)
            rows.append(row)
            log(f"scaling N={N} 1-shot @{sz}: {r['median_s']:.3f}s")
        res["classes"] = dict(size=sz, shots=1, variant="full", rows=rows)
    return res


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    res["scaling"] = scaling_bench(cfg, devices[-1], res.get("inference", {}).get(devices[-1]))
