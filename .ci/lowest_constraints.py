"""Print a pip constraints file that pins every dependency of pyproject.toml (and of the extras named on
the command line) to its lower bound; with ``--check``, say which installed versions differ from them.

Why a constraints file rather than ``uv pip install --resolution lowest-direct``: uv does not read
pip's configuration, which on the test machines points at wheels kept on disk; pip takes the same pins
from there or from PyPI (the oldest torch, a multi-GB CUDA build, comes from PyPI).
Dependencies without a ``>=`` bound are left to the resolver.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def lower_bounds(extras: list[str]) -> dict[str, str]:
    """{distribution name: lower bound} of the project's dependencies and those of ``extras``."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    bounds = {}
    for text in requirements:
        name, _, specifiers = REQUIREMENT.match(text.split(";")[0]).groups()
        if name.lower().replace("_", "-") == project["name"]:
            continue  # an extra that names others (``all``): those are listed on their own
        for part in specifiers.split(","):
            part = part.strip()
            if part.startswith(">="):
                bounds[name] = part[2:].strip()
    return bounds


def _normal(version: str, length: int = 4) -> tuple:
    """The release numbers of ``version``, padded with zeros (``1.26`` is ``1.26.0``)."""
    numbers = [int(p) for p in re.findall(r"\d+", version.split("+")[0])]
    return tuple(numbers + [0] * (length - len(numbers)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras whose dependencies are pinned too (e.g. dev)")
    parser.add_argument("--check", action="store_true", help="compare the installed versions with the bounds")
    args = parser.parse_args()
    bounds = lower_bounds(args.extras)
    if not args.check:
        sys.stdout.write("".join(f"{name}=={version}\n" for name, version in bounds.items()))
        return 0
    wrong = []
    for name, version in bounds.items():
        installed = metadata.version(name)
        same = _normal(installed) == _normal(version)
        print(f"{name:18} {installed:14} {'lower bound' if same else 'NOT the lower bound ' + version}")
        if not same:
            wrong.append(name)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
