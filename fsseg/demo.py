"""`make demo`: the whole FS-DINO pipeline end to end on built-in synthetic data, on a CPU.

1. Stand-in "pretrained" DINOv2 and SAM checkpoints in the official key layouts (seeded random
   weights: nothing can be downloaded here) so that every stage shares one frozen encoder.
2. Stage 1: distil the bottleneck adapter from the SAM teacher through the resolution curriculum
   (``fsseg fit --config lightning_configs/demo/distill.yaml``), teacher embeddings cached on disk.
3. Stage 2: episodic training of prompts + 4D correlation + decoder on the 90 base classes
   (``fsseg fit --config lightning_configs/demo/fewshot.yaml``).
4. ``fsseg test`` on the 30 novel classes, 1-shot and 5-shot, for the trained model, the untrained
   model (same frozen parts, SAM-initialised decoder) and the parameter-free PCS-threshold baseline
   (threshold fitted on base classes), then a results table and where every output is.

All stages go through the same ``fsseg`` command line a user runs (``fsseg.cli.run_cli``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs" / "demo"


def _cli(args: list[str]):
    from fsseg.cli import run_cli

    return run_cli(args)


def _weights(out: Path) -> tuple[str, str]:
    from fsseg.models.methods import TINY_NETWORK
    from fsseg.models.stand_in_weights import write_dinov2_checkpoint, write_sam_checkpoint

    dinov2 = write_dinov2_checkpoint(out / "weights" / "dinov2_tiny_pretrain.pth", arch=TINY_NETWORK["backbone"], seed=0)
    decoder = {k: v for k, v in TINY_NETWORK.items() if k.startswith("decoder_")}  # the stage-2 model's decoder
    sam = write_sam_checkpoint(out / "weights" / "sam_tiny.pth", variant="tiny", seed=0, **decoder)
    return str(dinov2), str(sam)


def _csv_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _distill_curve(run_dir: Path) -> list[tuple[int, float]]:
    """Validation MSE (at the final resolution) per epoch, from the CSV log."""
    rows = _csv_metrics(run_dir / "csv" / "metrics.csv")
    return [(int(r["epoch"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]


def _test(common: list[str], shots: int, ckpt: str | None) -> dict:
    args = ["test", *common, "--data.init_args.shots", str(shots), "--trainer.logger", "false",
            "--trainer.callbacks", "null"]
    if ckpt:
        args += ["--ckpt_path", ckpt]
    cli = _cli(args)
    return cli.model.last_metrics


def _pcs_baseline(dinov2: str, shots_list: list[int], test_episodes: int, base_episodes: int) -> dict:
    """Parameter-free PCS-threshold baseline on the same frozen encoder, threshold from base classes."""
    from data_modules import EpisodicDataModule
    from fsseg.baselines import PCSThreshold
    from fsseg.modules import FewShotModule

    module = FewShotModule(segmenter={"name": "tiny", "method": "compact"}, image_size=112,
                           dinov2_checkpoint=dinov2).eval()
    results = {}
    for shots in shots_list:
        dm = EpisodicDataModule(dataset="synthetic", fold=0, shots=shots, image_size=112, batch_size=8,
                                val_episodes=200, test_episodes=test_episodes)
        dm.setup("test")
        base = PCSThreshold(module.model)
        tau = base.fit_threshold(dm.base_class_dataloader(base_episodes), num_classes=dm.num_classes)
        res = base.evaluate(dm.test_dataloader(), num_classes=dm.num_classes)
        results[shots] = {"test/miou": res["miou"], "test/fbiou": res["fbiou"], "threshold": tau}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fewshot-epochs", type=int, default=8)
    parser.add_argument("--train-episodes", type=int, default=800)
    parser.add_argument("--test-episodes", type=int, default=300)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of every step in about a minute (numbers meaningless)")
    args = parser.parse_args(argv)
    limits: list[str] = []
    if args.quick:
        args.fewshot_epochs, args.train_episodes, args.test_episodes = 1, 16, 16
        limits = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path("outputs/demo").resolve()  # the run folders in lightning_configs/demo/*.yaml live here
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    print(f"[1/4] ({time.time() - t0:.0f} s) stand-in DINOv2-tiny and SAM-tiny checkpoints in the official layouts", flush=True)
    dinov2, sam = _weights(out)

    print(f"[2/4] ({time.time() - t0:.0f} s) stage 1: adapter distillation through the curriculum 56 -> 84 -> 112", flush=True)
    distill_dir = out / "distill"
    _cli(["fit", "--config", str(CONFIGS / "distill.yaml"),
          "--model.init_args.dinov2_checkpoint", dinov2, "--model.init_args.sam_checkpoint", sam, *limits])
    adapter = str(distill_dir / "checkpoints" / "last.ckpt")
    curve = _distill_curve(distill_dir)

    print(f"[3/4] ({time.time() - t0:.0f} s) stage 2: episodic training on the base classes", flush=True)
    fs_dir = out / "fewshot"
    model_args = ["--model.init_args.dinov2_checkpoint", dinov2, "--model.init_args.sam_checkpoint", sam,
                  "--model.init_args.adapter_checkpoint", adapter]
    common = ["--config", str(CONFIGS / "fewshot.yaml"), *model_args,
              "--data.init_args.test_episodes", str(args.test_episodes)]
    fit = _cli(["fit", *common, "--trainer.max_epochs", str(args.fewshot_epochs),
                "--data.init_args.train_episodes_per_epoch", str(args.train_episodes), *limits])
    best = str(Path(fit.trainer.checkpoint_callback.best_model_path or fs_dir / "checkpoints" / "last.ckpt").resolve())

    print(f"[4/4] ({time.time() - t0:.0f} s) test on the 30 novel classes: trained vs untrained vs PCS-threshold baseline", flush=True)
    rows = {"FS-DINO trained": {}, "FS-DINO untrained": {}}
    for shots in (1, 5):
        rows["FS-DINO trained"][shots] = _test(common, shots, best)
        rows["FS-DINO untrained"][shots] = _test(common, shots, None)
    pcs = _pcs_baseline(dinov2, [1, 5], args.test_episodes, base_episodes=16 if args.quick else 200)
    rows = {"PCS threshold (no training)": pcs, **rows}

    lines = ["| model (novel classes, fold 0) | 1-shot mIoU | 1-shot FB-IoU | 5-shot mIoU | 5-shot FB-IoU |",
             "|---|---|---|---|---|"]
    for name, res in rows.items():
        cells = [f"{res[s]['test/miou']:.1f} | {res[s]['test/fbiou']:.1f}" for s in (1, 5)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    curve_txt = ", ".join(f"epoch {ep}: {mse:.4f}" for ep, mse in curve)
    panels = fs_dir / "panels"
    wandb_dirs = sorted(str(p) for p in out.glob("*/wandb/offline-run-*"))
    summary = {
        "results": {k: {str(s): v for s, v in r.items()} for k, r in rows.items()},
        "distillation_val_mse": curve,
        "pcs_thresholds": {str(s): pcs[s]["threshold"] for s in pcs},
        "best_checkpoint": best,
        "adapter_checkpoint": adapter,
        "panels": str(panels),
        "wandb_runs": wandb_dirs,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nDistillation validation MSE at 112 px per epoch (curriculum 56/84/112): {curve_txt}")
    print(f"\nOutputs (in {time.time() - t0:.0f} s):")
    print(f"  results table     {out / 'results.md'}  (and results.json)")
    print(f"  overlay panels    {panels}/val/ (support+mask | query+truth | prediction)")
    print(f"  checkpoints       {best}\n                    {adapter}")
    print(f"  W&B offline runs  {', '.join(wandb_dirs) or '(none)'}  (wandb sync <dir> to upload)")
    print(f"  CSV metrics       {distill_dir / 'csv' / 'metrics.csv'}, {fs_dir / 'csv' / 'metrics.csv'}")


if __name__ == "__main__":
    main()
