"""The ``fsseg`` command line: LightningCLI (``fit|validate|test|predict``) plus tools (``TOOLS``).

    fsseg fit --config lightning_configs/distill_518.yaml
    fsseg test --config lightning_configs/fewshot/coco20i_fold0_1shot.yaml --ckpt_path runs/.../best.ckpt
    fsseg predict --ckpt_path .../best.ckpt --data.support_dir s/ --data.query_dir q/ [--output_dir out/]
    fsseg params [--backbone dinov2_vitb14]      parameter table of every variant
    fsseg export --ckpt_path ... --support_dir s/ --output_dir export/     ONNX + safetensors
    fsseg demo-ui [--ckpt_path ...]              Gradio web demo (pip install 'fsseg[demo]')

The model class and the data module are chosen in the YAML (``class_path``); ``--print_config``
shows every default. The config is saved into each run's folder (overwritten when a later
``fsseg test`` runs in the same folder).

With ``--ckpt_path`` the model is rebuilt from the checkpoint (its architecture, trained weights and
frozen-file records, ``fsseg.modules.checkpoints``); ``--model.*`` arguments given on the command
line override the checkpoint's values (e.g. a moved ``--model.init_args.dinov2_checkpoint``).

Quiet by default: Lightning's information lines and tips, framework deprecation notices and the
CUDA-toolkit probe are not shown, and each warning is one line ``warning: <message>``; ``--verbose``
shows everything as the frameworks print it.

Errors: a bad input or configuration prints one line ``error: <message>`` and exits with code 2;
``--debug`` (or ``FSSEG_DEBUG=1``) shows the traceback instead. Unexpected errors (bugs) always
show their traceback and exit with 1.

This module imports nothing heavy at the top: ``fsseg --help`` and the tools' ``--help`` answer
without loading torch or Lightning.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Optional

# LightningCLI subcommands (Trainer methods) and their one-line help.
SUBCOMMANDS = {
    "fit": "train a model from a YAML config (stage 1 distillation or stage 2 few-shot)",
    "validate": "run the validation episodes once and print the metrics",
    "test": "mIoU / FB-IoU on the test episodes (--ckpt_path a trained checkpoint)",
    "predict": "segment your own photos: --ckpt_path, --data.support_dir, --data.query_dir [--output_dir]",
}

# Tools: name -> "module:function" (called with the remaining arguments), or
# ("module:function", "one-line help"). Without a help text the target module's docstring's first
# line is shown (read from the source file, without importing the module).
TOOLS: dict = {
    "params": ("fsseg.params:main", "parameter table of every FS-DINO variant"),
    "export": ("fsseg.export:main", "ONNX + safetensors of a trained segmenter: episodic (its support set baked in) or "
                                    "specialised (support-free); --bundle: one file"),
    "demo-ui": ("fsseg.webui:main", "Gradio web demo: upload supports and a photo, get the mask"),
    "episodes": "fsseg.episodes_tool:main",
    "davis": "fsseg.video:main",
    "davis-eval": "fsseg.davis_eval:main",
    "prepare": "fsseg.prepare:main",
}

DEBUG_ENV = "FSSEG_DEBUG"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs"
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


# ------------------------------------------------------------------------------------- help
def _tool_target(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def _module_file(module: str) -> Optional[Path]:
    """Source file of ``module`` found on sys.path without importing it (nor its packages)."""
    parts = module.split(".")
    for base in sys.path:
        root = Path(base or ".").joinpath(*parts)
        for cand in (root.with_suffix(".py"), root / "__init__.py"):
            if cand.is_file():
                return cand
    return None


def tool_help(name: str) -> str:
    """One-line help of a tool: its table entry's text, else its module docstring's first line."""
    entry = TOOLS[name]
    if isinstance(entry, (tuple, list)) and len(entry) > 1 and entry[1]:
        return str(entry[1])
    path = _module_file(_tool_target(entry).split(":")[0])
    doc = ""
    if path is not None:
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except (OSError, SyntaxError, ValueError):
            doc = ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    # "``fsseg export``: does X" -> "does X"
    first = re.sub(r"^``[^`]*``\s*[:,-]\s*", "", first)
    return first or "(no description)"


def main_help() -> str:
    rows = [(n, h) for n, h in SUBCOMMANDS.items()] + [(n, tool_help(n)) for n in TOOLS]
    width = max(max(len(n) for n, _ in rows), len("-h, --help")) + 2
    lines = ["usage: fsseg <command> [options]      (fsseg <command> --help for its options)", "",
             "Few-shot semantic segmentation (FS-DINO / UINO-FSS) on PyTorch Lightning.", "",
             "training and evaluation (LightningCLI; --config YAML, every class argument overridable):"]
    lines += [f"  {n:<{width}}{h}" for n, h in rows[:len(SUBCOMMANDS)]]
    lines += ["", "tools:"]
    lines += [f"  {n:<{width}}{h}" for n, h in rows[len(SUBCOMMANDS):]]
    lines += ["", "options:",
              f"  {'--debug':<{width}}show the full traceback of an error (same as {DEBUG_ENV}=1)",
              f"  {'--verbose':<{width}}show every framework message (Lightning's information, deprecations)",
              f"  {'-h, --help':<{width}}this message"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LightningCLI
def _explicit_model_args(args: list[str]) -> set[str]:
    """Constructor arguments of the model given on the command line (``--model.init_args.x`` or
    ``--model.x``, ``=value`` or separate value)."""
    found = set()
    for a in args:
        m = re.match(r"^--model\.(?:init_args\.)?([A-Za-z_][A-Za-z0-9_]*)(?:=|$)", a)
        if m and m.group(1) not in ("class_path", "init_args", "dict_kwargs", "help"):
            found.add(m.group(1))
    return found


def _lightning_cli_class():
    from lightning.pytorch.cli import LightningCLI

    class FssegCLI(LightningCLI):
        def parse_arguments(self, parser, args) -> None:
            self._raw_args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
            super().parse_arguments(parser, args)

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--test_after_fit", type=bool, default=False,
                                help="After `fit`, run `test` with the best checkpoint (ablation sweeps).")
            parser.add_argument("--allow_untrained", type=bool, default=False,
                                help="predict: run without --ckpt_path (random weights; for trying the pipeline only).")
            parser.add_argument("--output_dir", type=Optional[str], default=None,
                                help="predict: where masks, overlays and summaries go (default: "
                                     "<checkpoint's run folder>/predictions/<query folder name>).")
            parser.add_argument("--precision", type=Optional[str], default=None,
                                help="32 | bf16-mixed | 16-mixed (GPU) | auto (bf16 where the hardware multiplies it "
                                     "natively, else 32); sets trainer.precision (fsseg.precision)")
            parser.add_argument("--skip_bad_queries", type=bool, default=False,
                                help="predict: skip query images that cannot be read (counted and listed in "
                                     "summary.json) instead of stopping.")
            parser.add_argument("--overwrite", type=bool, default=False,
                                help="predict: replace the predictions of an earlier run in --output_dir (an "
                                     "output folder that holds some is refused otherwise).")
            parser.add_argument("--class_name", type=Optional[str], default=None,
                                help="predict: the name of the class of a single-folder support set (images/ + "
                                     "masks/; default: the folder's name).")
            parser.add_argument("--per_class_masks", type=bool, default=False,
                                help="predict: also write one 0/255 mask per class (masks/<photo>/<class>.png).")
            parser.set_defaults({
                "model": {"class_path": "fsseg.modules.FewShotModule"},
                "data": {"class_path": "data_modules.EpisodicDataModule"},
            })

        def _resolve_precision(self, sub) -> None:
            # One meaning of precision everywhere (fsseg.precision): `--precision auto` resolved for the
            # device, and 16-mixed refused on CPU (Lightning would silently switch it to bf16).
            import torch

            from fsseg.precision import resolve_precision

            cfg = self.config[sub] if sub else self.config
            trainer = cfg.get("trainer")
            requested = cfg.get("precision") or (trainer.get("precision") if trainer is not None else None)
            if trainer is None or requested is None:
                return
            accel = str(trainer.get("accelerator") or "auto")
            device = "cuda" if accel in ("cuda", "gpu") or (accel == "auto" and torch.cuda.is_available()) else "cpu"
            try:
                resolved = resolve_precision(requested, device)
            except ValueError as e:
                raise UsageError(str(e)) from None
            trainer["precision"] = "32-true" if resolved == "32" else resolved

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            # Checkpoints are written through a same-folder temporary file + rename (never torn, whatever
            # $TMPDIR is), unless the user configured a CheckpointIO plugin of their own.
            from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

            from fsseg.checkpoint_io import AtomicCheckpointIO

            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
                trainer.strategy.checkpoint_io = AtomicCheckpointIO()
            return trainer

        def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
            # Checkpoints are read with torch.load(weights_only=True) (tensors and plain values only; no
            # pickled code runs) unless `--weights_only false` is given. Lightning adds the Trainer-method
            # argument after add_arguments_to_parser, so its default (and its help) is set here.
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
                parser.set_defaults({"weights_only": True})
                for action in parser._actions:
                    if "--weights_only" in action.option_strings:
                        action.help = ("torch.load the checkpoint with weights_only=True (tensors and plain "
                                       "values only, no pickled code runs). Set false only for a trusted file.")
            return parser

        # -- --ckpt_path: rebuild the model on this machine ------------------------------------
        def _parse_ckpt_path(self) -> None:
            sub = self.config.get("subcommand")
            if not sub:
                return
            cfg = self.config[sub]
            ckpt_path = cfg.get("ckpt_path")
            if not ckpt_path:
                return
            if not Path(ckpt_path).is_file():
                if str(ckpt_path) in CKPT_KEYWORDS or str(ckpt_path).startswith("registry"):
                    return  # Lightning resolves these itself
                from fsseg.models.weights import CheckpointNotFoundError

                raise CheckpointNotFoundError(f"--ckpt_path {ckpt_path}: checkpoint file not found")
            from fsseg.modules.checkpoints import load_checkpoint_file, rebuild_hparams

            ckpt = load_checkpoint_file(ckpt_path)  # weights_only, as Lightning's own hparams read
            if not ckpt.get("hyper_parameters"):
                return  # no architecture stored: the config's model is used (checked when loading)
            explicit = _explicit_model_args(getattr(self, "_raw_args", []))
            init_args = cfg.model.get("init_args") if cfg.get("model") is not None else None
            given = {k: init_args.get(k) for k in explicit if init_args is not None and k in init_args}
            class_path, hp = rebuild_hparams(ckpt, str(ckpt_path), given)
            import inspect

            from fsseg.modules.checkpoints import module_class

            params = inspect.signature(module_class(class_path).__init__).parameters
            known = {k: v for k, v in hp.items() if k in params}
            extra = {k: v for k, v in hp.items() if k not in params}
            model = {"class_path": class_path, "init_args": known}
            if extra:
                model["dict_kwargs"] = extra
            cfg.model = None  # the checkpoint's class replaces the config's (no stale init_args kept)
            self.config = self.parser.parse_object({sub: {"model": model}}, self.config)
            self._ckpt_hparams = known

        def before_instantiate_classes(self) -> None:
            sub = self.config.get("subcommand")
            self._resolve_precision(sub)
            if sub == "fit":
                self._specialize_at_teacher_size(self.config[sub])
            if sub != "predict":
                return
            cfg = self.config[sub]
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

        def _specialize_at_teacher_size(self, cfg) -> None:
            # A specialisation with a teacher checkpoint runs at the teacher's image size unless
            # --model.image_size is given on the command line (a config's value is the smoke teacher's);
            # the data follow the model unless --data.image_size is given there too.
            model = cfg.get("model")
            init = model.get("init_args") if model is not None else None
            if (init is not None and str(model.get("class_path", "")).endswith("SpecializeModule")
                    and init.get("teacher_ckpt") and "image_size" not in _explicit_model_args(self._raw_args)):
                init["image_size"] = None
                data = cfg.get("data")
                data_args = data.get("init_args") if data is not None else None
                given = any(re.match(r"^--data\.(init_args\.)?image_size(=|$)", a) for a in self._raw_args)
                if data_args is not None and "image_size" in data_args and not given:
                    data_args["image_size"] = None

        def _group_wandb_runs(self) -> None:
            """W&B dashboards group runs by variant, fold and shot, so an ablation sweep lines up."""
            from fsseg.loggers import group_name

            for logger in getattr(self.trainer, "loggers", []):
                if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None) is None:
                    group, tags = group_name(self.model, self.datamodule)
                    logger._wandb_init.setdefault("group", group)
                    logger._wandb_init.setdefault("tags", tags)
                    logger._wandb_init.setdefault("job_type", self.subcommand)

        def before_fit(self) -> None:
            self._group_wandb_runs()

        def after_fit(self) -> None:
            if self.config[self.subcommand].get("test_after_fit"):
                ckpt = "best" if getattr(self.trainer.checkpoint_callback, "best_model_path", "") else None
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

        def before_validate(self) -> None:
            self._group_wandb_runs()

        def before_test(self) -> None:
            self._group_wandb_runs()

    return FssegCLI


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


def __getattr__(name: str):
    # `from fsseg.cli import FssegCLI` keeps working; Lightning is imported only then.
    if name == "FssegCLI":
        return _lightning_cli_class()
    raise AttributeError(name)


def run_cli(args: list[str] | None = None, run: bool = True, raise_argument_errors: bool = False):
    """Run LightningCLI in-process (``args`` as on the command line; None: ``sys.argv``).

    ``raise_argument_errors``: a parse error raises jsonargparse's ``ArgumentError`` (``main`` prints
    it as one line) instead of printing usage and a multi-line report and exiting."""
    # `fsseg predict --ckpt_path ... --data.support_dir s/ --data.query_dir q/` works without --config:
    # the predict subcommand starts from lightning_configs/predict.yaml when it is there.
    predict_cfg = REPO_CONFIGS / "predict.yaml"
    parser_kwargs: dict = {sub: {} for sub in SUBCOMMANDS}
    if predict_cfg.exists():
        parser_kwargs["predict"]["default_config_files"] = [str(predict_cfg)]
    if raise_argument_errors:
        parser_kwargs["exit_on_error"] = False
        for sub in SUBCOMMANDS:
            parser_kwargs[sub]["exit_on_error"] = False
    cli_class = _lightning_cli_class()
    _set_quiet_levels()
    cli = cli_class(
        parser_kwargs=parser_kwargs,
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
    if run:
        _finish_wandb()
    return cli


def _finish_wandb() -> None:
    """Close the W&B run a subcommand opened, so the next run in this process gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# ------------------------------------------------------------------------------------- errors
