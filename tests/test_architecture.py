"""The library core does not import the applications, oprm's modules import no cycle, and modules stay small.

Static checks read every ``import`` of ``src/oprm`` with ``ast`` (function-level imports included: a lazy import is
still a dependency); one runtime check imports the core in a fresh interpreter and looks at ``sys.modules``.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "oprm"

CORE = ("oprm", "oprm.engine", "oprm.prefill", "oprm.chunking", "oprm.prompts", "oprm.selection", "oprm.decoding",
        "oprm.config", "oprm.adapters", "oprm.models", "oprm.parallel", "oprm.runtime", "oprm.errors", "oprm.report",
        "oprm.run", "oprm.result", "oprm.document")
APPLICATIONS = ("oprm.cli", "oprm.__main__", "oprm.demo", "oprm.bench", "oprm.eval",
                "oprm.training", "oprm.synthetic", "oprm.tasks", "oprm.metrics", "oprm.serve", "oprm.lm_eval_model")
# import cycles that exist on purpose of nobody; each names who removes it
KNOWN_CYCLES: dict[frozenset, str] = {}
MAX_LINES = 400
LARGE_MODULES: dict[str, str] = {}  # path -> who splits it


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: name -> (file, is a package)."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def imports_of(name: str, file: Path, is_pkg: bool, known: dict) -> set[str]:
    """The oprm modules ``name`` imports anywhere in its file (``from x import y`` counts x.y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".")[: len(name.split(".")) - (0 if is_pkg else 1) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, f, is_pkg, known) for name, (f, is_pkg) in known.items()}


def is_application(name: str) -> bool:
    return any(name == app or name.startswith(app + ".") for app in APPLICATIONS)


def is_core(name: str) -> bool:
    return not is_application(name)


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the components of more than one module are the import cycles."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "oprm.engine" in graph["oprm"]  # from .engine import OPRM
    assert "oprm.eval.runner" in graph["oprm.demo"]  # a function-level import
    assert "oprm.adapters.selective_scan" in graph["oprm.adapters.mamba_scan"]


def test_core_imports_no_application_statically():
    graph = import_graph()
    bad = {name: sorted(d for d in deps if is_application(d)) for name, deps in graph.items() if is_core(name)}
    assert not {k: v for k, v in bad.items() if v}


def test_core_imports_no_application_at_runtime():
    """Import each core module in one fresh interpreter; after every import no application module is loaded."""
    core = [m for m in sorted(modules()) if is_core(m)]
    code = ("import importlib, json, sys\n"
            f"apps = {APPLICATIONS!r}\n"
            "out = {}\n"
            f"for m in {core!r}:\n"
            "    importlib.import_module(m)\n"
            "    out[m] = [k for k in sys.modules if any(k == a or k.startswith(a + '.') for a in apps)]\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert set(loaded) == set(core) and len(core) > 10
    assert not {m: apps for m, apps in loaded.items() if apps}


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(import_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert not cycles, cycles


def test_cycle_finder_finds_cycles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("path", sorted(str(p.relative_to(SRC)) for p in PACKAGE.rglob("*.py")))
def test_modules_stay_small(path):
    lines = len((SRC / path).read_text(encoding="utf-8").splitlines())
    if path in LARGE_MODULES:
        pytest.xfail(f"{lines} lines; {LARGE_MODULES[path]}")
    assert lines <= MAX_LINES, f"{path}: {lines} lines"
