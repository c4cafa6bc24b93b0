"""Errors as the user sees them: a bad input or configuration is one line ``error: <message>`` (exit
2), with jsonargparse's nested reports unwrapped to the argument at fault; anything else is a bug."""

from __future__ import annotations

import re
import sys
from typing import Optional

# `FSSEG_DEBUG=1` (or `--debug`): show the traceback of a user error instead of its one line.
DEBUG_ENV = "FSSEG_DEBUG"
_UNION = "Does not validate against any of the Union subtypes"


class UsageError(ValueError):
    """A command used in a way that cannot give a meaningful result (the message says the fix)."""


def user_error_types() -> tuple:
    """Exceptions that mean bad input or configuration (one line, exit 2), not a bug."""
    types = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError]
    for mod, name in (("fsseg.models.weights", "WeightsError"), ("fsseg.modules.common", "NonFiniteLossError"),
                      ("fsseg.registry", "RegistryError"),
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


def is_user_error(exc: BaseException) -> bool:
    """``exc`` or an exception in its ``__cause__`` chain is bad input or configuration."""
    seen = set()
    e: Optional[BaseException] = exc
    types = user_error_types()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            return True
        e = e.__cause__
    return False


def user_facing(exc: BaseException) -> BaseException:
    """The exception whose message explains the problem: jsonargparse wraps an error raised while a
    class is instantiated in its "Does not validate against any of the Union subtypes" report."""
    e = exc
    while e.__cause__ is not None and (_UNION in str(e) or type(e).__name__ == "MisconfigurationException"):
        if any(t in str(e.__cause__) for t in ("Parser key", "Problem with given class_path", _UNION)):
            break  # a parse error: the report itself names the argument (unwrap_argument_error)
        e = e.__cause__
    return e
