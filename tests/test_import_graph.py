"""The package's import rules, checked on every import statement — function-level ones included,
which a check of what an import loads at run time cannot see (docs/ARCHITECTURE.md, "Layers").

- No module imports itself back through others (no cycle), however deep the import sits.
- A package imports only the packages of the layers below it (or its own modules); the one
  exception is ``scoring``, which may use ``models.heads`` (a torch-only leaf that finds the head).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mimic_explorer"
#: bottom to top; a package may import its own layer's modules and every layer below it
LAYERS = [
    {"util"},
    {"scoring"},
    {"data"},
    {"models"},
    {"stage2", "filters"},
    {"store"},
    {"maps"},
    {"training"},
    {"tasks"},
    {"commands"},
    {"cli", "__main__", "ui", "app", "(root)"},
]
#: imports across layers that the rules allow although they point up
ALLOWED_UPWARD = {("scoring", "mimic_explorer.models.heads")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (a name imported from a module
    counts as that module unless it is a submodule)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("mimic_explorer"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    graph[name].add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith("mimic_explorer"))
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    return dict(graph)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _layer(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def test_every_package_has_a_layer():
    packages = {_package(m) for m in import_graph()}
    assert packages <= set().union(*LAYERS), sorted(packages - set().union(*LAYERS))


def test_no_import_cycles_counting_function_level_imports():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_only_downward():
    upward = []
    for module, targets in import_graph().items():
        source = _package(module)
        for target in targets:
            if _layer(_package(target)) > _layer(source) and (source, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_an_upward_import_would_be_seen():
    graph = import_graph()
    assert any(_layer(_package(t)) < _layer(_package(m)) for m, ts in graph.items() for t in ts)  # downward ones exist
    assert (
        "mimic_explorer.commands.train" in graph
        and "mimic_explorer.training.loop" in graph["mimic_explorer.commands.train"]
    )


def test_the_package_root_holds_only_its_entry_points():
    """Everything else lives in a package whose name says its layer (issue: a drawer of loose modules)."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "app.py", "cli.py"]
