"""One stage-1 distillation step with a warm teacher cache, and the teacher-bound step composed from
it: timed inside the SAM-H inference worker (``bench.inference.worker``), which builds the ViT-H
teacher anyway."""
from __future__ import annotations

import shutil
import tempfile
import time

from bench.common import log, timeit


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
