"""Read columns of a pandas ``DataFrame`` pickle without executing anything from the file.

``pickle.load`` (and ``pandas.read_pickle``) calls whatever callables the stream names, so a pickle
from the internet can run arbitrary code; an ``Unpickler.find_class`` allow-list still calls the
allowed reconstructors with attacker-chosen arguments. Here nothing from the stream is ever called:
``pickletools.genops`` only parses the opcodes, a small stack machine (``_parse``) builds an inert
tree in which every imported name is a ``Ref(module, name)`` and every call / ``NEWOBJ`` / ``BUILD``
is a ``Node`` that records its target, arguments and state. ``read_dataframe_columns`` then
recognises, by name, the few shapes a pandas-written frame of numbers and numpy arrays is made of
(numpy ``_reconstruct`` / ``_frombuffer`` / ``scalar``, ``dtype``, pandas ``BlockManager`` in its
``__getstate__`` ``(axes, values, items, {"0.14.1": ...})`` and its later ``BlockManager(blocks, axes)`` reduction, ``Index`` /
``RangeIndex``, ``StringArray``, ``slice``) and rebuilds the arrays itself with ``np.frombuffer`` on
plain numeric dtypes; anything else is an error naming it. Out-of-band buffers, persistent ids,
``INST`` / ``OBJ`` and extension registries are refused.
"""

from __future__ import annotations

import pickletools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import numpy as np


class UnsafePickleError(ValueError):
    pass


@dataclass(frozen=True)
class Ref:
    """A name the stream imports (never resolved)."""
    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Node:
    """``target(*args)`` (``REDUCE``) or ``target.__new__(target, *args)`` (``NEWOBJ``), never run;
    ``state`` is what ``BUILD`` would pass to ``__setstate__``."""
    target: Any
    args: tuple
    kwargs: dict = field(default_factory=dict)
    state: Any = None


_MARK = object()
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # pickle's fix_imports for protocols 0-2


def _parse(data: bytes, path: str) -> Any:
    stack: List[Any] = []
    memo: Dict[int, Any] = {}

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise UnsafePickleError(f"{path}: malformed pickle (no MARK)")

    for op, arg, pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name == "MARK":
            stack.append(_MARK)
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                      "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "APPEND":
            v = stack.pop()
            stack[-1].append(v)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            items = pop_mark()
            stack.append({_key(items[i], path): items[i + 1] for i in range(0, len(items), 2)})
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][_key(k, path)] = v
        elif name == "SETITEMS":
            items = pop_mark()
            for i in range(0, len(items), 2):
                stack[-1][_key(items[i], path)] = items[i + 1]
        elif name == "EMPTY_SET":
            stack.append([])
        elif name == "ADDITEMS":
            stack[-1].extend(pop_mark())
        elif name == "FROZENSET":
            stack.append(tuple(pop_mark()))
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[int(arg)])
        elif name == "GLOBAL":
            module, _, qual = arg.partition(" ")
            stack.append(Ref(_PY2_MODULES.get(module, module), qual))
        elif name == "STACK_GLOBAL":
            qual, module = stack.pop(), stack.pop()
            stack.append(Ref(_PY2_MODULES.get(str(module), str(module)), str(qual)))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if _is(func, "copyreg._reconstructor") and len(args) == 3 and \
                    _is(args[1], "builtins.object") and args[2] is None:
                stack.append(Node(args[0], ()))  # protocols 0-1: object.__new__(cls), as NEWOBJ
            else:
                stack.append(Node(func, tuple(args)))
        elif name == "NEWOBJ":
            args = stack.pop()
            stack.append(Node(stack.pop(), tuple(args)))
        elif name == "NEWOBJ_EX":
            kwargs, args = stack.pop(), stack.pop()
            stack.append(Node(stack.pop(), tuple(args), dict(kwargs)))
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if not isinstance(obj, Node):
                raise UnsafePickleError(f"{path}: BUILD on a {type(obj).__name__} at byte {pos}")
            obj.state = state
        else:  # INST, OBJ, PERSID, BINPERSID, EXT*, NEXT_BUFFER, READONLY_BUFFER
            raise UnsafePickleError(f"{path}: pickle opcode {name} at byte {pos} is not supported by the safe reader")
    if len(stack) != 1:
        raise UnsafePickleError(f"{path}: malformed pickle ({len(stack)} items left on the stack)")
    return stack[0]


def _key(k: Any, path: str) -> Any:
    if isinstance(k, (str, int, float, bool, bytes, tuple)) or k is None:
        return k
    raise UnsafePickleError(f"{path}: a dict key of type {type(k).__name__} is not supported")


def _is(ref: Any, *qualnames: str) -> bool:
    return isinstance(ref, Ref) and ref.qualname in qualnames


