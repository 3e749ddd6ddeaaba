"""The layers of docs/architecture.md hold: torch stays in the worker's processes, imports point down, no cycles."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import finetuned
import finetuned.processes

SRC = Path(finetuned.__file__).parent
PROCESSES = sorted(m.name for m in pkgutil.walk_packages(finetuned.processes.__path__, "finetuned.processes."))


@pytest.mark.parametrize("module", ["finetuned.daemon.daemon", "finetuned.monitor.app", "finetuned.cli.app",
                                    "finetuned.lifecycle.line", "finetuned.lifecycle.retention",
                                    "finetuned.lifecycle.doctor"])
def test_importing_does_not_load_torch(module):
    assert _heavy_after_importing([module]) == "[]", f"{module} loads torch"


def test_no_module_of_the_processes_layer_loads_torch():
    assert len(PROCESSES) >= 8, PROCESSES
    assert _heavy_after_importing(PROCESSES) == "[]"


def _heavy_after_importing(modules: list[str]) -> str:
    imports = "; ".join(f"import {m}" for m in modules)
    code = f"import sys; {imports}; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """finetuned's modules and the finetuned modules each imports, at any depth of its code (lazy imports too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return graph


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def _edges(graph: dict[str, set[str]], source: str, target: str) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in graph.items() for b in bs if _package(a) == source and _package(b) == target)


def test_the_daemon_and_the_processes_layer_never_import_the_worker():
    graph = _graph()
    assert _edges(graph, "daemon", "worker") == []
    assert _edges(graph, "processes", "worker") == []
    assert _edges(graph, "processes", "daemon") == []
    assert len(_edges(graph, "lifecycle", "worker")) <= 1, _edges(graph, "lifecycle", "worker")


def test_module_imports_have_no_cycle():
    graph = _graph()
    edges = graph
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))
