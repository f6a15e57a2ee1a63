"""A run killed under ``torchrun --nproc_per_node=2`` and continued on another number of processes.

``score`` cuts its chunks and batches from the pool order alone, so one rank killed after a seeded
number of its chunk parts and the same command then run in one process gives the uninterrupted
(one-process) run — for image-text pairs too, whose scores are relative to their batch. ``train``
steps each rank through its own part of every epoch's permutation, so a training run resumes only on
the process count it started with: in one process it is refused with a one-line message naming the
count, nothing in the directory touched, and resumed under torchrun it equals an uninterrupted
two-process run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tests.faults.commands import COMMANDS
from tests.faults.harness import ROOT, SEED, assert_same_run
from tests.faults.killer import FAULT_VARIABLES, KILL_AFTER, KILL_MATCH, KILL_RANK

pytestmark = pytest.mark.slow

KILLER = Path(__file__).resolve().parent / "killer.py"
WORLD = 2


def torchrun(argv: list, cache: Path, kill: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 killer.py ARGV`` on the CPU, one thread a process."""
    env = {k: v for k, v in os.environ.items() if k not in FAULT_VARIABLES}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        MIMIC_EXPLORER_CACHE=str(cache),
        **{k: str(v) for k, v in (kill or {}).items()},
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        str(KILLER),
        *[str(a) for a in argv],
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _kill_point(label: str, parts_per_rank: list[int], match: str) -> dict:
    """A seeded (rank, N): that rank dies right after committing its N-th file named like ``match``."""
    rng = random.Random(zlib.crc32(f"{SEED}-{label}-world".encode()))
    rank = rng.randrange(len(parts_per_rank))
    return {KILL_RANK: rank, KILL_MATCH: match, KILL_AFTER: rng.randint(1, parts_per_rank[rank])}


@pytest.mark.parametrize("name", ["score labelled, all params", "score pairs"])
def test_a_score_killed_under_torchrun_finishes_in_one_process_as_the_uninterrupted_run(
    name, baselines, zygote, workspace, tally, tmp_path
):
    command, baseline = COMMANDS[name], baselines(name)
    chunks = len(list((baseline.folder / "run" / "scores").glob("chunk-*.parquet")))
    kill = _kill_point(name, [len(range(rank, chunks, WORLD)) for rank in range(WORLD)], "-rank")
    argv = [*command.argv(workspace, tmp_path), "--out", tmp_path / "run"]
    with tally.trial(name, "process_count"):
        killed = torchrun(argv, tmp_path / "cache", kill)
        assert killed.returncode != 0, f"{kill}: not killed"
        meta = json.loads((tmp_path / "run" / "meta.json").read_text())
        # the killed rank says nothing; the other one is stopped by torchrun, or sees its peer gone and says failed
        assert meta["status"] in ("running", "failed") and meta["world_size"] == WORLD
        written = list((tmp_path / "run" / "scores").glob("chunk-*-rank*.parquet"))
        assert 0 < len(written) <= chunks, f"{kill}: {len(written)} of {chunks} chunk parts written"
        alone = command.run(zygote, workspace, tmp_path)
        assert alone.rc == 0, alone.stderr[-3000:]
        assert_same_run(baseline.folder / "run", tmp_path / "run", same_files=False)


def test_a_train_killed_under_torchrun_is_refused_in_one_process_and_resumed_under_torchrun(
    workspace, zygote, tally, tmp_path
):
    name = "train labelled, linear probe"
    command = COMMANDS[name]
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    killed_dir.mkdir()
    argv = command.argv(workspace, killed_dir)
    epochs = int(argv[argv.index("--epochs") + 1])
    kill = _kill_point(name, [epochs - 1], "state.pt")  # rank 0 writes the state after every epoch
    with tally.trial(name, "process_count"):
        killed = torchrun([*argv, "--out", killed_dir / "run"], tmp_path / "cache", kill)
        assert killed.returncode != 0 and (killed_dir / "run" / "state.pt").exists(), f"{kill}: not killed"
        before = {p: p.stat().st_mtime_ns for p in (killed_dir / "run").rglob("*")}
        alone = command.run(zygote, workspace, killed_dir, {"MIMIC_EXPLORER_CACHE": tmp_path / "cache"})
        lines = alone.error_lines()
        assert alone.rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), alone.stderr[-3000:]
        assert f"started with {WORLD} process(es)" in lines[0] and f"--nproc_per_node={WORLD}" in lines[0], lines[0]
        assert {p: p.stat().st_mtime_ns for p in (killed_dir / "run").rglob("*")} == before, (
            "the refused run touched files"
        )
        resumed = torchrun([*argv, "--out", killed_dir / "run"], tmp_path / "cache")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        whole = torchrun([*argv, "--out", whole_dir / "run"], tmp_path / "cache")
        assert whole.returncode == 0, whole.stderr[-3000:]
        assert_same_run(whole_dir / "run", killed_dir / "run")
