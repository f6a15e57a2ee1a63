"""``benchmarks/gpu_check.sh`` on a machine without CUDA (or told to plan only): a dry run that checks
every step could run and says, in its results file, what it skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STEPS = ("cuda_tests", "bench_scoring", "torchrun_nccl", "torchrun_train", "torchrun_score")


@pytest.mark.slow
def test_the_dry_run_checks_every_step_and_records_it_as_skipped(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DRY_RUN": "1"}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(out)], cwd=SCRIPT.parents[1], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (out / "results.md").read_text()
    assert "- mode: dry-run" in results and "steps not ok: 0" in results
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in results.splitlines()
        if line.startswith("| ") and not line.startswith("| step") and not line.startswith("| ---")
    }
    assert rows == dict.fromkeys(STEPS, "skipped (no CUDA): ready")
    for name in STEPS:
        log = (out / f"{name}.log").read_text()
        assert "would run: " in log
    assert "tests/e2e/test_cuda_cli.py" in (out / "cuda_tests.log").read_text()
    assert "3 tests collected" in (out / "cuda_tests.log").read_text()
    assert not (out / "torchrun-train").exists()  # nothing that needs CUDA ran


def test_without_an_output_folder_it_says_how_to_call_it():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "usage: benchmarks/gpu_check.sh OUT_DIR" in proc.stderr
