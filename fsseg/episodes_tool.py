"""``fsseg episodes``: write the episode list of a data-module config as JSON.

    fsseg episodes --data DATA.yaml --split test --output FILE.json

``DATA.yaml`` holds ``class_path`` and ``init_args`` as under ``data:`` in a run config (a full run
config with a ``data:`` section works too). Only the split lists (and FSS-1000's class folders) are
read, no image is opened, so lists can be written before the images are downloaded. The file is in
the schema of the reference episode files and ``data.episodes_file: FILE.json`` evaluates on it.
For ``BudgetSpecializationDataModule`` (DistillFSS's protocol) it writes the selected supports per
class and the train / test ids instead (``selection_json``; ``--split`` is not used: every test image
is scored once).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import List, Optional

import yaml


def build_datamodule(config_path: str):
    with open(config_path) as f:
        cfg = yaml.safe_load(f) or {}
    if "data" in cfg and isinstance(cfg["data"], dict):
        cfg = cfg["data"]
    class_path = cfg.get("class_path", "data_modules.EpisodicDataModule")
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise SystemExit(f"{config_path}: cannot import class_path {class_path!r} ({e})") from e
    return cls(**(cfg.get("init_args") or {}))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fsseg episodes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data-module YAML (class_path + init_args)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    dm = build_datamodule(args.data)
    if hasattr(dm, "selection_json"):  # DistillFSS's budget protocol: supports + splits, not episodes
        data = dm.selection_json()
        with open(args.output, "w") as f:
            json.dump(data, f, indent=1)
        n_sup = len({k for v in data["supports"].values() for k in v})
        print(f"{args.output}: {n_sup} support image(s) for {len(data['class_names'])} class(es), "
              f"{len(data['train'])} train / {len(data['test'])} test ({data['benchmark']}, budget {data['budget']})",
              file=sys.stderr)
        return 0
    if not hasattr(dm, "episodes_json"):
        raise SystemExit(f"{args.data}: {type(dm).__name__} has no episode list to write")
    data = dm.episodes_json(args.split)
    with open(args.output, "w") as f:
        json.dump(data, f, indent=1)
    print(f"{args.output}: {data['n_episodes']} {args.split} episodes ({data['benchmark']}, protocol "
          f"{data['protocol']}, fold {data['fold']}, {data['shot']}-shot)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
