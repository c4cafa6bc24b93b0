"""The machine, its measured matrix-multiply peak in fp32 and bf16 (same threads), the roofline every
inference row is read against, and (CPU) the cores' multiply-add instruction rate that bounds both.
``python -m bench --sections machine``."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Optional

from bench.common import log, timeit_interleaved


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        m = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        ram = round(int(m.group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), ram_gib=ram, torch=torch.__version__,
                threads=torch.get_num_threads(), python=platform.python_version(), platform=platform.platform(),
                cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def matmul_peak(dtype_name: str, device: str = "cpu", n: int = 2048, reps: int = 8) -> dict:
    """Best achieved GFLOP/s of an ``n x n @ n x n`` product (2 n^3 FLOPs) in ``dtype_name``, with the
    threads torch uses for the models. Best of ``reps``, not the median: a peak is what the hardware
    can do, and a shared machine only ever slows a run down.

    On a CPU with oneDNN two GEMM libraries are measured, timed in alternation, and the faster is the
    peak: ``torch.mm`` (for fp32 on x86 MKL's sgemm) and oneDNN's matmul (the op fsseg's
    ``OneDNNLinear`` calls). On AMD CPUs MKL's sgemm is well below what the cores do (this machine:
    169-189 vs 214-219 GFLOP/s in fp32), so a peak taken from ``torch.mm`` alone would flatter every row."""
    import torch

    from fsseg.kernels.onednn_linear import onednn_linear_available, onednn_matmul

    dtype = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    fns = {"torch.mm": lambda: a @ b}
    if device == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_linear_available():
        bt = b.t().contiguous()  # a linear layer's [out, in] weight: a @ b = linear(a, b^T)
        fns["oneDNN matmul"] = lambda: onednn_matmul(a, bt)
    with torch.inference_mode():
        t = timeit_interleaved(fns, 3, reps, device)
    by_library = {k: round(2 * n**3 / v["min_s"] / 1e9, 1) for k, v in t.items()}
    fastest = max(by_library, key=by_library.get)
    best = t[fastest]["min_s"]
    return dict(gflops=2 * n**3 / best / 1e9, n=n, reps=reps, best_s=best, threads=torch.get_num_threads(),
                dtype=str(dtype).replace("torch.", ""), library=fastest, by_library=by_library)


def instruction_peak(device: str = "cpu", reps: int = 5) -> Optional[dict]:
    """The cores' register-only multiply-add rate in GFLOP/s on torch's threads (``fsseg.kernels``'
    ``instruction_peak``): 512-bit fp32 FMAs and bf16 dot products (vdpbf16ps), best of ``reps``
    timed in alternation. No matmul can pass it; the bf16/fp32 ratio of these two rates is what bf16
    can gain at most where both precisions run at the same fraction of their rate. CPU with
    AVX512-BF16 only (None on a GPU, ``skipped`` with the reason elsewhere)."""
    import torch

    from fsseg.kernels import cpu_kernels_status

    if device != "cpu":
        return None
    ok, why = cpu_kernels_status()
    if not ok:
        return dict(skipped=why)
    from fsseg.kernels.cpu_kernels import instruction_peak as probe

    best = {"32": 0.0, "bf16-mixed": 0.0}
    for _ in range(reps):
        for p in best:
            best[p] = max(best[p], probe(bf16=p == "bf16-mixed"))
    return dict(gflops={p: round(g, 1) for p, g in best.items()}, reps=reps, threads=torch.get_num_threads(),
                ratio=best["bf16-mixed"] / best["32"])


def precisions_for(device: str) -> list:
    """The precisions measured on ``device``: fp32 and bf16 (on a CPU without native bf16 the bf16
    rows show what emulation costs, which is why ``auto`` picks fp32 there), + fp16 on a GPU."""
    import torch

    out = ["32"]
    if device == "cuda":
        return out + (["bf16-mixed"] if torch.cuda.is_bf16_supported() else []) + ["16-mixed"]
    return out + ["bf16-mixed"]


def measure(cfg: dict, res: dict, devices: list, **_) -> None:
    res["machine"] = machine_info()
    peaks, instruction = {}, {}
    for dev in devices:
        peaks[dev] = {p: matmul_peak(p, dev) for p in precisions_for(dev)}
        log(f"matmul peak ({dev}): " + ", ".join(f"{p} {v['gflops']:.0f} GFLOP/s" for p, v in peaks[dev].items()))
        ip = instruction_peak(dev)
        if ip is not None:
            instruction[dev] = ip
            log(f"instruction peak ({dev}): " + (ip["skipped"] if "skipped" in ip else ", ".join(
                f"{p} {g:.0f} GFLOP/s" for p, g in ip["gflops"].items())))
    res["peak"] = peaks
    res["instruction_peak"] = instruction
