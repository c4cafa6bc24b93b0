"""The PNG plots of ``results.md``: inference latency per model, and latency vs K, resolution and N."""
from __future__ import annotations

from pathlib import Path
from typing import List


def make_plots(cfg: dict, res: dict, outdir: Path) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        files.append(name)

    inf = res["inference"].get("cpu") or next(iter(res["inference"].values()), None)
    if inf:
        fig, axes = plt.subplots(1, len(cfg["shots"]), figsize=(6 * len(cfg["shots"]), 4.5))
        axes = [axes] if len(cfg["shots"]) == 1 else axes
        for ax, K in zip(axes, cfg["shots"]):
            rows = [r for r in inf["rows"] if r["shots"] == K]
            ax.barh([r["name"] for r in rows], [r["latency_s"] for r in rows], color="tab:blue")
            ax.set_xscale("log")
            ax.set_xlabel("latency per query (s, log)")
            ax.set_title(f"{K}-shot at {cfg['size']}")
        save(fig, "latency_inference.png")
    sc = res.get("scaling", {})
    sp = res.get("specialized_vs_episodic", {})

    def line_plot(name, rows, x, series, xlabel, ylabel, title):
        """One latency curve per (key, style, label) of ``series``, read from ``rows`` as r[key]["median_s"]."""
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for key, style, label in series:
            ax.plot([r[x] for r in rows], [r[key]["median_s"] for r in rows], style, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        save(fig, name)

    floor = ("dinov2_floor", "s--", "DINOv2 alone")
    if "shots" in sc:
        line_plot("scaling_shots.png", sc["shots"]["rows"], "shots", [("fsdino", "o-", "FS-DINO full"), floor],
                  "shots K", "latency (s)", f"latency vs K ({sc['shots']['size']})")
    if sp.get("rows"):
        line_plot("specialized_vs_episodic.png", sp["rows"], "shots",
                  [("episodic", "o-", "episodic FS-DINO (K support passes)"),
                   ("specialized", "s-", "specialised (support-free)")],
                  "shots K", "latency per query (s)", f"specialised vs episodic ({sp['size']})")
    if "resolution" in sc:
        line_plot("scaling_resolution.png", sc["resolution"]["rows"], "resolution",
                  [("fsdino", "o-", "FS-DINO full 1-shot"), floor], "input resolution (px)", "latency (s)",
                  "latency vs resolution")
    if "classes" in sc:
        rows = sc["classes"]["rows"]
        series = [("fsdino", "o-", "episodic segment_multiclass")]
        if all("specialized" in r for r in rows):
            series.append(("specialized", "s-", "specialised"))
        line_plot("scaling_classes.png", rows, "classes", series, "classes N (1-shot each)", "latency (s)",
                  f"latency vs classes ({sc['classes']['size']})")
    return files
