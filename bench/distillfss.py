"""DistillFSS's claim measured (seed 000): specialised (support-free) vs episodic FS-DINO.

    python -m bench.distillfss [--quick] [--ckpt FEWSHOT.ckpt] [--output-dir bench]

DistillFSS claims a specialised student matches its episodic teacher while its test-time cost no
longer grows with the support set. Here the teacher is the demo's trained FS-DINO (``make demo``:
DINOv2-tiny stand-in + SAM-tiny, ``full`` variant, 112 px, trained episodically on the 90 base classes
of the built-in synthetic fold 0), the only trained teacher on this machine; the test classes are
that fold's novel classes, never seen in training. For every K (shots per class) and N (classes at
once) the episodic teacher segments each held-out query with all N x K supports, and a specialised
student is distilled from it on the same supports (``SpecializeModule``, a fixed number of optimiser
steps, only the dedicated layer trains) and then segments the queries with no supports.

Reported per (N, K): mIoU (``FewShotIoU`` x100 on the N-way maps, which here equals DistillFSS's
dataset-pooled foreground IoU ``DatasetForegroundIoU``, also recorded) of the episodic teacher, of the
student as initialised from the supports (0 steps) and after specialisation; ms per query (batch 1,
minimum over interleaved rounds) of the student, of the episodic model encoding its supports for the
query (``segment_multiclass``) and of the episodic model with the support features computed once and
reused; GFLOP per query (exact, load-independent).

Without ``--ckpt`` the demo's checkpoint is looked up in ``outputs/demo`` (``results.json``'s
``best_checkpoint``, else ``fewshot/checkpoints/best.ckpt``); if there is none the module says so and
exits with status 2 (no figures from an untrained model). Writes ``distillfss.json`` and a section in
``results.md`` between ``<!-- distillfss:begin -->`` / ``<!-- distillfss:end -->`` (replaced on each run,
the rest of the file kept), and ``distillfss.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- distillfss:begin -->", "<!-- distillfss:end -->"


def make_config(quick: bool) -> dict:
    if quick:
        return dict(quick=True, shots=[1, 2], classes=[2], steps=2, queries_per_class=2, batch_size=4,
                    timing_rounds=1, lr=5e-3, label_weight=0.5)
    # the episodic teacher's cost grows with N x K (its targets at every step, its scores), so the
    # grid is kept small: 15 specialisations of 20 steps (batch 4), 4 test queries per class. Measured:
    # 42.6 min on the 2-core machine at load average 10-12 (other jobs running); --steps and
    # --queries-per-class trade precision for time
    return dict(quick=False, shots=[1, 5, 10, 25, 50], classes=[1, 3, 5], steps=20, queries_per_class=4,
                batch_size=4, timing_rounds=3, lr=5e-3, label_weight=0.5)


def find_demo_checkpoint(demo_dir: Path) -> Optional[str]:
    """The demo's best few-shot checkpoint: ``results.json``'s ``best_checkpoint``, else the file."""
    summary = demo_dir / "results.json"
    if summary.is_file():
        try:
            best = json.loads(summary.read_text()).get("best_checkpoint")
        except (OSError, ValueError):
            best = None
        if best and Path(best).is_file():
            return best
    path = demo_dir / "fewshot" / "checkpoints" / "best.ckpt"
    return str(path) if path.is_file() else None


def log(msg: str) -> None:
    print(f"[bench.distillfss {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_config(ckpt: str, n_classes: int, shots: int, cfg: dict) -> dict:
    import lightning as L
    import torch

    from data_modules import SupportSetDataModule, SyntheticFewShot, novel_classes
    from fsseg.metrics import DatasetForegroundIoU, FewShotIoU, binarize_multiclass
    from fsseg.modules.specialize import SpecializeModule

    L.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lean checkpoint omits the frozen encoder: loaded from its own file
        module = SpecializeModule(teacher_ckpt=ckpt, distill_weight=1.0, label_weight=cfg["label_weight"],
                                  lr=cfg["lr"], eval_teacher=False)
    size = cfg["image_size"]
    classes = novel_classes(0)[:n_classes]
    q = cfg["queries_per_class"]
    ds = SyntheticFewShot(fold=0, split="test", image_size=size, images_per_class=shots + q, classes=classes)
    support = {c: ds.samples_by_class[c][:shots] for c in classes}
    queries = [(key, c) for c in classes for key in ds.samples_by_class[c][shots:]]
    # one epoch holding steps x batch support copies (1 plain + augmented each), so every K trains
    # for the same number of optimiser steps on full batches
    repeats = math.ceil(cfg["steps"] * cfg["batch_size"] / (n_classes * shots))
    dm = SupportSetDataModule(ds, support, queries, image_size=size, repeats=repeats,
                                               batch_size=cfg["batch_size"])
    sup = dm.support_set()
    module.build_student(dm.class_names, sup)
    support_t, masks_t = sup["support"][None], sup["support_masks"][None]
    batches = list(dm.test_dataloader())

    @torch.no_grad()
    def score(predict) -> Dict[str, float]:
        few, pooled = FewShotIoU(n_classes), DatasetForegroundIoU(n_classes)
        for b in batches:
            pred = predict(b["query"])
            few.update(*binarize_multiclass(pred, b["query_mask"], b["class_id"]))
            pooled.update(pred, b["query_mask"])
        return {"miou": few.compute()["miou"], "dataset_fg_iou": pooled.compute()["fg_iou"]}

    def cached(x):  # the episodic teacher on support features computed once (= segment_multiclass's pred)
        return module.teacher_logits(module.student.extract(x), x.shape[-2:]).argmax(1)

    teacher, student = module.teacher.eval(), module.student
    episodic = score(cached)
    student.eval()
    init = score(lambda x: student(x)["pred"])
    t0 = time.perf_counter()
    trainer = L.Trainer(max_steps=cfg["steps"], max_epochs=1, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t0
    module.eval()
    student = module.student.eval()
    specialised = score(lambda x: student(x)["pred"])

    q1 = batches[0]["query"][:1]
    student.requires_grad_(False)
    teacher.requires_grad_(False)

    timing = {"specialised": lambda: student(q1),
              "episodic": lambda: teacher.segment_multiclass(q1, support_t, masks_t),
              "episodic_cached": lambda: cached(q1)}
    return dict(classes=n_classes, shots=shots, supports=n_classes * shots, queries=len(queries), image_size=size,
                episodic=episodic, specialised_init=init, specialised=specialised, train_s=round(train_s, 2),
                dedicated_params=sum(p.numel() for p in student.specialization.parameters()), timing=timing)


def time_rows(rows: List[dict], rounds: int) -> None:
    """ms per query of each model, minimum over ``rounds`` interleaved rounds (one warm-up call
    first): background load on the shared machine then hits every configuration alike. GFLOP per
    query from ``fsseg.flops.count_flops`` (exact)."""
    import torch

    from fsseg.flops import count_flops

    with torch.inference_mode():
        for r in rows:
            for fn in r["timing"].values():
                fn()
        best = [{k: math.inf for k in r["timing"]} for r in rows]
        for _ in range(rounds):
            for r, b in zip(rows, best):
                for k, fn in r["timing"].items():
                    t = time.perf_counter()
                    fn()
                    b[k] = min(b[k], (time.perf_counter() - t) * 1000.0)
        for r, b in zip(rows, best):
            r["ms_per_query"] = {k: round(v, 2) for k, v in b.items()}
            r["gflop_per_query"] = {}
            for k, fn in r["timing"].items():
                r["gflop_per_query"][k] = round(count_flops(fn) / 1e9, 4)
            del r["timing"]


def to_markdown(res: dict) -> str:
    cfg = res["config"]
    L = [BEGIN, "## DistillFSS's claim measured: specialised vs episodic FS-DINO (`python -m bench.distillfss`)", "",
         f"Teacher: `{res['checkpoint']}` (the demo's trained FS-DINO: DINOv2-tiny stand-in, `full` variant, "
         f"{res['rows'][0]['image_size']} px, trained on the synthetic base classes of fold 0). Test: the fold's "
         f"novel classes (never trained on), N classes at once, K shots each, {cfg['queries_per_class']} held-out "
         f"queries per class. Specialisation: {cfg['steps']} AdamW steps (batch {cfg['batch_size']}, lr {cfg['lr']}) "
         f"of KL to the episodic teacher (leave-one-out) + {cfg['label_weight']} x CE+Dice on the supports; only the "
         "dedicated layer trains. mIoU = `FewShotIoU` x100 (equal here to DistillFSS's dataset-pooled foreground "
         "IoU, both in distillfss.json). ms = per query, batch 1, minimum over "
         f"{cfg['timing_rounds']} interleaved rounds; `episodic` encodes its N x K supports for the query, "
         "`episodic, cached` reuses support features computed once.", "",
         f"Machine: {res['machine']}. Run time {res['runtime_s'] / 60:.1f} min.", "",
         "| N classes | K shots | episodic mIoU | specialised mIoU (init -> trained) | Δ | specialised ms | "
         "episodic ms | episodic cached ms | specialised GFLOP | episodic GFLOP | train s |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        e, i, s = r["episodic"]["miou"], r["specialised_init"]["miou"], r["specialised"]["miou"]
        ms, gf = r["ms_per_query"], r["gflop_per_query"]
        L.append(f"| {r['classes']} | {r['shots']} | {e:.1f} | {i:.1f} -> {s:.1f} | {s - e:+.1f} | "
                 f"{ms['specialised']:.1f} | {ms['episodic']:.1f} | {ms['episodic_cached']:.1f} | "
                 f"{gf['specialised']:.3f} | {gf['episodic']:.3f} | {r['train_s']:.0f} |")
    L += ["", res["summary"], "", "![specialised vs episodic](distillfss.png)" if res.get("plot") else "", END]
    return "\n".join(x for x in L if x is not None) + "\n"


def summarise(rows: List[dict]) -> str:
    wins = sum(r["specialised"]["miou"] >= r["episodic"]["miou"] for r in rows)
    deltas = [r["specialised"]["miou"] - r["episodic"]["miou"] for r in rows]
    ratio = [r["ms_per_query"]["episodic"] / r["ms_per_query"]["specialised"] for r in rows]
    return (f"Specialised >= episodic mIoU in {wins}/{len(rows)} configurations (difference "
            f"{min(deltas):+.1f} .. {max(deltas):+.1f} points); episodic / specialised time per query "
            f"x{min(ratio):.1f} .. x{max(ratio):.1f} (the specialised cost is the same for every K by construction; "
            "the episodic one grows with N x K).")


def write_section(md_path: Path, section: str) -> None:
    """Replace (or append) this module's section of ``results.md``, keeping the rest of the file."""
    text = md_path.read_text() if md_path.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    md_path.write_text(text)


