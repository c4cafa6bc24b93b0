"""What a run records besides its metrics: the resolved config and checkpoint in W&B, the data
module's setup summary, and the test results (metrics, per-class IoU with class names, the weights
tested) in the run folder (``results.json``, read by ``fsseg results``) and in W&B (a table)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from fsseg.runs import RESULTS_FILE, SUMMARY_FILE, Run, write_json


def wandb_loggers(trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, WandbLogger)]


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def start_run(trainer, model, datamodule, run: Optional[Run], config: dict, job: str,
              ckpt_path: Optional[str]) -> None:
    """Before fit/validate/test: W&B gets the whole resolved config (trainer included), the run
    folder and the checkpoint; the data module's summary goes to the run folder and W&B."""
    summary = data_summary(datamodule, job)
    if trainer.is_global_zero and summary is not None:
        print(format_summary(summary), file=sys.stderr)
        if run is not None:
            write_json(run.path / SUMMARY_FILE, summary)
    for logger in wandb_loggers(trainer):
        if run is None and getattr(logger, "_experiment", None) is None:
            # no run folder: the group still lines an ablation up by variant, fold and shot
            from fsseg.loggers import group_name

            group, tags = group_name(model, datamodule)
            logger._wandb_init.setdefault("group", group)
            logger._wandb_init.setdefault("tags", tags)
            logger._wandb_init.setdefault("job_type", job)
        extra = {"fsseg/ckpt_path": str(ckpt_path) if ckpt_path else None,
                 "fsseg/run_dir": str(run.path) if run is not None else None}
        if summary is not None:
            extra["fsseg/data_summary"] = summary
        logger.experiment.config.update({**config, **extra}, allow_val_change=True)


def record_fit_end(trainer) -> None:
    """The checkpoints a fit left, in the W&B summary (the run folder holds them under checkpoints/)."""
    callback = trainer.checkpoint_callback
    if callback is None:
        return
    for logger in wandb_loggers(trainer):
        logger.experiment.summary.update({"fsseg/best_checkpoint": str(callback.best_model_path or ""),
                                          "fsseg/last_checkpoint": str(getattr(callback, "last_model_path", "") or "")})


# ------------------------------------------------------------------------------ data summary
def data_summary(datamodule, job: str) -> Optional[dict]:
    """Benchmark, protocol, fold, shots; per split the classes used and dropped (with why), the
    episodes and the images; ``None`` for a data module without episode splits."""
    if datamodule is None or not hasattr(datamodule, "datasets") or not hasattr(datamodule, "shots"):
        return None
    stage = {"fit": "fit", "validate": "validate", "test": "test"}.get(job)
    datamodule.setup(stage)
    out = {"benchmark": getattr(datamodule, "dataset_name", None), "protocol": getattr(datamodule, "protocol_name", None),
           "fold": datamodule.fold, "shots": datamodule.shots, "n_way": getattr(datamodule, "n_way", 1),
           "image_size": getattr(datamodule, "image_size", None),
           "episodes_file": getattr(datamodule, "episodes_file", None), "splits": {}}
    for split, eps in datamodule.datasets.items():
        ds = eps.dataset
        need = datamodule.shots + 1
        used, dropped = [], {}
        for c in ds.class_ids:
            name = ds.class_names.get(c, str(c))
            n = ds.num_samples(c)
            if n >= need:
                used.append(name)
            else:
                # episodes need K supports and a query of one class (data_modules/episodes/dataset.py usable_classes)
                dropped[name] = f"{n} image(s), an episode needs shots+1={need}"
        episodes = getattr(eps, "episodes", None)
        if episodes is not None:
            in_episodes = {c for ep in episodes for c in ep.class_ids}
            for c in ds.class_ids:
                name = ds.class_names.get(c, str(c))
                if name in used and c not in in_episodes:
                    used.remove(name)
                    dropped[name] = "drawn in no episode of the list"
        out["splits"][split] = {"classes_used": used, "classes_dropped": dropped,
                                "episodes": len(eps), "images": len(ds.all_keys())}
    return out


def format_summary(s: dict) -> str:
    head = (f"fsseg data: {s['benchmark']} protocol {s['protocol']} fold {s['fold']} {s['shots']}-shot"
            f"{' (episodes from ' + str(s['episodes_file']) + ')' if s.get('episodes_file') else ''}")
    lines = [head]
    for split, d in s["splits"].items():
        by_reason: dict = {}
        for name, why in d["classes_dropped"].items():
            by_reason.setdefault(why.split(", ")[-1] if "image(s)" in why else why, []).append(name)
        dropped = "; ".join(f"{len(names)} {why}: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"
                            for why, names in by_reason.items())
        lines.append(f"  {split}: {len(d['classes_used'])} classes used"
                     f"{' (dropped ' + dropped + ')' if dropped else ''}, "
                     f"{d['episodes']} episodes, {d['images']} images")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- results
def collect_test_results(model, datamodule) -> dict:
    """``{"metrics": {"test/miou", ...}, "iou_per_class": {name: iou}}`` of the test just run."""
    last = dict(getattr(model, "last_metrics", {}) or {})
    per_class = last.pop("test/iou_per_class", None) or {}
    names = {}
    ds = getattr(datamodule, "datasets", {}).get("test") if datamodule is not None else None
    if ds is not None:
        names = ds.dataset.class_names
    metrics = {k: _plain(v) for k, v in last.items() if k.startswith("test/") and not isinstance(v, dict)}
    return {"metrics": metrics,
            "iou_per_class": {str(names.get(int(c), c)): _plain(v) for c, v in sorted(per_class.items())},
            "class_ids": {str(names.get(int(c), c)): int(c) for c in sorted(per_class)}}


def record_test(trainer, model, datamodule, run: Optional[Run], job: str, weights: Optional[str]) -> dict:
    """Write ``results.json`` into the run folder and log the per-class IoU table to W&B.
    ``job``: ``fit+test`` (tested at the end of its own fit) or ``test`` (a test-only run)."""
    res = collect_test_results(model, datamodule)
    res.update({"job": job, "weights": str(weights) if weights else "in-memory (no checkpoint)",
                "finished": time.time()})
    if run is not None:
        res.update({"experiment": run.experiment, "run": run.name, "keys": run.keys})
        if trainer.is_global_zero:
            write_json(run.path / RESULTS_FILE, res)
    for logger in wandb_loggers(trainer):
        import wandb

        rows = [[res["class_ids"][n], n, v] for n, v in res["iou_per_class"].items()]
        logger.experiment.log({"test/iou_per_class": wandb.Table(columns=["class_id", "class", "iou"], data=rows)})
        logger.experiment.summary.update({**res["metrics"], "fsseg/tested_weights": res["weights"],
                                          "fsseg/job": job})
    return res


def tested_weights_message(ckpt: Optional[str], callback) -> str:
    if ckpt == "best":
        score = callback.best_model_score
        why = (f"{callback.monitor} {float(score):.2f}" if score is not None
               else "its ModelCheckpoint monitors no metric: the newest checkpoint it saved")
        return f"--test_after_fit: testing the best checkpoint {callback.best_model_path} ({why})"
    return ("--test_after_fit: no best checkpoint was saved (no ModelCheckpoint monitoring a metric); "
            "testing the weights at the end of training")


def resolved_weights(ckpt: Optional[str], callback) -> Optional[str]:
    if ckpt == "best" and callback is not None:
        return str(Path(callback.best_model_path))
    return ckpt
