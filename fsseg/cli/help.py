"""``fsseg --help``: every command with one line, read without importing the commands' modules."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Optional

from fsseg.cli.commands import SUBCOMMANDS, TOOLS, tool_target
from fsseg.cli.errors import DEBUG_ENV


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
    path = _module_file(tool_target(entry).split(":")[0])
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
