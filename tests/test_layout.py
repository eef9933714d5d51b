"""The library's shape: small modules and functions, no import cycle, layers that only import downward."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from scoder_lib.core.config import REPO_ROOT
from scoder_lib.core.io import atomic_dir, write_text

LIB = REPO_ROOT / "scoder_lib"
MODULES = sorted(p for p in LIB.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Which subpackage may import which: each layer imports only the layers below it.
LAYERS = {
    "core": set(),
    "llm": {"core"},
    "sandbox": {"core"},
    "data": {"core"},
    "evaluation": {"core", "data", "llm", "sandbox"},
    "method": {"core", "data", "llm", "sandbox"},
    "pipeline": {"core", "data", "llm", "sandbox", "method", "evaluation"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Library modules imported by `path` (absolute `scoder_lib...` imports; `from pkg import mod` resolved)."""
    names = {_module_name(p) for p in MODULES}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scoder_lib"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in names else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("scoder_lib")}
    return out - {"scoder_lib"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_modules_and_functions_are_small(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}: {length} lines"


def test_no_import_cycle():
    graph = {_module_name(p): _imports(p) for p in MODULES}
    done: set[str] = set()

    def visit(mod: str, stack: list[str]) -> None:
        if mod in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(mod) :], mod]))
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            visit(dep, [*stack, mod])
        done.add(mod)

    for mod in graph:
        visit(mod, [])


def test_layers_import_only_downward():
    wrong = []
    for path in MODULES:
        parts = path.relative_to(LIB).parts
        if len(parts) < 2:
            continue
        layer = parts[0]
        for dep in _imports(path):
            target = dep.split(".")[1]
            if target != layer and target not in LAYERS[layer]:
                wrong.append(f"{path.relative_to(LIB)} imports {dep}")
    assert not wrong, wrong


def test_the_layer_rule_can_fail(tmp_path):
    """The checker itself: a core module importing the pipeline is caught."""
    bad = tmp_path / "x.py"
    bad.write_text("from scoder_lib.pipeline.stage import Stage\n")
    assert _imports(bad) == {"scoder_lib.pipeline.stage"}


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "report.html", "<html></html>")
        with atomic_dir(tmp_path / "model") as folder:
            (folder / "w.bin").write_bytes(b"0")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask
    assert (tmp_path / "model" / "w.bin").exists() and not list(tmp_path.glob(".model.*"))
