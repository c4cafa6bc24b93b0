"""Support reuse: N queries on one K-shot support set encoded once, vs the encoder passes alone and
vs re-encoding the supports per query, in every precision. ``python -m bench --sections reuse``."""
from __future__ import annotations

import gc
import statistics
import time

from bench.common import build_fsdino_cfg, log, rand_inputs, summarize, sync, timeit


def reuse_bench(cfg: dict, device: str, precision: str = "32") -> dict:
    """N queries against one K-shot support set, supports encoded once, vs the DINOv2 passes alone
    (K supports + N queries) and vs re-encoding the supports for every query.

    Per query the reuse path is ``extract`` (DINOv2 pass + adapter) + ``decode``: the three are timed
    separately in one interleaved loop (the DINOv2 pass is shared by every variant: identical compute,
    random weights), so the floor and each variant see the same machine state. ``precision``: as
    ``FSDINO.set_precision`` (the frozen DINOv2 and adapter in bf16 weights for ``bf16-mixed``)."""
    import torch

    size, N, K = cfg["size"], cfg["reuse_queries"], cfg["reuse_shots"]
    variants = cfg["variants"]
    models = {v: build_fsdino_cfg(cfg, v, size).to(device).set_precision(precision) for v in variants}
    m0 = models[variants[0]]
    g = torch.Generator().manual_seed(2)
    queries = torch.rand(N, 1, 3, size, size, generator=g).to(device)
    _, s, mk = rand_inputs(1, K, size, device)
    res: dict = dict(queries=N, shots=K, size=size, precision=precision, variants={})
    with torch.inference_mode():
        # supports: one DINOv2 pass on the K images (the floor's and encode_support's shared cost) ...
        t_sup_pass = timeit(lambda: m0.encoder(s.flatten(0, 1)), 0, cfg["reps_large"], device)
        sf = m0.extract(s.flatten(0, 1), with_embedding=False)
        # ... + each variant's support prompts (SVP / prototypes), timed with warm-up
        t_prompts = {v: timeit(lambda m=m: m.encode_support_features(sf, mk), 1, 5, device) for v, m in models.items()}
        encs = {v: m.encode_support_features(sf, mk) for v, m in models.items()}
        qf = m0.extract(queries[0])
        for v, m in models.items():  # decode warm-up
            m.decode(qf, encs[v], (size, size))
        t_enc, t_ad, t_dec = [], [], {v: [] for v in variants}
        for i in range(N):
            t = time.perf_counter()
            f = m0.encoder(queries[i])
            sync(device)
            t_enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            emb = m0.adapter(f.early)
            sync(device)
            t_ad.append(time.perf_counter() - t)
            qf = type(qf)(embedding=emb, semantic=f.last)
            for v, m in models.items():
                t = time.perf_counter()
                m.decode(qf, encs[v], (size, size))
                sync(device)
                t_dec[v].append(time.perf_counter() - t)
    floor_total = t_sup_pass["median_s"] + sum(t_enc)
    res["encoder_passes"] = K + N
    res["encoder_passes_s"] = floor_total
    res["encoder_query_pass"] = summarize(t_enc)
    res["encoder_support_pass"] = t_sup_pass
    res["adapter"] = summarize(t_ad)
    for v in variants:
        sup = t_sup_pass["median_s"] + t_prompts[v]["median_s"]
        once = sup + sum(t_enc) + sum(t_ad) + sum(t_dec[v])
        reencode = N * (sup + statistics.median(t_enc) + statistics.median(t_ad) + statistics.median(t_dec[v]))
        res["variants"][v] = dict(
            support_prompts=t_prompts[v], decode=summarize(t_dec[v]),
            encode_once_s=once, reencode_s=reencode,
            ratio_once_vs_encoder_passes=once / floor_total,
            ratio_reencode_vs_once=reencode / once,
        )
        log(f"reuse [{precision}] {v}: once {once:.1f}s, re-encode {reencode:.1f}s, {K + N} encoder passes {floor_total:.1f}s "
            f"-> {once / floor_total:.3f}x")
    res["note"] = (f"supports encoded once = DINOv2 pass on the {K} supports (median of {t_sup_pass['runs']}) + support "
                   f"prompts; each of the {N} queries = DINOv2 pass + adapter + decode, timed one by one in an "
                   f"interleaved loop; re-encoded per query = {N} x (support encoding + median query step)")
    del models
    gc.collect()
    return res


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    """Support reuse on the primary device, in every precision it runs (``bench.machine.precisions_for``)."""
    from bench.machine import precisions_for

    dev = devices[-1]
    res["reuse"] = dict(device=dev, by_precision={p: reuse_bench(cfg, dev, p) for p in precisions_for(dev)})
