"""Number formats and lookups shared by the targets and ``results.md``."""
from __future__ import annotations

PREC_LABEL = {"32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def fmt_p(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def floor_latency(inf: dict, r: dict) -> float:
    for x in inf["rows"]:
        if x["kind"] == "floor" and x["shots"] == r["shots"]:
            return x["latency_s"]
    return float("nan")