def plot(rows: List[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for n in sorted({r["classes"] for r in rows}):
        rs = [r for r in rows if r["classes"] == n]
        ks = [r["shots"] for r in rs]
        line = axes[0].plot(ks, [r["episodic"]["miou"] for r in rs], "o--", label=f"episodic, N={n}")[0]
        axes[0].plot(ks, [r["specialised"]["miou"] for r in rs], "s-", color=line.get_color(), label=f"specialised, N={n}")
        axes[1].plot(ks, [r["ms_per_query"]["episodic"] for r in rs], "o--", color=line.get_color(), label=f"episodic, N={n}")
        axes[1].plot(ks, [r["ms_per_query"]["specialised"] for r in rs], "s-", color=line.get_color(), label=f"specialised, N={n}")
    axes[0].set(xlabel="K shots per class", ylabel="mIoU (novel classes)", xscale="log")
    axes[1].set(xlabel="K shots per class", ylabel="ms per query (CPU)", xscale="log", yscale="log")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 1, 2 with N = 2 classes, 2 steps, 2 queries per class (smoke test, figures meaningless)")
    ap.add_argument("--ckpt", default=None, help="FewShotModule checkpoint (default: the demo's, outputs/demo)")
    ap.add_argument("--demo-dir", default=str(REPO / "outputs" / "demo"))
    ap.add_argument("--output-dir", default=str(REPO / "bench"))
    ap.add_argument("--steps", type=int, default=None, help="specialisation steps per configuration (default 20)")
    ap.add_argument("--queries-per-class", type=int, default=None, help="held-out test queries per class (default 4)")
    args = ap.parse_args(argv)
    ckpt = args.ckpt or find_demo_checkpoint(Path(args.demo_dir))
    if not ckpt or not Path(ckpt).is_file():
        print(f"bench.distillfss: no trained FS-DINO checkpoint ({args.ckpt or Path(args.demo_dir) / 'results.json'} / "
              "fewshot/checkpoints/best.ckpt not found): run `make demo` first or pass --ckpt; no figures written",
              file=sys.stderr)
        return 2
    import torch

    os.environ.setdefault("WANDB_SILENT", "true")
    cfg = make_config(args.quick)
    cfg["steps"] = args.steps or cfg["steps"]
    cfg["queries_per_class"] = args.queries_per_class or cfg["queries_per_class"]
    # the teacher's own input size (its training resolution)
    cfg["image_size"] = int(torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["image_size"])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    for n in cfg["classes"]:
        for k in cfg["shots"]:
            log(f"N={n} K={k}: episodic, specialise ({cfg['steps']} steps), score")
            rows.append(run_config(ckpt, n, k, cfg))
            r = rows[-1]
            log(f"N={n} K={k}: episodic {r['episodic']['miou']:.1f}, specialised {r['specialised_init']['miou']:.1f}"
                f" -> {r['specialised']['miou']:.1f} mIoU ({r['train_s']:.0f} s training)")
    log("timing")
    time_rows(rows, cfg["timing_rounds"])
    res = dict(checkpoint=str(ckpt), config=cfg, rows=rows, runtime_s=round(time.time() - t0, 1),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    res["summary"] = summarise(rows)
    res["plot"] = "distillfss.png" if plot(rows, out / "distillfss.png") else None
    (out / "distillfss.json").write_text(json.dumps(res, indent=1))
    write_section(out / "results.md", to_markdown(res))
    log(f"done in {res['runtime_s'] / 60:.1f} min -> {out}/distillfss.json, results.md")
    print(res["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
