"""pyproject.toml installs beside the torch a user has: every dependency a range from a tested lower bound
(``.ci/lowest-versions`` installs exactly those and runs the quick suite), the app's notebook support
included, one extra for everything optional, and the license it declares shipped."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: no upper bound: a major release every quarter (pyarrow) or year (pillow) without breaking what is used here
#: no upper bound: a new major every quarter or year (pyarrow, pillow), calendar versions (the fsspec family),
#: or test tools
UNCAPPED = {"pyarrow", "pillow", "pytest", "playwright", "nbclient", "nbformat", "ipykernel", "fsspec", "s3fs", "gcsfs"}


def _parts(requirement: str) -> tuple[str, str]:
    name, specifiers = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)", requirement).groups()
    return name.lower(), specifiers


def test_every_dependency_is_a_range_from_a_lower_bound():
    requirements = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]
    for name, specifiers in map(_parts, requirements):
        if name == "mimic-explorer":
            continue
        assert ">=" in specifiers and "==" not in specifiers, (name, specifiers)
        assert ("<" in specifiers.replace("<=", "")) or name in UNCAPPED, (name, specifiers)


def test_torch_is_not_pinned_and_the_app_can_show_in_notebooks():
    names = dict(map(_parts, PROJECT["dependencies"]))
    assert names["torch"].startswith(">=") and "<3" in names["torch"]
    assert "jupyter_bokeh" in names  # VS Code and Colab show Panel through it


def test_all_names_every_optional_extra():
    extras = PROJECT["optional-dependencies"]
    named = set(extras["all"][0].split("[")[1].rstrip("]").split(","))
    assert named == set(extras) - {
        "all",
        "dev",
        "s3",
        "gcs",
    }  # the cloud filesystems bring their SDKs: asked for by name


def test_the_license_declared_is_the_one_shipped():
    assert PROJECT["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the mimic_explorer authors" in text


def _lowest_constraints():
    """``.ci/lowest_constraints.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("lowest_constraints", ROOT / ".ci" / "lowest_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lowest_versions_check_splits_a_bound_another_lowest_release_forbids(tmp_path, monkeypatch):
    """datasets 5.2 (dev extra) needs pyarrow>=24 while the package allows 16: two passes, each installable."""
    lowest = _lowest_constraints()

    def release_requirements(pins):
        needs = {name: [] for name in pins}
        if "datasets" in pins:
            needs["datasets"] = [Requirement("pyarrow>=24.0.0"), Requirement("tqdm>=4.66.3"), Requirement("numpy")]
        return needs

    monkeypatch.setattr(lowest, "release_requirements", release_requirements)
    lowest.plan(tmp_path, ["dev"])
    assert (tmp_path / "passes").read_text().split() == ["declared", "raised"]

    def pins(name):
        return dict(line.split("==") for line in (tmp_path / f"{name}.constraints").read_text().splitlines())

    declared, raised = pins("declared"), pins("raised")
    bounds = lowest.lower_bounds(PROJECT["dependencies"])
    assert declared["pyarrow"] == bounds["pyarrow"] and "datasets" not in declared
    assert (tmp_path / "declared.remove").read_text().split() == ["datasets"]
    assert "datasets" not in (tmp_path / "declared.install").read_text()
    assert raised["pyarrow"] == "24.0.0" and raised["tqdm"] == "4.66.3" and "datasets" in raised
    unchanged = {n: v for n, v in raised.items() if n not in ("pyarrow", "tqdm", "datasets")}
    assert unchanged == {n: v for n, v in declared.items() if n not in ("pyarrow", "tqdm")}
    assert (tmp_path / "raised.install").read_text().split() == ["-e", ".[dev]"]


def test_the_lowest_versions_check_stops_when_a_core_dependency_forbids_a_bound(tmp_path, monkeypatch):
    lowest = _lowest_constraints()
    needs = {"panel": [Requirement("bokeh>=99")]}
    monkeypatch.setattr(lowest, "release_requirements", lambda pins: {n: needs.get(n, []) for n in pins})
    with pytest.raises(SystemExit, match="panel==.* needs bokeh>=99: raise the bound of bokeh"):
        lowest.plan(tmp_path, ["dev"])
