"""Shared fixtures: one real demo run per test session (built by the real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mimic_explorer ARGS`` and return the completed process (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mimic_explorer", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A complete demo run directory made by ``mimic-explorer demo``."""
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli("demo", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def cifar_shards() -> Path:
    path = SHARED_DATA / "cifar10"
    if not (path / "train-00.tar").exists():
        pytest.skip("../shared/data/cifar10 is not available")
    return path
