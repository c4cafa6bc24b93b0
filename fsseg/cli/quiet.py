"""Quiet by default: Lightning's information lines and tips, framework deprecation notices and the
CUDA-toolkit probe are not shown, and each warning is one line ``warning: <message>``; ``--verbose``
shows everything as the frameworks print it."""

from __future__ import annotations

import os
import sys

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


def set_quiet_levels() -> None:
    # Lightning sets its loggers to INFO when imported: applied again once it is
    import logging

    if _QUIET["on"]:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)


def quiet_frameworks() -> None:
    """Applied by ``fsseg`` unless ``--verbose`` is given (see the module docstring)."""
    import warnings

    _QUIET["on"] = True
    set_quiet_levels()
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    warnings.showwarning = _one_line_warning
