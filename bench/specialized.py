"""Specialised (support-free) model vs episodic FS-DINO as K grows. ``python -m bench --sections specialized``."""
from __future__ import annotations

from bench.common import build_fsdino_cfg, log, n_params, rand_inputs, timeit


def specialized_bench(cfg: dict, device: str) -> dict:
    """Episodic FS-DINO (K support encodings per query) vs the support-free specialised model."""
    import torch

    size = cfg["spec_size"]
    res: dict = dict(size=size, variant="full", shots=cfg["spec_shots"])
    try:
        from fsseg.models.specialized import SpecializedSegmenter
    except Exception as e:  # another engineer's module; skipped with the reason
        res["skipped"] = f"fsseg.models.specialized.SpecializedSegmenter not importable: {type(e).__name__}: {e}"
        log(res["skipped"])
        return res
    m = build_fsdino_cfg(cfg, "full", size).to(device)
    try:
        spec = SpecializedSegmenter.from_fsdino(m, ["class0"]).to(device).eval()
    except Exception as e:
        res["skipped"] = f"SpecializedSegmenter.from_fsdino failed: {type(e).__name__}: {e}"
        log(res["skipped"])
        return res
    res["params_specialized"] = n_params(spec)
    res["params_episodic"] = n_params(m)
    q, _, _ = rand_inputs(1, 1, size, device)
    rows = []
    with torch.inference_mode():
        t_spec = timeit(lambda: spec(q), cfg["warmup"], cfg["reps"] + 2, device)
        t_enc = timeit(lambda: m.encoder(q), cfg["warmup"], cfg["reps"] + 2, device)
        for i, K in enumerate(cfg["spec_shots"]):
            _, s, mk = rand_inputs(1, K, size, device)
            reps = cfg["reps"] if K <= 20 else cfg["reps_large"]
            r = timeit(lambda s=s, mk=mk: m(q, s, mk), cfg["warmup"] if i == 0 else 0, reps, device)
            rows.append(dict(shots=K, episodic=r, specialized=t_spec,
                             ratio_episodic_vs_specialized=r["median_s"] / t_spec["median_s"]))
            log(f"K={K} @{size}: episodic {r['median_s']:.3f}s vs specialised {t_spec['median_s']:.3f}s")
    res["rows"] = rows
    res["specialized"] = t_spec
    res["encoder_single_pass"] = t_enc
    res["note"] = (f"at {size}x{size} for time (the K=50 episodic query needs 51 DINOv2 passes; the "
                   f"{cfg['size']} main table covers K=1,5); specialised model: 1 class, built with "
                   "SpecializedSegmenter.from_fsdino, random weights")
    return res


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    res["specialized_vs_episodic"] = specialized_bench(cfg, devices[-1])
    if res["specialized_vs_episodic"].get("skipped"):
        res.setdefault("skipped", []).append(res["specialized_vs_episodic"]["skipped"])
