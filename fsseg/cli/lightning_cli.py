"""``FssegCLI``: LightningCLI with fsseg's options (run folders, precision, predict's output), the
model rebuilt from ``--ckpt_path``, and checkpoints written atomically.

With ``--ckpt_path`` the model is rebuilt from the checkpoint (its architecture, trained weights and
frozen-file records, ``fsseg.modules.checkpoints``); ``--model.*`` arguments given on the command
line override the checkpoint's values (e.g. a moved ``--model.init_args.dinov2_checkpoint``).
fit/validate/test write one folder per run, ``runs/<experiment>/<run name>/`` (``fsseg.runs``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

from lightning.pytorch.cli import LightningCLI

from fsseg.cli.checkpoint_args import (
    CHECKPOINT_WINS,
    _explicit_model_args,
    _explicit_spec_keys,
    report_checkpoint_settings,
)
from fsseg.cli.errors import UsageError
from fsseg.cli.predict_options import configure_predict

# --ckpt_path values Lightning resolves itself (no file of that name needed).
CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


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
        if sub == "predict":
            configure_predict(self.config[sub])

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
