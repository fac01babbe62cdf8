"""Static checks of the package's shape (ast only, nothing imported): no import cycle among
alsx modules, no module over the line limit, no private name imported across modules, and
lower layers never import higher ones.

Layers, low to high: config <- data (webgraph beside data) <- core <- eval/serve <- model <- cli.
Module-level and function-level imports both count: a lazy import still ties two modules.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "alsx"
MAX_LINES = 400

# Layer of each top-level module or package of alsx (higher numbers may import lower ones).
# collectives / distributed (multi-process plumbing, no alsx imports but each other) sit beside
# config.  SHARED modules (errors, callbacks, units) are importable by every layer and import
# no other alsx module themselves (checked below).
LAYERS = {
    "config": 0,
    "collectives": 0,
    "distributed": 0,
    "compile_cache": 0,
    "data": 1,
    "webgraph": 1,
    "core": 2,
    "plan": 2,
    "checkpoint": 2,
    "checkpoint_files": 2,
    "eval": 3,
    "serve": 3,
    "folder": 3,
    "train": 4,
    "model": 4,
    "params": 4,
    "cli": 5,
    "tune": 5,
    "validation": 5,
}
SHARED = {"errors", "callbacks", "units", "__init__"}
# webgraph sits beside data, except its training front: webgraph/train.py trains and evaluates a
# dataset folder (beside alsx.train and the estimator) and webgraph/cli.py registers commands.
MODULE_LAYERS = {"alsx.webgraph.train": 4, "alsx.webgraph.cli": 5, "alsx.webgraph": 1}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = modules()


def resolve(name: str) -> str | None:
    """The alsx module that ``import name`` loads (a name inside a module -> the module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(mod: str) -> list[tuple[str, list[str], int]]:
    """(target module, imported names, line) for every alsx import in ``mod`` (any depth)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("alsx"):
                    t = resolve(a.name)
                    if t:
                        out.append((t, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("alsx"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                t = sub if sub in MODULES else resolve(base)
                if t:
                    out.append((t, [] if sub in MODULES else [a.name], node.lineno))
    return [(t, names, line) for t, names, line in out if t != mod]


GRAPH = {m: imports(m) for m in MODULES}


def layer(mod: str) -> int | None:
    for name in (mod, mod.rpartition(".")[0]):
        if name in MODULE_LAYERS:
            return MODULE_LAYERS[name]
    top = mod.split(".")[1] if "." in mod else "__init__"
    return LAYERS.get(top)


def find_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            visit(m)
    return out


def test_no_import_cycles():
    cycles = find_cycles()
    assert not cycles, "import cycles among alsx modules: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_module_size(mod):
    n = len(MODULES[mod].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[mod].relative_to(SRC)} has {n} lines (limit {MAX_LINES}): split it at a seam"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_private_imports(mod):
    bad = [
        f"line {line}: from {t} import {n}"
        for t, names, line in GRAPH[mod]
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not bad, f"{mod} imports private names of other modules: " + ", ".join(bad)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_layers(mod):
    top = mod.split(".")[1] if "." in mod else "__init__"
    if top in SHARED:
        others = {t for t, _, _ in GRAPH[mod] if t.split(".")[1] not in SHARED}
        if top != "__init__":  # alsx/__init__.py re-exports the public API
            assert not others, f"{mod} is shared by every layer and may import only errors/callbacks: {others}"
        return
    mine = layer(mod)
    assert mine is not None, f"{mod}: add its top-level name to LAYERS in tests/test_structure.py"
    bad = []
    for t, _, line in GRAPH[mod]:
        theirs = layer(t)
        if theirs is not None and t.split(".")[1] not in SHARED and theirs > mine:
            bad.append(f"line {line}: {t} (layer {theirs})")
    assert not bad, f"{mod} (layer {mine}) imports higher layers: " + ", ".join(bad)


def test_the_checks_see_imports():
    """The graph is not empty and finds both kinds of import (guards against a parser that sees nothing)."""
    assert "alsx.config" in {t for t, _, _ in GRAPH["alsx.core.engine"]}
    assert sum(len(v) for v in GRAPH.values()) > 100
    assert os.path.isdir(PKG)