_NP_MODULES = ("numpy.core", "numpy._core")
_RECONSTRUCT = tuple(f"{m}.multiarray._reconstruct" for m in _NP_MODULES)
_FROMBUFFER = tuple(f"{m}.numeric._frombuffer" for m in _NP_MODULES)
_SCALAR = tuple(f"{m}.multiarray.scalar" for m in _NP_MODULES)
_PLAIN_KINDS = set("biuf")  # bool, signed / unsigned integers, floats: no Python objects inside


class _Rebuilder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.done: Dict[int, Any] = {}

    def fail(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.path}: {what} is not supported by the safe pickle reader")

    def dtype(self, node: Any) -> np.dtype:
        if not (isinstance(node, Node) and _is(node.target, "numpy.dtype")):
            raise self.fail(f"dtype {node!r}")
        code = node.args[0] if node.args else None
        if not isinstance(code, str) or len(code) > 4 or not code[:1].isalpha():
            raise self.fail(f"dtype code {code!r}")
        if code[:1] == "O" or code[:1] == "S" or code[:1] == "U" or code[:1] == "V":
            if code[:1] != "O":
                raise self.fail(f"dtype code {code!r}")
            return np.dtype(object)
        dt = np.dtype(code)
        if dt.kind not in _PLAIN_KINDS:
            raise self.fail(f"dtype {dt}")
        state = node.state
        if isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">"):
            dt = dt.newbyteorder(state[1])
        if isinstance(state, tuple) and len(state) >= 4 and state[3] is not None:
            raise self.fail("a structured dtype")
        return dt

    def value(self, node: Any) -> Any:
        """Plain data as is; numpy arrays / scalars and pandas string arrays rebuilt; else an error."""
        if isinstance(node, (int, float, str, bool, bytes, bytearray)) or node is None:
            return node
        if isinstance(node, (list, tuple)):
            return type(node)(self.value(x) for x in node)
        if isinstance(node, dict):
            return {k: self.value(v) for k, v in node.items()}
        if not isinstance(node, Node):
            raise self.fail(f"{node!r}")
        if id(node) in self.done:
            return self.done[id(node)]
        out = self._node(node)
        self.done[id(node)] = out
        return out

    def _node(self, node: Node) -> Any:
        t = node.target
        if _is(t, *_RECONSTRUCT):
            if not (node.args and _is(node.args[0], "numpy.ndarray")):
                raise self.fail(f"_reconstruct of {node.args[:1]!r}")
            st = node.state
            if not (isinstance(st, tuple) and len(st) == 5):
                raise self.fail("an ndarray state")
            _, shape, dt, fortran, raw = st
            dt = self.dtype(dt)
            shape = tuple(int(s) for s in shape)
            order = "F" if fortran else "C"
            if dt == np.dtype(object):
                items = [self.value(x) for x in raw]
                arr = np.empty(len(items), dtype=object)
                for i, x in enumerate(items):
                    arr[i] = x
                return arr.reshape(shape, order=order)
            return _from_bytes(raw, dt, shape, order, self)
        if _is(t, *_FROMBUFFER):
            buf, dt, shape, order = node.args
            return _from_bytes(buf, self.dtype(dt), tuple(int(s) for s in shape), order, self)
        if _is(t, *_SCALAR):
            dt, raw = node.args
            dt = self.dtype(dt)
            if dt == np.dtype(object):
                raise self.fail("an object numpy scalar")
            return _from_bytes(raw, dt, (), "C", self)[()]
        if _is(t, "_codecs.encode") and len(node.args) == 2 and node.args[1] in ("latin1", "latin-1") \
                and isinstance(node.args[0], str):  # protocols 0-2 write bytes as encode(text, latin1)
            return node.args[0].encode("latin-1")
        if _is(t, "builtins.slice"):
            return slice(*[self.value(a) for a in node.args])
        if _is(t, "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked"):
            cls = node.args[0] if node.args else None
            if not _is(cls, "pandas.arrays.StringArray", "pandas.core.arrays.string_.StringArray"):
                raise self.fail(f"pandas array {cls!r}")
            st = node.state
            return self.value(st[1] if isinstance(st, tuple) else st)
        raise self.fail(f"{t.qualname if isinstance(t, Ref) else t!r}")

    def index(self, node: Any) -> list:
        """A pandas ``Index`` / ``RangeIndex`` as a list of labels."""
        if isinstance(node, Node) and _is(node.target, "pandas.core.indexes.base._new_Index"):
            cls, d = node.args[0], node.args[1]
            if not isinstance(d, dict):
                raise self.fail("an index state")
            if _is(cls, "pandas.core.indexes.range.RangeIndex", "pandas.RangeIndex"):
                return list(range(int(d.get("start", 0)), int(d["stop"]), int(d.get("step", 1))))
            if isinstance(cls, Ref) and (cls.module == "pandas" or cls.module.startswith("pandas.core.indexes.")) and \
                    cls.name in ("Index", "Int64Index", "UInt64Index", "Float64Index", "NumericIndex"):
                return [x.item() if isinstance(x, np.generic) else x for x in np.asarray(self.value(d["data"])).tolist()]
            raise self.fail(f"index type {cls!r}")
        raise self.fail(f"index {node!r}")


