"""Benchmarks import the package lazily (inside functions), so a renamed name breaks them only when a
long run reaches it. This reads every ``from mimic_explorer... import NAME`` in benchmarks/ and checks
that the name exists, so a rename fails here instead of an hour into a benchmark."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _package_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mimic_explorer"):
                found += [(path.name, node.module, alias.name) for alias in node.names]
    return found


IMPORTS = _package_imports()


def test_benchmarks_do_import_the_package():
    assert len(IMPORTS) > 20  # the check below has something to check


@pytest.mark.parametrize("module", sorted({m for _, m, _ in IMPORTS}))
def test_every_name_a_benchmark_imports_exists(module):
    loaded = importlib.import_module(module)
    missing = [
        f"{file}: {name}"
        for file, m, name in IMPORTS
        if m == module and not hasattr(loaded, name) and not _is_submodule(module, name)
    ]
    assert not missing, f"{module} has no {missing}"


def _is_submodule(module: str, name: str) -> bool:
    try:
        importlib.import_module(f"{module}.{name}")
        return True
    except ImportError:
        return False
