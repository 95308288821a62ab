"""Data flows one way. Among lushpo's modules (lazy, in-function imports count too):

- no import cycle;
- layers import only downward: ``hpo.cli`` → ``hpo.results`` → ``hpo.search`` → ``hpo.train`` →
  ``pipeline`` (``hpo.project``, the project folder, sits under all of hpo's layers);
- no module imports another subpackage's private name: across subpackages only the public
  surface (``hpo.search``, not ``hpo.search._study``; no ``_name`` from it either).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "pipeline")
# bottom first: a module may import its own layer and the layers before it
LAYERS = ("pipeline", "hpo.project", "hpo.train", "hpo.search", "hpo.results", "hpo.cli")


def _imports(path: Path) -> set[str]:
    """Every module (and ``module.name``) `path` imports, wherever in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph(root: Path = REPO) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = _imports(path)
    return graph


def _ours(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s layer (None: the ``hpo`` package itself)."""
    for index, layer in enumerate(LAYERS):
        if module == layer or module.startswith(f"{layer}."):
            return index
    return None


def subpackage_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hpo" else parts[0]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports, and imports of another subpackage's private names."""
    found = []
    for module, deps in sorted(graph.items()):
        here = layer_of(module)
        for dep in sorted(deps):
            if not dep.startswith(PACKAGES):
                continue
            there = layer_of(dep)
            if here is not None and there is not None and there > here:
                found.append(f"{module} imports {dep} (layer {LAYERS[there]} above {LAYERS[here]})")
            private = any(part.startswith("_") for part in dep.split(".")[2:])
            if private and subpackage_of(dep) != subpackage_of(module):
                found.append(f"{module} imports {dep}, private to {subpackage_of(dep)}")
    return found


def test_no_import_cycle():
    graph, state, path, cycles = _ours(_graph()), {}, [], []

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


def test_layers_import_only_downward_and_only_public_names():
    assert not violations(_graph()), "\n".join(violations(_graph()))


def test_every_hpo_module_is_in_a_layer():
    assert not [m for m in _graph() if m != "hpo" and layer_of(m) is None]


def test_a_wrong_import_is_found():
    """The check can fail: an upward import and a private import across subpackages."""
    wrong = {
        "hpo.train._model": {"hpo.results", "hpo.results.render_markdown"},
        "hpo.results._report": {"hpo.search._study", "hpo.search._study.run_study"},
        "hpo.search._grid": {"hpo.search._study._SetAside"},  # its own subpackage: allowed
        "pipeline.store": {"hpo.train"},
    }
    assert violations(wrong) == [
        "hpo.results._report imports hpo.search._study, private to hpo.search",
        "hpo.results._report imports hpo.search._study.run_study, private to hpo.search",
        "hpo.train._model imports hpo.results (layer hpo.results above hpo.train)",
        "hpo.train._model imports hpo.results.render_markdown (layer hpo.results above hpo.train)",
        "pipeline.store imports hpo.train (layer hpo.train above pipeline)",
    ]


def test_each_public_surface_is_its_all_and_every_name_resolves():
    import importlib

    for package in ("hpo.train", "hpo.search", "hpo.results", "hpo.cli"):
        module = importlib.import_module(package)
        assert module.__all__, package
        assert not [name for name in module.__all__ if name.startswith("_")], package
        assert sorted(dir(module)) == sorted(module.__all__) or package == "hpo.cli"
        for name in module.__all__:
            getattr(module, name)  # raises when the surface names what its modules lack
