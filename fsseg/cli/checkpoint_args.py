"""Which model settings a checkpoint decides over the config, and what the command line overrides
(``fsseg <cmd> --ckpt_path ...``: the model is rebuilt from the checkpoint)."""

from __future__ import annotations

import re
import sys

# Model settings a checkpoint decides (its weights were trained with them) unless given on the command line.
CHECKPOINT_WINS = ("segmenter", "image_size")


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


def _given_on_command_line(raw: list[str], section: str, key: str) -> bool:
    pattern = re.compile(rf"^--{section}\.(?:init_args\.)?{key}(?:=|$)")
    return any(pattern.match(a) for a in raw)


def report_checkpoint_settings(ckpt_path, config_model: dict, ckpt_model: dict, explicit: set, cfg, raw: list) -> None:
    """Say which image size and model spec the run uses when the checkpoint's differ from the
    config's (the checkpoint's win unless given on the command line), and load the data at the model's
    image size unless ``--data.init_args.image_size`` is given."""
    for key in CHECKPOINT_WINS:
        was, now = config_model.get(key), ckpt_model.get(key)
        if key == "segmenter" and now is not None:  # a config without a spec builds the module's default
            from fsseg.models.segmenters import segmenter_spec

            was = segmenter_spec(was)
        if key in explicit or was is None or now is None or was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict):  # a model spec: the keys that differ
            keys = [k for k in {**now, **was} if was.get(k) != now.get(k)]
            now, was = (", ".join(f"{k}={d.get(k)}" for k in keys) for d in (now, was))
            now, was = f"{key} {now}", f"{was}"
        else:
            now = f"{key}={now}"
        print(f"fsseg: {ckpt_path} was trained with {now}: using it (the config says {was}; "
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
