"""The ``fsseg`` command line: LightningCLI (``fit|validate|test|predict``) plus tools (``TOOLS``).

    fsseg fit --config lightning_configs/distill_518.yaml
    fsseg fit --config lightning_configs/pascal5i_hdmnet.yaml --data.init_args.fold 0 --data.init_args.shots 1
    fsseg test --config lightning_configs/pascal5i_hsnet.yaml --ckpt_path runs/<experiment>/<run>/checkpoints/best.ckpt
    fsseg results runs/                          the paper's tables from the run folders
    fsseg predict --ckpt_path .../best.ckpt --data.support_dir s/ --data.query_dir q/ [--output_dir out/]
    fsseg params [--backbone dinov2_vitb14]      parameter table of every variant
    fsseg export --ckpt_path ... --support_dir s/ --output_dir export/     ONNX + safetensors
    fsseg demo-ui [--ckpt_path ...]              Gradio web demo (pip install 'fsseg[demo]')

The model class and the data module are chosen in the YAML (``class_path``); ``--print_config``
shows every default. fit/validate/test write one folder per run, ``runs/<experiment>/<run name>/``
(``fsseg.runs``: config, checkpoints, metrics.csv, panels, results, the W&B run); ``--ckpt_path last``
and ``--resume NAME`` continue a run in its folder and W&B run.

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
    "selfcheck": ("fsseg.selfcheck:main", "fit/test/predict on this machine's CPU and GPUs (32, bf16, fp16, DDP): "
                                          "PASS/FAIL per check"),
    "results": ("fsseg.results:main", "the paper's tables (Table 1/2, 3, 4, any pivot) from run folders or W&B runs"),
}

DEBUG_ENV = "FSSEG_DEBUG"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs"
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")
# Model settings a checkpoint decides (its weights were trained with them) unless given on the command line.
CHECKPOINT_WINS = ("segmenter", "image_size")


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
    ``--model.x``, ``=value`` or separate value; ``--model.init_args.segmenter.name`` counts as ``segmenter``)."""
    found = set()
    for a in args:
        m = re.match(r"^--model\.(?:init_args\.)?([A-Za-z_][A-Za-z0-9_]*)(?:[.=]|$)", a)
        if m and m.group(1) not in ("class_path", "init_args", "dict_kwargs", "help"):
            found.add(m.group(1))
    return found