class UsageError(ValueError):
    """A command used in a way that cannot give a meaningful result (the message says the fix)."""


def _user_error_types() -> tuple:
    """Exceptions that mean bad input or configuration (one line, exit 2), not a bug."""
    types = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError]
    for mod, name in (("fsseg.models.weights", "WeightsError"), ("fsseg.modules.common", "NonFiniteLossError"),
                      ("jsonargparse", "ArgumentError"), ("argparse", "ArgumentError"), ("pickle", "UnpicklingError")):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, name):
            types.append(getattr(m, name))
    return tuple(types)


_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":?\s*(.*)$')


def unwrap_argument_error(message: str) -> str:
    """jsonargparse's nested "Does not validate against any of the Union subtypes" report -> the
    argument and what is wrong with it, e.g. ``model.image_size: Expected a <class 'int'>. Got value: abc``
    (the first alternative's errors; the others say the value is not None)."""
    lines = [ln for ln in str(message).splitlines() if ln.strip()]
    keys, detail = [], []
    m = _KEY.match(lines[0].strip()) if lines else None
    if m:
        keys.append(m.group(1))
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "Errors:"), None)
    if start is None:
        return " ".join(ln.strip() for ln in lines)
    bullet = None
    for ln in lines[start + 1:]:
        text, indent = ln.strip(), len(ln) - len(ln.lstrip())
        if bullet is not None and indent <= bullet:
            break  # the next alternative, or the "Given value" footer
        if bullet is None:
            if not text.startswith("- "):
                continue
            bullet, text = indent, text[2:]
        mk = _KEY.match(text)
        if mk:
            keys.append(mk.group(1))
            if mk.group(2):
                detail.append(mk.group(2))
        elif not text.startswith("Problem with given class_path"):
            detail.append(text)
    what = "; ".join(detail) or " ".join(ln.strip() for ln in lines[:2])
    return f"{'.'.join(keys)}: {what}" if keys else what