def _from_bytes(raw: Any, dt: np.dtype, shape: tuple, order: str, rb: _Rebuilder) -> np.ndarray:
    if isinstance(raw, Node):
        raw = rb.value(raw)
    if isinstance(raw, str):  # protocol 0-2 arrays: latin-1 text of the bytes
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)):
        raise rb.fail(f"array data of type {type(raw).__name__}")
    n = int(np.prod(shape)) if shape else 1
    if len(raw) != n * dt.itemsize:
        raise UnsafePickleError(f"{rb.path}: array of shape {shape} {dt} holds {len(raw)} bytes")
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order).copy()


def _blocks(mgr: Node, rb: _Rebuilder):
    """``(column labels, row labels, [(values node, column positions)])`` of a ``BlockManager``."""
    st = mgr.state
    if st is None and len(mgr.args) == 2:
        st = mgr.args  # pandas >= 2.1 reduces the manager to BlockManager(blocks, axes)
    if isinstance(st, tuple) and len(st) == 4 and isinstance(st[3], dict) and "0.14.1" in st[3]:
        extra = st[3]["0.14.1"]  # pandas 0.14.1 - 2.0 BlockManager.__getstate__
        axes = extra["axes"]
        blocks = [(b["values"], b["mgr_locs"]) for b in extra["blocks"]]
    elif isinstance(st, tuple) and len(st) == 2 and isinstance(st[0], (tuple, list)):
        blocks_nodes, axes = st  # blocks via _unpickle_block(values, placement, ndim)
        blocks = []
        for b in blocks_nodes:
            if not (isinstance(b, Node) and _is(b.target, "pandas._libs.internals._unpickle_block")):
                raise rb.fail(f"block {b!r}")
            blocks.append((b.args[0], b.args[1]))
    else:
        raise rb.fail("this BlockManager state")
    columns, rows = rb.index(axes[0]), rb.index(axes[1])
    out = []
    for values, locs in blocks:
        locs = rb.value(locs)
        if isinstance(locs, Node) or (not isinstance(locs, slice) and not isinstance(locs, np.ndarray)):
            if isinstance(locs, Node) and _is(locs.target, "pandas._libs.internals.BlockPlacement"):
                locs = rb.value(locs.args[0])
            else:
                raise rb.fail(f"block placement {locs!r}")
        positions = list(range(len(columns)))[locs] if isinstance(locs, slice) else [int(i) for i in locs]
        out.append((values, positions))
    return columns, rows, out


def read_dataframe_columns(path: str, wanted: Sequence[str]) -> Dict[str, Any]:
    """``{"columns": [labels], "index": [row labels], <name>: [one value per row] for name in wanted}``
    from a pandas ``to_pickle`` file, read without running any code from it (module docstring)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        root = _parse(data, path)
    except (ValueError, KeyError, IndexError, TypeError, EOFError) as e:
        if isinstance(e, UnsafePickleError):
            raise
        raise UnsafePickleError(f"{path}: not a readable pickle ({e})") from e
    rb = _Rebuilder(path)
    if not (isinstance(root, Node) and _is(root.target, "pandas.DataFrame", "pandas.core.frame.DataFrame")):
        raise rb.fail(f"a top-level {root.target.qualname if isinstance(root, Node) and isinstance(root.target, Ref) else type(root).__name__}")
    st = root.state
    mgr = st.get("_mgr") if isinstance(st, dict) else None
    if mgr is None and isinstance(st, dict):
        mgr = st.get("_data")  # pandas < 1.1 names the manager _data
    if not (isinstance(mgr, Node) and _is(mgr.target, "pandas.core.internals.managers.BlockManager",
                                          "pandas.core.internals.BlockManager")):
        raise rb.fail("a DataFrame without a BlockManager")
    columns, rows, blocks = _blocks(mgr, rb)
    out: Dict[str, Any] = {"columns": columns, "index": rows}
    for name in wanted:
        if columns.count(name) != 1:
            raise UnsafePickleError(f"{path}: expected one column {name!r}, found columns {columns}")
        pos = columns.index(name)
        for values, positions in blocks:
            if pos in positions:
                arr = rb.value(values)
                if not isinstance(arr, np.ndarray):
                    raise rb.fail(f"column {name!r} of type {type(arr).__name__}")
                arr = arr.reshape(len(positions), -1) if arr.ndim == 2 else arr[None]
                col = arr[positions.index(pos)]
                if len(col) != len(rows):
                    raise UnsafePickleError(f"{path}: column {name!r} has {len(col)} values for {len(rows)} rows")
                out[name] = list(col)
                break
    return out


__all__ = ["read_dataframe_columns", "UnsafePickleError", "Ref", "Node"]
