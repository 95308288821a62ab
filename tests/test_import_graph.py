"""Data flows one way: no import cycle among lushpo's modules (lazy, in-function imports count
too), and `pipeline` never imports `hpo`."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "pipeline")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            deps = graph.setdefault(name, set())
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps.update(alias.name for alias in node.names)
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def test_no_import_cycle():
    graph, state, path, cycles = _graph(), {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, cycles


def test_pipeline_never_imports_hpo():
    graph = _graph()
    upward = {m: sorted(d for d in deps if d.startswith("hpo")) for m, deps in graph.items()}
    assert not {m: d for m, d in upward.items() if m.startswith("pipeline") and d}
