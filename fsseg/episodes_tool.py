"""``fsseg episodes``: write the episode list of a data-module config as JSON.

    fsseg episodes --data DATA.yaml --split test --output FILE.json [--data.init_args.fold 2 ...]

``DATA.yaml`` holds ``class_path`` and ``init_args`` as under ``data:`` in a run config (a full run
config with a ``data:`` section works too); ``--data.init_args.KEY VALUE`` overrides an argument as in
every other command. Only the split lists (and FSS-1000's class folders) are
read, no image is opened, so lists can be written before the images are downloaded. The file is in
the schema of the reference episode files and ``data.episodes_file: FILE.json`` evaluates on it.
For ``BudgetSpecializationDataModule`` (DistillFSS's protocol) it writes the selected supports per
class and the train / test ids instead (``selection_json``; ``--split`` is not used: every test image
is scored once).
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import yaml


def _data_section(path: str) -> dict:
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise SystemExit(f"{path}: expected a YAML mapping (class_path + init_args, or a run config with data:)")
    return cfg["data"] if isinstance(cfg.get("data"), dict) else cfg


def build_parser():
    from jsonargparse import ArgumentParser
    from lightning import LightningDataModule

    parser = ArgumentParser(prog="fsseg episodes", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True,
                                  help="data-module YAML (class_path + init_args, or a run config with data:); "
                                       "--data.init_args.KEY VALUE overrides one argument")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--output", required=True, help="JSON file to write")
    return parser


def _expand_data_files(argv: List[str]) -> List[str]:
    """``--data FILE.yaml`` (a data block or a whole run config) -> ``--data <its data block>``."""
    out = list(argv)
    for i, a in enumerate(out):
        value = a.split("=", 1)[1] if a.startswith("--data=") else (out[i + 1] if a == "--data" and i + 1 < len(out) else None)
        if value is not None and value.endswith((".yaml", ".yml")):
            section = _data_section(value)
            section.setdefault("class_path", "data_modules.EpisodicDataModule")
            if a == "--data":
                out[i + 1] = json.dumps(section)
            else:
                out[i] = "--data=" + json.dumps(section)
    return out


def build_datamodule(argv: List[str]):
    from jsonargparse import ArgumentError

    parser = build_parser()
    try:
        cfg = parser.parse_args(_expand_data_files(argv))
        init = parser.instantiate_classes(cfg)
    except ArgumentError as e:
        raise SystemExit(f"fsseg episodes: {e}") from None
    return init.data, cfg


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        build_parser().print_help()
        return 0
    dm, cfg = build_datamodule(args)
    if hasattr(dm, "selection_json"):  # DistillFSS's budget protocol: supports + splits, not episodes
        data = dm.selection_json()
        with open(cfg.output, "w") as f:
            json.dump(data, f, indent=1)
        n_sup = len({k for v in data["supports"].values() for k in v})
        print(f"{cfg.output}: {n_sup} support image(s) for {len(data['class_names'])} class(es), "
              f"{len(data['train'])} train / {len(data['test'])} test ({data['benchmark']}, budget {data['budget']})",
              file=sys.stderr)
        return 0
    if not hasattr(dm, "episodes_json"):
        raise SystemExit(f"fsseg episodes: {type(dm).__name__} has no episode list to write")
    data = dm.episodes_json(cfg.split)
    with open(cfg.output, "w") as f:
        json.dump(data, f, indent=1)
    print(f"{cfg.output}: {data['n_episodes']} {cfg.split} episodes ({data['benchmark']}, protocol "
          f"{data['protocol']}, fold {data['fold']}, {data['shot']}-shot)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
