"""Helpers shared by the UI tests: small synthetic runs and a copy of the session's demo run."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _synthetic_module():
    spec = importlib.util.spec_from_file_location("synthetic_run", ROOT / "benchmarks" / "synthetic_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_run(path: Path, n: int = 600, **kwargs) -> Path:
    """A complete run written with pandas only (the benchmark's generator, small)."""
    return _synthetic_module().write_synthetic_run(path, n, **kwargs)


def synthetic_pairs_run(path: Path, n: int = 600, **kwargs) -> Path:
    """A complete image-text pairs run (uids, captions, CLIP-score baselines), pandas only."""
    return _synthetic_module().write_synthetic_pairs_run(path, n, **kwargs)


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run (tests that save filters into a run must not touch the shared one)."""
    shutil.copytree(run, dest)
    return dest
