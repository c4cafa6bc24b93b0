"""Training throughput with and without the caches: distillation (warm SAM-teacher cache) and
few-shot training (frozen-feature cache). ``python -m bench.training``."""
from __future__ import annotations

import shutil
import tempfile
import time

from bench.common import log, rand_inputs, timeit

NAME = "training"


def distillation_composed(dm, cfg: dict, device: str, teacher: dict) -> dict:
    """Stage-1 steps/s, batch 1. Warm cache: real steps (the embedding is read from a
    ``TensorDiskCache``; the teacher never runs). Teacher-bound step = the teacher's per-image
    latency at 1024 (``teacher``, measured in this process) + the same step: on a machine where one
    ViT-H pass takes minutes this is what a cache-less step costs."""

    import torch

    from fsseg.cache import TensorDiskCache

    dm.log = lambda *a, **k: None  # no Trainer attached: logging is a no-op here
    dm.train()
    opt = dm.configure_optimizers()
    S = cfg["teacher_size"]
    batch = {"image": torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(1)).to(device),
             "path": ["bench/img0.jpg"], "index": torch.tensor([0])}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = dm.training_step(batch, 0)
        loss.backward()
        opt.step()

    res = dict(teacher=cfg["teacher"], teacher_input=S, student_resolution=dm.resolution, batch=1)
    tmp = tempfile.mkdtemp(prefix="fsseg-bench-teacher-")
    try:
        t = time.perf_counter()
        cache = TensorDiskCache(tmp, dm.teacher_namespace((S, S)))
        res["namespace_s"] = time.perf_counter() - t
        e = dm.teacher.embedding_size
        # a cached entry as the first epoch would have written it (values do not change the cost)
        cache.put(batch["path"][0], {"embedding": torch.randn(dm.teacher.out_chans, e, e)})
        dm.teacher_cache = cache
        calls = dm.teacher_calls
        res["warm_cache"] = timeit(step, 1, cfg["train_warm_reps"], device)
        res["warm_cache"]["teacher_calls"] = dm.teacher_calls - calls
    finally:
        dm.teacher_cache = None
        shutil.rmtree(tmp, ignore_errors=True)
    nc = teacher["median_s"] + res["warm_cache"]["median_s"]
    res["no_cache"] = dict(median_s=nc, runs=teacher["runs"], composed=True,
                           note=("teacher-bound step = teacher pass at 1024 (measured here"
                                 + (", composed from its blocks" if teacher.get("composed") else "")
                                 + ") + the student step (measured)"))
    res["cold_cache_step_s"] = nc
    res["no_cache"]["steps_per_s"] = 1.0 / nc
    res["warm_cache"]["steps_per_s"] = 1.0 / res["warm_cache"]["median_s"]
    res["speedup"] = nc / res["warm_cache"]["median_s"]
    log(f"distillation: teacher-bound {nc:.2f}s/step, warm cache {res['warm_cache']['median_s']:.3f}s/step "
        f"({res['speedup']:.1f}x)")
    return res


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
    figures come from the SAM-H inference worker, which builds the ViT-H teacher anyway; run alone
    (``python -m bench.training``) this module measures it in its own worker."""
    if "distillation" not in res.get("training", {}):
        from bench.common import run_worker
        from bench.inference import worker

        spec = dict(quick=cfg["quick"], device=devices[-1], overrides=cfg.get("overrides", {}), kind="sam", variant=cfg["sam_variants"]["sam_h"],
                    reps=cfg["sam_h_reps"], blockwise=not cfg["quick"], distill=True)
        res.setdefault("training", {})["distillation"] = run_worker("inference", spec, worker)["distillation"]
    res.setdefault("training", {})["fewshot"] = fewshot_training_bench(cfg, devices[-1])


if __name__ == "__main__":
    import sys

    from bench.run import main

    sys.exit(main(["--sections", NAME, *sys.argv[1:]]))
