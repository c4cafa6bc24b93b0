"""The ``fsseg`` command line: LightningCLI (``fit|validate|test|predict``) plus a few tools.

    fsseg fit --config lightning_configs/distill_518.yaml
    fsseg test --config lightning_configs/fewshot/coco20i_fold0_1shot.yaml --ckpt_path runs/.../best.ckpt
    fsseg predict --config lightning_configs/predict.yaml --ckpt_path ... --data.support_dir s/ --data.query_dir q/
    fsseg params [--backbone dinov2_vitb14]      parameter table of every variant
    fsseg export --ckpt_path ... --support_dir s/ --output_dir export/     ONNX + safetensors
    fsseg demo-ui [--ckpt_path ...]              Gradio web demo (pip install 'fsseg[demo]')

The model class and the data module are chosen in the YAML (``class_path``); ``--print_config``
shows every default. The config is saved into each run's folder (overwritten when a later
``fsseg test`` runs in the same folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

TOOLS = {
    "params": "fsseg.models.__main__:main",
    "export": "fsseg.export:main",
    "demo-ui": "fsseg.webui:main",
    "episodes": "fsseg.episodes_tool:main",
    "davis": "fsseg.video:main",
    "davis-eval": "fsseg.davis_eval:main",
    "prepare": "fsseg.prepare:main",
}


class FssegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After `fit`, run `test` with the best checkpoint (ablation sweeps).")
        parser.set_defaults({
            "model": {"class_path": "fsseg.modules.FewShotModule"},
            "data": {"class_path": "data_modules.EpisodicDataModule"},
        })

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
        # argument after add_arguments_to_parser, so its default is set here.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments.get(subcommand, ()):
            parser.set_defaults({"weights_only": True})
        return parser

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


REPO_CONFIGS = Path(__file__).resolve().parent.parent / "lightning_configs"


def run_cli(args: list[str] | None = None, run: bool = True) -> FssegCLI:
    # `fsseg predict --ckpt_path ... --data.support_dir s/ --data.query_dir q/` works without --config:
    # the predict subcommand starts from lightning_configs/predict.yaml when it is there.
    predict_cfg = REPO_CONFIGS / "predict.yaml"
    parser_kwargs = {"predict": {"default_config_files": [str(predict_cfg)]}} if predict_cfg.exists() else {}
    cli = FssegCLI(
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


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        module, func = TOOLS[args[0]].split(":")
        import importlib

        return getattr(importlib.import_module(module), func)(args[1:])
    run_cli(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
