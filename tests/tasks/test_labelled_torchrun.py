"""Real ``torchrun --nproc_per_node=2`` (gloo, CPU) on a labelled pool (the digits): ``score`` equals one
process; ``train`` records every sample once an epoch with the ranks stepping together, and a train
killed under two processes resumes only under two (its twin on image-text pairs:
``test_pairs_torchrun.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mimic_explorer import open_run
from tests.conftest import COMMON, run_cli, run_torchrun

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    ckpt = root / "model.pt"
    proc = run_cli(
        "train", *COMMON, "--epochs", "2", "--label-noise", "0.3", "--out", str(root / "run"), "--save-model", str(ckpt)
    )
    assert proc.returncode == 0, proc.stderr
    return ckpt


@pytest.mark.slow
def test_torchrun_score_equals_single_process(digits_reference, other_model, tmp_path):
    args = [
        "score",
        "--data",
        "digits",
        "--arch",
        "mlp",
        "--model",
        str(other_model),
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--chunk-size",
        "500",
        "--quiet",
        "--device",
        "cpu",
    ]
    single = run_cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    multi = run_torchrun(*args, "--out", str(tmp_path / "two"))
    assert multi.returncode == 0, multi.stderr
    a, b = open_run(tmp_path / "one"), open_run(tmp_path / "two")
    assert b.meta["world_size"] == 2
    assert b.scores["sample_id"].is_unique and len(b.scores) == len(a.scores) == 1797
    parts = list((tmp_path / "two" / "scores").glob("chunk-*-rank*.parquet"))
    assert {p.name.split("-rank")[1] for p in parts} == {"000.parquet", "001.parquet"}
    pa = a.scores.set_index("sample_id").sort_index()
    pb = b.scores.set_index("sample_id").sort_index()
    np.testing.assert_allclose(pb["proj"], pa["proj"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pb["loss"], pa["loss"], rtol=1e-6, atol=1e-9)
    a_samples = a.samples.set_index("sample_id").sort_index()
    b_samples = b.samples.set_index("sample_id").sort_index()
    assert (a_samples["keep"] == b_samples["keep"]).all()
    assert (a_samples["ref_pred"] == b_samples["ref_pred"]).all()  # every rank's chunks' reference signals
    np.testing.assert_allclose(np.asarray(b.reference_probs), np.asarray(a.reference_probs), atol=1e-6)
    np.testing.assert_allclose(np.asarray(b.embedding("image")), np.asarray(a.embedding("image")), atol=1e-3)


@pytest.mark.slow
def test_torchrun_train_records_every_sample_once_per_epoch(digits_reference, tmp_path):
    out = tmp_path / "ddp"
    proc = run_torchrun(
        "train",
        *COMMON,
        "--epochs",
        "3",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    run = open_run(out)
    assert run.meta["world_size"] == 2
    counts = run.scores.groupby(["sample_id", "epoch"]).size()
    assert (counts == 1).all() and len(counts) == 1797 * 3
    assert len(run.samples) == 1797 and run.samples["mimic_score"].notna().all()
    # each rank's Stage-1 weights are a softmax over its own local batch: two local batches per step
    sums = run.scores.groupby(["epoch", "step"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 2.0, rtol=1e-5)


@pytest.mark.slow
def test_torchrun_train_finishes_when_one_rank_holds_a_sample_past_a_whole_number_of_batches(tmp_path):
    """1797 digits in batches of 449: rank 0's 899 samples once made a third batch that rank 1's 898 did
    not, and rank 0 waited forever in that step's gradient all-reduce. Now both make two batches, and
    the two batches of a step share its number in every epoch."""
    out = tmp_path / "ddp"
    proc = run_torchrun(
        "train",
        "--data",
        "digits",
        "--arch",
        "mlp",
        "--batch-size",
        "449",
        "--epochs",
        "2",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    scores = open_run(out).scores
    counts = scores.groupby(["sample_id", "epoch"]).size()
    assert (counts == 1).all() and len(counts) == 1797 * 2
    assert scores.groupby(["epoch", "step"]).size().tolist() == [898, 899, 898, 899]


@pytest.mark.slow
def test_a_train_killed_under_torchrun_resumes_only_on_its_own_process_count(digits_reference, tmp_path):
    """Each rank trains on its part of every epoch's permutation, so a run started on two processes is
    refused in one (naming the count, nothing touched) and resumed on two: equal to an uninterrupted run."""
    args = [
        "train",
        *COMMON,
        "--epochs",
        "3",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--device",
        "cpu",
        "--checkpoint-every",
        "0",
    ]
    out = tmp_path / "killed"
    killer = Path(__file__).resolve().parents[1] / "faults" / "killer.py"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "MIMIC_EXPLORER_KILL_AFTER": "1",
        "MIMIC_EXPLORER_KILL_MATCH": "state.pt",
        "MIMIC_EXPLORER_KILL_RANK": "0",
    }
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(killer),
            *args,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert killed.returncode != 0 and (out / "state.pt").exists()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    alone = run_cli(*args, "--out", str(out))
    assert alone.returncode == 2 and "started with 2 process(es)" in alone.stderr and "torchrun" in alone.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before
    resumed = run_torchrun(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    whole = run_torchrun(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    a, b = open_run(tmp_path / "whole"), open_run(out)
    assert b.meta["status"] == "complete" and len(b.scores) == len(a.scores) == 1797 * 3
    pa = a.scores.set_index(["sample_id", "epoch"]).sort_index()
    pb = b.scores.set_index(["sample_id", "epoch"]).sort_index()
    np.testing.assert_allclose(pb["proj"], pa["proj"], rtol=1e-5, atol=1e-8)
    assert (
        a.samples.set_index("sample_id")["keep"].sort_index() == b.samples.set_index("sample_id")["keep"].sort_index()
    ).all()
