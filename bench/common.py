"""Shared by every measurement of ``make bench``: configuration, the one timing helper, memory
probes, model/input builders and the fresh-subprocess worker protocol."""
from __future__ import annotations

import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_RESULT "
# the precisions every inference row is measured in (fsseg.precision); 16-mixed is added on a GPU
PRECISIONS = ("32", "bf16-mixed")


def paper_methods() -> list:
    """The methods of the paper's ablation (``fsseg.models.segmenters``): the ones every row times."""
    from fsseg.models.segmenters import paper_methods as registered

    return registered()


def model_spec(cfg: dict, method: str) -> dict:
    """The model spec of ``method`` at the bench's network size (``cfg["network"]``)."""
    from fsseg.models.segmenters import takes

    spec = {"name": method, "backbone": cfg["backbone"], **cfg["network"]}
    if takes(method, "mamba_backend"):
        spec["mamba_backend"] = cfg["mamba_backend"]
    return spec


def make_config(quick: bool) -> dict:
    if quick:
        return dict(
            quick=True, backbone="dinov2_tiny", size=112, sweep_size=56, spec_size=56, resolutions=[56, 84, 112],
            network=dict(decoder_dim=32, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2),
            mamba_backend="torch",
            sam_variants={"sam_h": "tiny", "sam_b": "tiny"}, teacher="tiny", teacher_size=256,
            shots=[1, 5], sweep_shots=[1, 5, 10], spec_shots=[1, 5, 20], classes=[1, 2, 5],
            reuse_queries=5, reuse_shots=5, warmup=1, reps=2, reps_large=2, sam_h_reps=2, sam_reps=2,
            train_warm_reps=2, variants=paper_methods(),
        )
    return dict(
        quick=False, backbone="dinov2_vitb14", size=518, sweep_size=126, spec_size=126,
        resolutions=[126, 252, 518],
        network={}, mamba_backend="auto", sam_variants={"sam_h": "vit_h", "sam_b": "vit_b"}, teacher="vit_h", teacher_size=1024,
        shots=[1, 5], sweep_shots=[1, 5, 10, 20], spec_shots=[1, 5, 20, 50], classes=[1, 2, 5],
        reuse_queries=20, reuse_shots=5, warmup=1, reps=5, reps_large=3, sam_h_reps=2, sam_reps=2,
        train_warm_reps=4, variants=paper_methods(),
    )


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _status_kb(field: str) -> Optional[int]:
    try:
        m = re.search(field + r":\s+(\d+)\s*kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_mb() -> float:
    v = _status_kb("VmRSS")
    if v is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return v / 1024.0


class PeakMemory:
    """Extra peak memory of a block, in MB, over a baseline taken when the model was built."""

    def __init__(self, device: str):
        import torch

        self.device = device
        self.torch = torch
        self.baseline = self._current()
        self.method = ("torch.cuda.max_memory_allocated" if device == "cuda" else
                       "peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS just before the run "
                       "(after malloc_trim), models built in a fresh subprocess (DINOv2/FS-DINO one, each SAM one)")

    def _current(self) -> float:
        if self.device == "cuda":
            return self.torch.cuda.memory_allocated() / 2**20
        return rss_mb()

    def reset(self) -> None:
        gc.collect()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.baseline = self._current()
            return
        _malloc_trim()  # hand freed heap back so the baseline is what is live now
        self.baseline = self._current()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "getrusage maxrss - RSS before the run (monotone; configurations in increasing size)"

    def peak(self) -> float:
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated() / 2**20 - self.baseline
        hwm = _status_kb("VmHWM")
        peak = hwm / 1024.0 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        return max(peak - self.baseline, 0.0)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _time_once(fn: Callable[[], object], device: str, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one call; on a GPU timed with CUDA events around it and a synchronize (kernels are async).
    ``clock``: the CPU clock read around it (``time.thread_time``: CPU seconds of this thread only)."""
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    t = clock()
    fn()
    return clock() - t


def timeit(fn: Callable[[], object], warmup: int, reps: int, device: str = "cpu") -> dict:
    """The one timing helper: ``warmup`` untimed calls, then ``reps`` timed ones; median/min/max."""
    for _ in range(warmup):
        fn()
    sync(device)
    return summarize([_time_once(fn, device) for _ in range(reps)], warmup)


def timeit_interleaved(fns: Dict[str, Callable[[], object]], warmup: int, reps: int, device: str = "cpu",
                       clock: Callable[[], float] = time.perf_counter) -> Dict[str, dict]:
    """``timeit`` for several functions compared with each other (fp32 vs bf16 of one model): their
    timed calls alternate (order reversed every round), so a slow minute of a shared machine hits
    them alike instead of whichever happened to run then. ``clock`` as in ``_time_once``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    keys = list(fns)
    for rep in range(reps):
        for k in keys if rep % 2 == 0 else keys[::-1]:
            times[k].append(_time_once(fns[k], device, clock))
    return {k: summarize(t, warmup) for k, t in times.items()}


def summarize(times: List[float], warmup: int = 0) -> dict:
    return dict(median_s=statistics.median(times), min_s=min(times), max_s=max(times), runs=len(times),
                warmup=warmup, times_s=[round(t, 6) for t in times])


def n_params(module) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters())


def build_fsdino_cfg(cfg: dict, variant: str, size: int):
    from fsseg.models import build_segmenter

    return build_segmenter(model_spec(cfg, variant), image_size=size).eval()


def rand_inputs(B: int, K: int, size: int, device: str, N: Optional[int] = None):
    import torch

    g = torch.Generator().manual_seed(0)
    q = torch.rand(B, 3, size, size, generator=g)
    shape = (B, K) if N is None else (B, N, K)
    s = torch.rand(*shape, 3, size, size, generator=g)
    m = (torch.rand(*shape, size, size, generator=g) > 0.5).float()
    m[..., : size // 4, : size // 4] = 1.0
    return q.to(device), s.to(device), m.to(device)


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_worker(module: str, spec: dict, worker: Callable[[dict], dict]) -> dict:
    """``worker(spec)`` in a fresh ``python -m bench.<module> --worker SPEC`` process (its own peak
    memory, no allocator state from other models); in-process for ``--quick`` (tiny models)."""
    if spec["quick"]:  # tiny models: in-process (a fresh interpreter per model costs more than the run)
        t = time.perf_counter()
        res = worker(spec)
        res["wall_s"] = time.perf_counter() - t
        res["in_process"] = True
        res["mem_method"] = res.get("mem_method", "") + " (--quick: in-process, not a fresh subprocess)"
        return res
    cmd = [sys.executable, "-m", f"bench.{module}", "--worker", json.dumps(spec)]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"worker {spec} failed with exit code {p.returncode}")
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            res["wall_s"] = time.perf_counter() - t
            return res
    raise RuntimeError(f"worker {spec} printed no result")


def worker_main(argv: Optional[List[str]], worker: Callable[[dict], dict]) -> bool:
    """``--worker SPEC`` in ``argv``: run it, print the tagged result line, return True."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--worker" not in args:
        return False
    res = worker(json.loads(args[args.index("--worker") + 1]))
    print(RESULT_TAG + json.dumps(res), flush=True)
    return True
