"""The method registry: a segmenter is a class (``FSDINO`` or a subclass) plus a builder registered here.

    @register_segmenter("compact", aliases=("BA+SVP+PCS",), student_init=exact_pcs_prior)
    def compact(**network) -> FSDINO: ...

A LightningModule takes one model spec, ``{"name": <registered name>, <that builder's arguments>}``
(``--model.init_args.segmenter.name compact --model.init_args.segmenter.decoder_dim 32``), checked
against the builder's signature by ``check_spec`` (an unknown key is a one-line error naming it and the
flag). The run's input size and weight files (``image_size``, ``dinov2_checkpoint``, ``sam_checkpoint``,
``adapter_checkpoint``) are the module's own arguments: every builder receives them from there.

A registration declares how the support-free student (``fsseg.models.specialized``) starts from the
trained method (``student_init``); without one the method is refused for specialisation. A name
``package.module:name`` imports ``package.module`` first (a method defined outside fsseg, or in a test).
Built-in methods and presets: ``fsseg.models.build``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from fsseg.registry import Registry

SPEC_FLAG = "--model.init_args.segmenter"
SEGMENTERS = Registry("segmenter", f"{SPEC_FLAG}.name")

# what the LightningModule gives every builder (its own arguments, not the spec's)
MODULE_ARGS = ("image_size", "dinov2_checkpoint", "sam_checkpoint", "adapter_checkpoint")


class SpecError(ValueError):
    """A model spec that does not fit its builder (one line, naming the key and the flag)."""


@dataclass(frozen=True)
class Segmenter:
    """A registered method: ``builder(**spec args, **module args) -> FSDINO``; ``student_init(layer,
    teacher, feats, encodings)`` sets the support-free student's prior head (None: not
    specialisable); ``paper_row``: its row in the paper's ablation (Table 4, plus UINO-FSS), which
    puts it in the ablation sweep and the benchmarks; ``extends``: the function a builder's
    ``**kwargs`` go to (their names are checked there); ``preset_of``: for a preset (a size of any
    method, e.g. ``tiny``), the argument that names the method it builds, and ``preset`` the
    arguments it gives that method."""

    name: str
    builder: Callable[..., Any]
    student_init: Optional[Callable[..., None]] = None
    paper_row: Optional[str] = None
    extends: Optional[Callable[..., Any]] = None
    preset_of: Optional[str] = None
    preset: Mapping[str, Any] = field(default_factory=dict)

    def method(self, args: Mapping[str, Any]) -> "Segmenter":
        """The method this entry builds with ``args`` (itself, or a preset's method)."""
        if self.preset_of is None:
            return self
        default = inspect.signature(self.builder).parameters[self.preset_of].default
        return segmenter(str(args.get(self.preset_of, default))).method(args)


def register_segmenter(name: str, aliases: Sequence[str] = (), student_init: Optional[Callable[..., None]] = None,
                       paper_row: Optional[str] = None, extends: Optional[Callable[..., Any]] = None,
                       preset_of: Optional[str] = None, preset: Optional[Mapping[str, Any]] = None):
    """Decorator registering a builder under ``name`` (and ``aliases``); returns the builder unchanged."""

    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        entry = Segmenter(name, builder, student_init, paper_row, extends, preset_of, dict(preset or {}))
        SEGMENTERS.register(name, aliases=aliases)(entry)
        return builder

    return add


def segmenter(name: str) -> Segmenter:
    return SEGMENTERS.get(name)


def paper_methods() -> list[str]:
    """The methods of the paper's ablation, in registration order (the sweep and benchmark lists)."""
    return SEGMENTERS.names(where=lambda s: s.paper_row is not None)


def method_name(spec: Any) -> str:
    """The registered method a spec builds (a preset's method), e.g. for run names."""
    name, args = split_spec(spec)
    return segmenter(name).method(args).name


def _accepted(fn: Callable[..., Any], extends: Optional[Callable[..., Any]]) -> tuple[dict, bool]:
    """Parameters ``fn`` takes by name (following ``**kwargs`` into ``extends``), and whether it takes any."""
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    open_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    if open_kw and extends is not None:
        more, open_kw = _accepted(extends, getattr(extends, "extends", None))
        params = {**more, **params}
    return params, open_kw


DEFAULT_SEGMENTER = {"name": "full"}


def segmenter_spec(segmenter: Optional[Mapping[str, Any]]) -> dict:
    """A module's spec as given (a copy), ``DEFAULT_SEGMENTER`` when none."""
    return dict(segmenter) if segmenter else dict(DEFAULT_SEGMENTER)


def split_spec(spec: Any) -> tuple[str, dict]:
    """``(name, arguments)`` of a spec (a mapping with ``name``, or a bare name)."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, Mapping) or not spec.get("name"):
        raise SpecError(f"{SPEC_FLAG}: a model spec is a mapping with a 'name' (one of {', '.join(SEGMENTERS)}), "
                        f"got {spec!r}")
    args = dict(spec)
    return str(args.pop("name")), args


def check_spec(spec: Any, flag: str = SPEC_FLAG) -> tuple[Segmenter, dict]:
    """The registered method of ``spec`` and its arguments, checked against its builder's signature:
    unknown keys, keys the module gives (``MODULE_ARGS``) and wrongly typed values are one-line errors."""
    name, args = split_spec(spec)
    entry = segmenter(name)
    params, open_kw = _accepted(entry.builder, entry.extends)
    for key in args:
        if key in MODULE_ARGS:
            raise SpecError(f"{flag}.{key}: {key} is the module's argument (--model.init_args.{key}), not the "
                            f"segmenter's")
        if key not in params and not open_kw:
            takes = ", ".join(k for k in params if k not in MODULE_ARGS)
            raise SpecError(f"{flag}.{key}: unknown key for segmenter {name!r} (it takes: {takes})")
    _check_types(entry, params, args, flag)
    return entry, args


def _check_types(entry: Segmenter, params: dict, args: dict, flag: str) -> None:
    """Types of ``args`` against the annotations, through jsonargparse (the CLI's own checks)."""
    from jsonargparse import ArgumentParser

    fns = [entry.builder] + ([entry.extends] if entry.extends is not None else [])
    for fn in fns:
        own = [k for k in inspect.signature(fn).parameters if k in args]
        if not own:
            continue
        parser = ArgumentParser(exit_on_error=False)
        skip = {k for k, p in inspect.signature(fn).parameters.items()
                if k not in own and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        parser.add_function_arguments(fn, skip=skip, fail_untyped=False)
        try:
            parser.parse_object({k: args[k] for k in own})
        except Exception as e:  # noqa: BLE001 - jsonargparse's ArgumentError, reworded to one line
            text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            raise SpecError(f"{flag}: segmenter {entry.name!r}: {text}") from None


def build_segmenter(spec: Any, flag: str = SPEC_FLAG, **module_args):
    """The model of ``spec`` (checked by ``check_spec``), built with the module's ``module_args``;
    it records its registered method (``method``) and that method's student initialiser (``student_init``)."""
    entry, args = check_spec(spec, flag)
    model = entry.builder(**args, **module_args)
    method = entry.method(args)
    model.method = method.name
    model.student_init = method.student_init
    return model


def refuse_specialisation(spec: Any) -> None:
    """One-line error when the method of ``spec`` declares no student initialiser."""
    name, args = split_spec(spec)
    entry = segmenter(name).method(args)
    if entry.student_init is None:
        raise SpecError(f"segmenter {entry.name!r} cannot be specialised: it declares no support-free student "
                        f"initialisation (register it with student_init=...)")


def spec_value(spec: Any, key: str) -> Any:
    """What the model of ``spec`` is built with for ``key`` (e.g. ``backbone``): the spec's value, a
    preset's, or the default of the method's builder; None when the method does not take it."""
    name, args = split_spec(spec)
    entry = segmenter(name)
    if key in args:
        return args[key]
    if key in entry.preset:
        return entry.preset[key]
    method = entry.method(args)
    param = _accepted(method.builder, method.extends)[0].get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def takes(name: str, key: str) -> bool:
    """Whether the builder of method ``name`` takes the argument ``key``."""
    entry = segmenter(name)
    params, open_kw = _accepted(entry.builder, entry.extends)
    return key in params
