"""pyproject.toml installs beside the torch a user has: every dependency a range from a tested lower bound
(``.ci/lowest-versions`` installs exactly those and runs the quick suite), the app's notebook support
included, one extra for everything optional, and the license it declares shipped."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
