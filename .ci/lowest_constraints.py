"""Plan the lowest-versions check: pip constraints files that pin every dependency of pyproject.toml (and of
the extras named on the command line) to its lower bound, split into passes where one pinned release
forbids another's lower bound; ``check`` says which installed versions differ from a pass's pins.

Passes. The declared bounds are pinned together first. When a pinned release of a package that only an
extra brings (datasets 5.2, of the hf and dev extras) requires more than the lower bound of another
pinned dependency (pyarrow>=24 against the package's pyarrow>=16), no environment holds both, so the
check makes two passes in the same venv:

- ``declared``: every lower bound as written, without the packages whose requirements forbid one (and
  without any pinned package that requires those); the tests that need them skip;
- ``raised``: the package and the extras whole, each dependency pinned to the lowest release that the
  other pinned releases allow (the most of our bound and of the ``>=`` bounds they ask for; a raised
  release may ask for more in turn, so this repeats until nothing changes).

Every lower bound in pyproject.toml is thus installed and tested in one pass or the other. A bound that
the lowest release of one of the package's own dependencies forbids (were panel's to need a newer bokeh
than our bokeh bound) cannot be tested at all: the plan stops and names the bound to raise.

What each pinned release requires comes from pip itself (``pip install --dry-run --no-deps --report``,
which reads the wheels' metadata and downloads no more than that where the index serves it), so the
plan sees the same indexes and wheels on disk that the installation does.

Why constraints files rather than ``uv pip install --resolution lowest-direct``: uv does not read
pip's configuration, which on the test machines points at wheels kept on disk; pip takes the same pins
from there or from PyPI (the oldest torch, a multi-GB CUDA build, comes from PyPI).
Dependencies without a ``>=`` bound are left to the resolver.

    python .ci/lowest_constraints.py plan DIR dev     writes DIR/passes and, for each pass NAME,
                                                      DIR/NAME.constraints, DIR/NAME.install (pip install
                                                      arguments, one a line), DIR/NAME.remove
    python .ci/lowest_constraints.py check DIR NAME   compares the installed versions with NAME's pins
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def lower_bounds(requirements: list[str]) -> dict[str, str]:
    """{canonical distribution name: lower bound} of ``requirements`` that carry a ``>=`` bound."""
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[canonicalize_name(requirement.name)] = spec.version
    return bounds


def requirements_of(extras: list[str]) -> tuple[list[str], list[str]]:
    """The project's own requirement strings, and those its ``extras`` add (not the project itself)."""
    project = _project()
    extra = []
    for name in extras:
        for text in project["optional-dependencies"][name]:
            if canonicalize_name(Requirement(text).name) != canonicalize_name(project["name"]):
                extra.append(text)  # an extra that names others (``all``) lists them on their own
    return list(project["dependencies"]), extra


def release_requirements(pins: dict[str, str]) -> dict[str, list[Requirement]]:
    """{name: the requirements of release ``name==pins[name]``}, markers evaluated for this interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        wanted = Path(tmp, "pins.txt")
        wanted.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
        report = Path(tmp, "report.json")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--no-deps",
                "--ignore-installed",
                "-q",
                "--report",
                str(report),
                "-r",
                str(wanted),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:  # pip's warnings about index folders it skips are noise when it succeeds
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"lowest_constraints: pip could not find the pinned releases ({done.returncode})")
        items = json.loads(report.read_text())["install"]
    found = {}
    for item in items:
        meta = item["metadata"]
        needs = []
        for text in meta.get("requires_dist") or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                needs.append(requirement)
        found[canonicalize_name(meta["name"])] = needs
    return found


def _least_allowed(requirement: Requirement) -> Version | None:
    """The smallest version that the ``>=``/``==``/``~=`` parts of ``requirement`` name, if any."""
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def conflicts(pins: dict[str, str], needs: dict[str, list[Requirement]]) -> list[tuple[str, str, Requirement]]:
    """(requirer, required, requirement) for each pinned release whose requirement excludes another's pin."""
    found = []
    for requirer, requirements in needs.items():
        for requirement in requirements:
            required = canonicalize_name(requirement.name)
            if required in pins and not requirement.specifier.contains(pins[required], prereleases=True):
                found.append((requirer, required, requirement))
    return found


