"""The ``fsseg`` commands: LightningCLI's subcommands and the tools, each a ``module:function`` imported
only when its command runs (so ``fsseg --help`` loads neither torch nor Lightning)."""

from __future__ import annotations

import importlib

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


def tool_target(entry) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def tool_main(name: str):
    module, _, func = tool_target(TOOLS[name]).partition(":")
    return getattr(importlib.import_module(module), func or "main")