def _explicit_spec_keys(args: list[str]) -> set[str]:
    """Keys of the model spec given on the command line: ``--model.init_args.segmenter.KEY`` flags, and
    the keys of a whole ``--model.init_args.segmenter '{...}'``."""
    import yaml

    keys = set()
    for i, a in enumerate(args):
        m = re.match(r"^--model\.(?:init_args\.)?segmenter(?:\.([A-Za-z_][A-Za-z0-9_]*))?(=.*|$)", a)
        if not m:
            continue
        if m.group(1):
            keys.add(m.group(1))
            continue
        value = m.group(2)[1:] if m.group(2) else (args[i + 1] if i + 1 < len(args) else "")
        spec = yaml.safe_load(value) if value else None
        keys |= set(spec) if isinstance(spec, dict) else {"name"}
    return keys


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
            parser.add_argument("--float32_matmul", type=str, default="auto",
                                help="fp32 matmuls: auto (TF32 on a CUDA GPU, full fp32 elsewhere) | highest (full "
                                     "fp32 on the GPU too) | high | medium (torch.set_float32_matmul_precision)")
            parser.add_argument("--cpu_kernels", type=bool, default=True,
                                help="use fsseg's compiled CPU kernels where they run (AVX512-BF16 x86); false: "
                                     "torch's ops only, nothing compiled (fsseg.kernels; FSSEG_CPU_KERNELS=0 for "
                                     "the other tools)")
            parser.add_argument("--sigterm_grace_s", type=float, default=30.0,
                                help="fit: seconds a SIGTERM leaves Lightning to stop the run cleanly before fsseg "
                                     "ends it (and the DDP ranks it launched) with exit code 143, even when it is "
                                     "stuck in native code such as a collective (fsseg.termination).")
            parser.add_argument("--experiment", type=Optional[str], default=None,
                                help="fit/validate/test: the run folder's parent runs/<experiment>/ and the W&B "
                                     "group (default: the config file's name)")
            parser.add_argument("--run_name", type=Optional[str], default=None,
                                help="fit/validate/test: the run folder's name (default: variant-benchmark-fold-"
                                     "shots-protocol plus a unique suffix); an existing one is refused")
            parser.add_argument("--resume", type=Optional[str], default=None,
                                help="fit: continue the run of this name (or run folder path) from its last.ckpt, "
                                     "in the same folder and W&B run (--ckpt_path last: the newest run of this "
                                     "experiment and name)")
            parser.add_argument("--run_folders", type=bool, default=True,
                                help="fit/validate/test: write into runs/<experiment>/<run name>/ (false: the "
                                     "trainer's paths as configured)")
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
            from fsseg.precision import set_float32_matmul

            sub = self.config.get("subcommand")
            setting = (self.config[sub] if sub else self.config).get("float32_matmul") or "auto"
            try:
                set_float32_matmul(setting, trainer.strategy.root_device)
            except ValueError as e:
                raise UsageError(f"--float32_matmul: {e}") from None
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

        # -- run folder and --ckpt_path ------------------------------------------------------------
        def _parse_ckpt_path(self) -> None:
            # Lightning calls this right after parsing: the run folder is found first (`--ckpt_path last`
            # and `--resume` name a run's checkpoint), then the model is rebuilt from the checkpoint, then
            # the new folder is named after the model and data actually used (fsseg.runs).
            self._run = None
            sub = self.config.get("subcommand")
            if not sub:
                return
            cfg = self.config[sub]
            req = self._run_request(sub, cfg)
            existing = None
            if req is not None:
                from fsseg.runs import resolve_run

                existing, cfg["ckpt_path"] = resolve_run(req)
            self._rebuild_model_from_checkpoint(sub, cfg)
            cfg = self.config[sub]
            if req is not None:
                from fsseg.runs import create_run, place_in_run, run_keys

                if existing is None:
                    req.keys = run_keys(cfg)
                    existing = create_run(req, weights=cfg.get("ckpt_path"))
                self._run = existing
                place_in_run(cfg.trainer, existing, sub)
                print(f"fsseg: run folder {existing.path}", file=sys.stderr)

        def _run_request(self, sub, cfg):
            """What the command line asks of the run folder; None when run folders are off."""
            if sub not in ("fit", "validate", "test"):
                return None
            if not cfg.get("run_folders", True):
                if cfg.get("run_name") or cfg.get("resume"):
                    raise UsageError("--run_name and --resume need run folders (drop run_folders: false)")
                return None
            from fsseg.runs import RunRequest, experiment_name, run_keys

            files = [str(c) for c in (cfg.get("config") or [])]
            return RunRequest(root=Path(cfg.trainer.get("default_root_dir") or "runs").absolute(),
                              experiment=experiment_name(files, cfg.get("experiment")), job=sub,
                              keys=run_keys(cfg), config_files=files, run_name=cfg.get("run_name"),
                              resume=cfg.get("resume"), ckpt_path=cfg.get("ckpt_path"))

        def _rebuild_model_from_checkpoint(self, sub, cfg) -> None:
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
            raw = getattr(self, "_raw_args", [])
            explicit = _explicit_model_args(raw)
            init_args = cfg.model.get("init_args") if cfg.get("model") is not None else None
            given = {k: init_args.get(k) for k in explicit if init_args is not None and k in init_args}
            if given.get("segmenter") and ckpt["hyper_parameters"].get("segmenter"):
                # per key, as the module's own arguments: what the command line gives wins, the rest
                # (e.g. the method) is the checkpoint's
                keys = _explicit_spec_keys(raw)
                given["segmenter"] = {**ckpt["hyper_parameters"]["segmenter"],
                                      **{k: v for k, v in dict(given["segmenter"]).items() if k in keys}}
            config_model = {k: init_args.get(k) for k in CHECKPOINT_WINS} if init_args is not None else {}
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
            cfg = self.config[sub]
            report_checkpoint_settings(ckpt_path, config_model, known, explicit, cfg, raw)

        def before_instantiate_classes(self) -> None:
            sub = self.config.get("subcommand")
            self._resolve_precision(sub)
            if not (self.config[sub] if sub else self.config).get("cpu_kernels", True):
                from fsseg.kernels import set_cpu_kernels_enabled

                set_cpu_kernels_enabled(False)
            if sub and self.config[sub].get("model") is not None:
                from fsseg.modules.checkpoints import resolve_official_weights

                resolve_official_weights(self.config[sub].model.get("init_args"))
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

        def after_instantiate_classes(self) -> None:
            super().after_instantiate_classes()
            # Lightning merges the data module's hparams into the model's for the loggers and stops at a
            # key both hold with two values (image_size when the data is loaded at another size); the
            # loggers get the whole resolved config instead (_start_run).
            if self.datamodule is not None and hasattr(self.datamodule, "_log_hyperparams"):
                self.datamodule._log_hyperparams = False

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

        def _start_run(self) -> None:
            import yaml

            from fsseg.run_records import start_run

            sub = self.subcommand
            config = yaml.safe_load(self._parser(sub).dump(self.config[sub], skip_validation=True))
            start_run(self.trainer, self.model, self.datamodule, self._run, config, sub,
                      self.config[sub].get("ckpt_path"))

        def before_fit(self) -> None:
            from fsseg.termination import exit_on_sigterm

            exit_on_sigterm(self.config[self.subcommand].get("sigterm_grace_s", 30.0))
            self._start_run()

        def after_fit(self) -> None:
            from fsseg.run_records import record_fit_end

            record_fit_end(self.trainer)
            if self.config[self.subcommand].get("test_after_fit"):
                from fsseg.run_records import record_test, resolved_weights, tested_weights_message

                callback = self.trainer.checkpoint_callback
                ckpt = "best" if getattr(callback, "best_model_path", "") else None
                if self.trainer.is_global_zero:
                    print(f"fsseg: {tested_weights_message(ckpt, callback)}", file=sys.stderr)
                self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
                record_test(self.trainer, self.model, self.datamodule, self._run, "fit+test",
                            resolved_weights(ckpt, callback))

        def before_validate(self) -> None:
            self._start_run()

        def before_test(self) -> None:
            self._start_run()

        def after_test(self) -> None:
            from fsseg.run_records import record_test

            record_test(self.trainer, self.model, self.datamodule, self._run, "test",
                        self.config[self.subcommand].get("ckpt_path"))

    return FssegCLI


