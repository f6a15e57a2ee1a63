"""Shared fixtures: one real demo run and one digits reference checkpoint per test session, built by the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mimic_explorer ARGS`` and return the completed process (text mode)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mimic_explorer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


KILLER = Path(__file__).resolve().parent / "faults" / "killer.py"


def run_cli_killed(after: int, match: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``mimic-explorer ARGS`` and kill it (SIGKILL) right after the ``after``-th committed file whose
    name contains ``match`` (``tests/faults/killer.py``); return the completed process. Why not a kill
    sent by the test once such a file shows up: a fast run may finish in between, and the test would
    then look at a complete run instead of a killed one."""
    env = {
        **os.environ,
        "PYTHONPATH": str(KILLER.parents[2]),
        "MIMIC_EXPLORER_KILL_AFTER": str(after),
        "MIMIC_EXPLORER_KILL_MATCH": match,
    }
    return subprocess.run(
        [sys.executable, str(KILLER), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def run_torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc_per_node=2 -m mimic_explorer ARGS`` (gloo on the CPU, one
    thread a process so the two ranks share the machine fairly) and return the completed process."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "mimic_explorer",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A complete demo run directory made by ``mimic-explorer demo``."""
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli("demo", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


COMMON = ["--data", "digits", "--arch", "mlp", "--batch-size", "64", "--lr", "1e-4", "--quiet"]


@pytest.fixture(scope="session")
def digits_reference(tmp_path_factory) -> Path:
    """A plain run on clean digits saved as a reference checkpoint (with its init fingerprint)."""
    root = tmp_path_factory.mktemp("ref")
    ckpt = root / "reference.pt"
    proc = run_cli("train", *COMMON, "--epochs", "6", "--out", str(root / "run"), "--save-model", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    return ckpt