def one_line(exc: BaseException) -> str:
    """``<message> (<notes>)`` on one line; a file-naming message is kept whole."""
    name = type(exc).__name__
    msg = str(exc).strip()
    if name == "ArgumentError" or _UNION in msg:
        msg = unwrap_argument_error(msg)
    if name == "UnpicklingError":
        msg = msg.splitlines()[0] + " The checkpoint holds pickled objects; pass --weights_only false only if you trust it."
    if isinstance(exc, KeyError) or not msg:
        msg = f"{name}: {msg}"
    notes = [n for n in getattr(exc, "__notes__", []) if n]
    text = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    if notes:
        text += " (" + "; ".join(n.strip() for n in notes) + ")"
    return text


def _is_user_error(exc: BaseException) -> bool:
    seen = set()
    e: Optional[BaseException] = exc
    types = _user_error_types()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            return True
        e = e.__cause__
    return False


_UNION = "Does not validate against any of the Union subtypes"


def _user_facing(exc: BaseException) -> BaseException:
    """The exception whose message explains the problem: jsonargparse wraps an error raised while a
    class is instantiated in its "Does not validate against any of the Union subtypes" report."""
    e = exc
    while e.__cause__ is not None and (_UNION in str(e) or type(e).__name__ == "MisconfigurationException"):
        if any(t in str(e.__cause__) for t in ("Parser key", "Problem with given class_path", _UNION)):
            break  # a parse error: the report itself names the argument (unwrap_argument_error)
        e = e.__cause__
    return e