def raise_bounds(pins: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``pins`` with every bound another pinned release forbids raised to what that release asks for,
    repeated until no pinned release forbids another (a raised release may ask for more in turn)."""
    pins = dict(pins)
    notes = []
    for _ in range(20):
        found = conflicts(pins, release_requirements(pins))
        if not found:
            return pins, notes
        for requirer, required, requirement in found:
            least = _least_allowed(requirement)
            if least is None or Version(pins[required]) >= least:
                raise SystemExit(
                    f"lowest_constraints: {requirer}=={pins[requirer]} needs {requirement}; "
                    f"no lowest release of {required} to pin (the bound is {pins[required]})"
                )
            notes.append(f"{required} {pins[required]} -> {least} ({requirer}=={pins[requirer]} needs {requirement})")
            pins[required] = str(least)
    raise SystemExit("lowest_constraints: the raised bounds did not settle after 20 rounds")


def plan(out: Path, extras: list[str]) -> None:
    core, extra = requirements_of(extras)
    core_names = {canonicalize_name(Requirement(t).name) for t in core}
    declared = lower_bounds(core + extra)
    needs = release_requirements(declared)
    found = conflicts(declared, needs)

    spec = f".[{','.join(extras)}]" if extras else "."
    passes = {}
    if not found:
        passes["declared"] = (declared, ["-e", spec], [])
    else:
        blocked = [c for c in found if c[0] in core_names]
        if blocked:
            lines = "\n".join(
                f"  {r}=={declared[r]} needs {q}: raise the bound of {p} ({declared[p]})" for r, p, q in blocked
            )
            raise SystemExit(f"lowest_constraints: a dependency's own lowest release forbids another bound:\n{lines}")
        # the extras' packages that forbid a bound, and every pinned package that needs one of them
        dropped = {requirer for requirer, _, _ in found}
        while True:
            more = {
                name
                for name, reqs in needs.items()
                if name not in dropped and any(canonicalize_name(r.name) in dropped for r in reqs)
            }
            if not more:
                break
            if more & core_names:
                raise SystemExit(
                    f"lowest_constraints: core dependencies {sorted(more & core_names)} need "
                    f"{sorted(dropped)}, whose lowest releases forbid other bounds"
                )
            dropped |= more
        kept = {n: v for n, v in declared.items() if n not in dropped}
        install = ["-e", "."] + [t for t in extra if canonicalize_name(Requirement(t).name) not in dropped]
        passes["declared"] = (kept, install, sorted(dropped))
        raised, notes = raise_bounds(declared)
        for note in notes:
            print(f"lowest_constraints: raised pass: {note}", file=sys.stderr)
        passes["raised"] = (raised, ["-e", spec], [])

    out.mkdir(parents=True, exist_ok=True)
    (out / "passes").write_text("".join(f"{name}\n" for name in passes))
    for name, (pins, install, remove) in passes.items():
        (out / f"{name}.constraints").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
        (out / f"{name}.install").write_text("".join(f"{a}\n" for a in install))
        (out / f"{name}.remove").write_text("".join(f"{n}\n" for n in remove))


def _normal(version: str, length: int = 4) -> tuple:
    """The release numbers of ``version``, padded with zeros (``1.26`` is ``1.26.0``)."""
    return (Version(version).release + (0,) * length)[:length]


def check(out: Path, name: str) -> int:
    wrong = []
    for line in (out / f"{name}.constraints").read_text().splitlines():
        dist, version = line.split("==")
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            installed = "-"
        same = installed != "-" and _normal(installed) == _normal(version)
        print(f"{dist:18} {installed:14} {'pinned' if same else 'NOT the pin ' + version}")
        if not same:
            wrong.append(dist)
    for dist in (out / f"{name}.remove").read_text().split():
        try:
            print(f"{dist:18} {metadata.version(dist):14} NOT removed")
            wrong.append(dist)
        except metadata.PackageNotFoundError:
            print(f"{dist:18} {'-':14} not installed in this pass")
    return 1 if wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    planning = commands.add_parser("plan", help="write the passes' constraints and install arguments")
    planning.add_argument("out", type=Path)
    planning.add_argument("extras", nargs="*", help="extras whose dependencies are pinned too (e.g. dev)")
    checking = commands.add_parser("check", help="compare the installed versions with a pass's pins")
    checking.add_argument("out", type=Path)
    checking.add_argument("name")
    args = parser.parse_args()
    if args.command == "plan":
        plan(args.out, args.extras)
        return 0
    return check(args.out, args.name)


if __name__ == "__main__":
    raise SystemExit(main())
