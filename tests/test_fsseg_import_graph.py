"""Imports point one way in ``bench/``, ``fsseg/cli/`` and ``fsseg/export/``: no cycles (imports inside functions
counted too), ``bench.run`` imported only by the entry point ``python -m bench``, every bench
module importable alone, and ``fsseg --help`` (and a tool's) answered without torch or Lightning."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict:
    """Module name -> source file, for every .py file of ``package`` (a folder under the repo)."""
    return {_module_name(p): p for p in sorted((REPO / package.replace(".", "/")).rglob("*.py"))}


def _imports(path: Path, known: set) -> set:
    """The modules of ``known`` that ``path`` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph(package: str) -> dict:
    mods = _modules(package)
    # a package's __init__ is imported with any of its modules: not an edge of the module's own
    return {m: {d for d in _imports(p, set(mods)) if d != m and not m.startswith(d + ".")} for m, p in mods.items()}


def _cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state: dict = {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d, stack + [d])
                if found:
                    return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m, [m])
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["bench", "fsseg.cli", "fsseg.export"])
def test_no_import_cycle(package):
    assert _cycle(_graph(package)) is None


def test_only_the_entry_point_imports_bench_run():
    graph = _graph("bench")
    assert {m for m, deps in graph.items() if "bench.run" in deps} == {"bench.__main__"}


def test_every_bench_module_imports_alone():
    for module in _modules("bench"):
        if module == "bench.__main__":
            continue
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True)


@pytest.mark.parametrize("argv", [["--help"], ["params", "--help"], ["export", "--help"]])
def test_help_imports_neither_torch_nor_lightning(argv):
    code = ("import sys, contextlib, io\n"
            "from fsseg.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            f"        main({argv!r})\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), e.code\n"
            "assert out.getvalue().startswith('usage: fsseg'), out.getvalue()\n"
            "heavy = sorted(m for m in ('torch', 'lightning') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