def _given_on_command_line(raw: list[str], section: str, key: str) -> bool:
    pattern = re.compile(rf"^--{section}\.(?:init_args\.)?{key}(?:=|$)")
    return any(pattern.match(a) for a in raw)


def report_checkpoint_settings(ckpt_path, config_model: dict, ckpt_model: dict, explicit: set, cfg, raw: list) -> None:
    """Say which image size and model spec the run uses when the checkpoint's differ from the
    config's (the checkpoint's win unless given on the command line), and load the data at the model's
    image size unless ``--data.init_args.image_size`` is given."""
    for key in CHECKPOINT_WINS:
        was, now = config_model.get(key), ckpt_model.get(key)
        if key in explicit or was is None or now is None or was == now:
            continue
        print(f"fsseg: {ckpt_path} was trained with {key}={now}: using it (the config says {was}; "
              f"--model.init_args.{key} overrides)", file=sys.stderr)
    data_args = cfg.data.get("init_args") if cfg.get("data") is not None else None
    size = ckpt_model.get("image_size")
    if data_args is None or size is None or "image_size" not in data_args or data_args.get("image_size") == size:
        return
    if data_args.get("image_size") is None:  # the data module follows the model (predict)
        data_args["image_size"] = size
        return
    if _given_on_command_line(raw, "data", "image_size"):
        print(f"fsseg: the data loads at --data.init_args.image_size {data_args.get('image_size')} although the "
              f"model runs at {size}", file=sys.stderr)
        return
    print(f"fsseg: loading the data at the checkpoint's image_size {size} (the config says "
          f"{data_args.get('image_size')}; --data.init_args.image_size overrides)", file=sys.stderr)
    data_args["image_size"] = size


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
    from fsseg.runs import release_shared_run

    cli_class = _lightning_cli_class()
    _set_quiet_levels()
    try:
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
    finally:
        release_shared_run()
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
