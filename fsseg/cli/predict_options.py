"""What ``fsseg predict`` adds to LightningCLI's predict: a trained model required, the data loaded at
the model's image size, and the prediction writer's output folder and switches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from fsseg.cli.errors import UsageError


def configure_predict(cfg) -> None:
    """Apply the predict options of the parsed config ``cfg`` (``--output_dir``, ``--overwrite``,
    ``--class_name``, ...) to its data module and prediction writers."""
    if not cfg.get("ckpt_path") and not cfg.get("allow_untrained"):
        raise UsageError("fsseg predict needs a trained model: give --ckpt_path PATH (a checkpoint of "
                         "`fsseg fit`, e.g. outputs/demo/fewshot/checkpoints/best.ckpt); "
                         "--allow_untrained true runs random weights (masks are meaningless)")
    model_args = cfg.model.get("init_args") or {}
    data_args = cfg.data.get("init_args")
    # The data module loads at the model's size unless told otherwise (one resize, not two).
    if data_args is not None and "image_size" in data_args and data_args.get("image_size") is None:
        data_args["image_size"] = model_args.get("image_size")
    if data_args is not None and cfg.get("skip_bad_queries") and "skip_bad_queries" in data_args:
        data_args["skip_bad_queries"] = True
    if data_args is not None and cfg.get("class_name"):
        if "class_name" not in data_args:
            raise UsageError("--class_name names the class of an episodic support folder (--data.support_dir); "
                             "a specialised model's classes are named in its checkpoint")
        data_args["class_name"] = cfg.get("class_name")
    out = cfg.get("output_dir")
    writers = [c for c in (cfg.trainer.get("callbacks") or [])
               if str(getattr(c, "class_path", "")).endswith("PredictionWriter")]
    for w in writers:
        w.init_args["overwrite"] = bool(cfg.get("overwrite"))
        w.init_args["per_class_masks"] = bool(cfg.get("per_class_masks"))
        if out:
            w.init_args["output_dir"] = out
        elif w.init_args.get("output_dir") is None:
            w.init_args["output_dir"] = str(default_predict_dir(cfg.get("ckpt_path"),
                                                                data_args.get("query_dir") if data_args else None))
    for w in writers:
        print(f"fsseg predict: writing masks, overlays and summaries to {w.init_args['output_dir']} "
              f"(--output_dir to change)", file=sys.stderr)
    if writers and cfg.trainer.get("default_root_dir") is None:
        cfg.trainer["default_root_dir"] = writers[0].init_args["output_dir"]  # its config.yaml too


def default_predict_dir(ckpt_path: Optional[str], query_dir: Optional[str]) -> Path:
    """``<run folder>/predictions/<query folder name>``: the run folder is the checkpoint's folder, or
    its parent when that is ``checkpoints/``; without a checkpoint ``./predictions``."""
    name = Path(str(query_dir)).stem if query_dir else "queries"
    if not ckpt_path:
        base = Path("predictions").resolve() / name
    else:
        run = Path(ckpt_path).resolve().parent
        if run.name == "checkpoints":
            run = run.parent
        base = run / "predictions" / name
    # a fresh folder per run: <name>, else <name>_2, <name>_3, ... (runs never mix)
    candidate, k = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = base.with_name(f"{base.name}_{k}")
    return candidate