def _tool_main(name: str):
    module, _, func = _tool_target(TOOLS[name]).partition(":")
    return getattr(importlib.import_module(module), func or "main")


def _dispatch(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(main_help())
        return
    if args[0] in TOOLS:
        _tool_main(args[0])(args[1:])
        return
    if args[0] not in SUBCOMMANDS and not args[0].startswith("-"):
        raise UsageError(f"unknown command {args[0]!r}; choose one of {', '.join([*SUBCOMMANDS, *TOOLS])} "
                         "(fsseg --help)")
    if any(a in ("-h", "--help") for a in args):
        run_cli(args, run=True)  # LightningCLI prints help and exits
        return
    run_cli(args, raise_argument_errors=True)


# Framework messages a user cannot act on (shown with --verbose): the loggers below WARNING, and these
# warnings (message regexes).
QUIET_LOGGERS = {"lightning.pytorch": "WARNING", "lightning.fabric": "WARNING", "lightning": "WARNING",
                 "torch.utils.cpp_extension": "ERROR", "onnxscript": "ERROR", "onnx_ir": "ERROR"}
QUIET_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree use under torch >= 2.9
    r"Found \d+ module\(s\) in eval mode",  # the frozen encoder is in eval mode by design
    r"Total length of `\w+` across ranks is zero",  # no validation set (a specialisation without val_dir)
    r"The `srun` command is available",
)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text} ({os.path.basename(str(filename))}:{lineno})", file=file or sys.stderr)


_QUIET = {"on": False}  # set by quiet_frameworks (main without --verbose)


def _set_quiet_levels() -> None:
    # Lightning sets its loggers to INFO when imported: applied again once it is
    import logging

    if _QUIET["on"]:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)


def quiet_frameworks() -> None:
    """See the module docstring (``--verbose`` skips this)."""
    import warnings

    _QUIET["on"] = True
    _set_quiet_levels()
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    warnings.showwarning = _one_line_warning


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    verbose = "--verbose" in args
    args = [a for a in args if a not in ("--debug", "--verbose")]
    if not verbose:
        quiet_frameworks()
    import warnings

    # main() hands LightningCLI the command line itself (after taking --debug out of it)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        _dispatch(args)
    except SystemExit as e:
        # Tools stop on bad input with SystemExit("<message>"): the same one-line `error:` and exit code 2
        if isinstance(e.code, str):
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place errors reach the user
        if debug:
            raise
        if _is_user_error(e):
            print(f"error: {one_line(_user_facing(e))}", file=sys.stderr)
            sys.exit(2)
        import traceback

        traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(this looks like a bug in fsseg; the traceback is above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
