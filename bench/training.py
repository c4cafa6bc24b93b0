"""Training throughput with and without the caches: distillation (warm SAM-teacher cache, measured in
the SAM-H inference worker by ``bench.distillation_step``) and few-shot training (frozen-feature
cache). ``python -m bench --sections training``."""
from __future__ import annotations

import tempfile
import time

from bench.common import log, rand_inputs, timeit


def compact_training_setup(cfg: dict, device: str):
    """The stage-2 module the training rows time (FS-DINO ``compact``, frozen-feature cache on, logging
    off) and its AdamW over the trainable parameters."""
    import torch

    from bench.common import model_spec
    from fsseg.modules import FewShotModule

    fm = FewShotModule(segmenter=model_spec(cfg, "compact"), image_size=cfg["size"], feature_cache="all",
                       lr_schedule="none").to(device)
    fm.log = lambda *a, **k: None
    fm.log_dict = lambda *a, **k: None
    fm.train()
    return fm, torch.optim.AdamW([p for p in fm.parameters() if p.requires_grad], lr=1e-4)


def training_batch(size: int, shots: int, device: str) -> dict:
    """One random 1-query episode in the training batch layout."""
    import torch

    q, s, m = rand_inputs(1, shots, size, device)
    return dict(query=q, query_mask=(torch.rand(1, size, size) > 0.5).long().to(device), support=s,
                support_masks=m, class_id=torch.tensor([0]), episode_index=torch.tensor([0]),
                query_name=["q0.jpg"], support_names=[[f"s{i}.jpg" for i in range(shots)]])


def fewshot_training_bench(cfg: dict, device: str) -> dict:
    from fsseg.cache import TensorDiskCache

    size = cfg["size"]
    fm, opt = compact_training_setup(cfg, device)
    batch = training_batch(size, 1, device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fm.training_step(batch, 0)
        loss.backward()
        opt.step()

    res: dict = dict(variant="compact", shots=1, batch=1, size=size)
    fm.feature_cache_store = None
    res["no_cache"] = timeit(step, cfg["warmup"], cfg["reps_large"], device)
    with tempfile.TemporaryDirectory() as tmp:
        fm.feature_cache_store = TensorDiskCache(tmp, fm.feature_namespace())
        t = time.perf_counter()
        step()  # fills the cache
        res["cold_cache_step_s"] = time.perf_counter() - t
        res["warm_cache"] = timeit(step, 0, cfg["reps"], device)
        res["cache_hits"] = fm.feature_cache_store.hits
    for k in ("no_cache", "warm_cache"):
        res[k]["steps_per_s"] = 1.0 / res[k]["median_s"]
    res["speedup"] = res["no_cache"]["median_s"] / res["warm_cache"]["median_s"]
    log(f"few-shot training: no cache {res['no_cache']['median_s']:.2f}s/step, warm cache "
        f"{res['warm_cache']['median_s']:.3f}s/step ({res['speedup']:.1f}x)")
    return res


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    """Few-shot training with/without the frozen-feature cache. The distillation (teacher cache)
    figures come from the SAM-H inference worker, which builds the ViT-H teacher anyway; without the
    inference section (``python -m bench --sections training``) it runs that worker here."""
    if "distillation" not in res.get("training", {}):
        from bench.common import run_worker
        from bench.inference import worker

        spec = dict(quick=cfg["quick"], device=devices[-1], overrides=cfg.get("overrides", {}), kind="sam", variant=cfg["sam_variants"]["sam_h"],
                    reps=cfg["sam_h_reps"], blockwise=not cfg["quick"], distill=True)
        res.setdefault("training", {})["distillation"] = run_worker("inference", spec, worker)["distillation"]
    res.setdefault("training", {})["fewshot"] = fewshot_training_bench(cfg, devices[-1])
