"""``mimic-explorer train`` / ``score`` on a labelled pool (the digits) through the real command line:
the evaluation table, cache and ``--force``, kill -9 and resume of ``train``, checkpoint intervals, bad
options and references, two commands on one run directory. What every task's commands guarantee is in
tests/commands/test_task_contract.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer import open_run
from tests.conftest import COMMON, run_cli, run_cli_killed
from tests.waiting import wait_for

pytestmark = pytest.mark.slow  # whole module: real runs or subprocesses


def _train(out: Path, reference: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "train",
        *COMMON,
        "--epochs",
        "4",
        "--reference",
        str(reference),
        "--label-noise",
        "0.3",
        "--out",
        str(out),
        *extra,
    )


def test_reference_checkpoint_has_its_init_fingerprint(digits_reference):
    side = json.loads(Path(str(digits_reference) + ".meta.json").read_text())
    assert side["arch"] == "mlp" and len(side["init_fingerprint"]) == 16
    state = torch.load(digits_reference, weights_only=True)
    assert "head.weight" in state


def test_grad_mimic_on_noisy_labels_writes_every_signal_and_detects_the_noise(digits_reference, tmp_path):
    proc = _train(tmp_path / "gm", digits_reference)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str((tmp_path / "gm").resolve())
    assert "mimic_score" in proc.stdout and "reference_loss" in proc.stdout  # evaluation table with baselines
    run = open_run(tmp_path / "gm")
    samples, scores = run.samples, run.scores
    assert len(samples) == 1797 and samples["sample_id"].is_unique
    assert samples["is_noisy"].sum() == int(0.3 * 1797)
    for column in ("proj", "weight", "loss", "pred", "cos"):
        assert scores[column].notna().all(), column
    for column in (
        "reference_loss",
        "reducible_loss",
        "grand",
        "proj_mean",
        "proj_min",
        "proj_last",
        "mimic_score",
        "keep",
    ):
        assert samples[column].notna().all(), column
    evaluation = run.meta["evaluation"]
    assert {"mimic_score", "reference_loss", "reducible_loss", "grand"} <= set(evaluation)
    assert evaluation["mimic_score"]["auroc"] > 0.6  # far above chance even in 4 epochs
    assert run.meta["same_init"] is True
    assert not any("DIFFERENT" in w for w in run.meta["warnings"])


def test_same_command_twice_hits_the_cache_and_force_recomputes(digits_reference, tmp_path):
    out = tmp_path / "cache"
    assert _train(out, digits_reference).returncode == 0
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    meta = (out / "meta.json").read_text()
    assert (out / "samples.parquet") in written and any(p.parent.name == "scores" for p in written)
    again = _train(out, digits_reference)
    assert again.returncode == 0 and "cached" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == written  # nothing recomputed
    assert (out / "meta.json").read_text() == meta
    forced = _train(out, digits_reference, "--force")
    assert forced.returncode == 0 and "cached" not in forced.stderr
    rewritten = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert rewritten.keys() == written.keys() and all(rewritten[p] != written[p] for p in written)  # every table again


def test_kill_9_then_same_command_equals_an_uninterrupted_run(digits_reference, tmp_path):
    args = [
        "train",
        *COMMON,
        "--epochs",
        "12",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--checkpoint-every",
        "0",
    ]
    assert run_cli(*args, "--out", str(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    killed = run_cli_killed(3, "epoch-", *args, "--out", str(out))  # kill -9 right after the third epoch part
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((out / "meta.json").read_text())["status"] == "running"
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a, b = open_run(tmp_path / "whole"), open_run(out)
    key = ["epoch", "step", "sample_id"]
    pd.testing.assert_frame_equal(
        a.scores.sort_values(key).reset_index(drop=True), b.scores.sort_values(key).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(a.samples, b.samples)


def test_checkpoints_on_an_interval_write_fewer_parts_with_the_same_rows(digits_reference, tmp_path):
    every = _train(tmp_path / "every", digits_reference, "--checkpoint-every", "0")
    once = _train(tmp_path / "once", digits_reference, "--checkpoint-every", "3600")
    assert every.returncode == 0 and once.returncode == 0, every.stderr + once.stderr
    names = lambda out: sorted(p.name for p in (out / "scores").glob("*.parquet"))  # noqa: E731
    assert names(tmp_path / "every") == [f"epoch-{e:04d}.parquet" for e in range(4)]
    assert names(tmp_path / "once") == ["epoch-0000-0003.parquet"]  # one checkpoint, after the last epoch
    assert not (tmp_path / "once" / "state.pt").exists()
    a, b = open_run(tmp_path / "every"), open_run(tmp_path / "once")
    key = ["epoch", "step", "sample_id"]
    pd.testing.assert_frame_equal(
        a.scores.sort_values(key).reset_index(drop=True), b.scores.sort_values(key).reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(a.samples, b.samples)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--label-noise", "1.0"], "label-noise"),
        (["--temperature", "0"], "temperature"),
        (["--batch-size", "5000"], "larger than the dataset"),
        (["--checkpoint-every", "-1"], "checkpoint-every"),
    ],
)
def test_bad_options_are_one_line_errors(digits_reference, tmp_path, extra, message):
    proc = run_cli(
        "train", *COMMON, "--epochs", "1", "--reference", str(digits_reference), "--out", str(tmp_path / "x"), *extra
    )
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.startswith("error:")


def test_reference_of_another_architecture_is_refused(tmp_path):
    other = tmp_path / "cnn.pt"
    assert (
        run_cli(
            "train",
            "--data",
            "digits",
            "--arch",
            "small_cnn",
            "--epochs",
            "1",
            "--batch-size",
            "256",
            "--quiet",
            "--out",
            str(tmp_path / "cnn"),
            "--save-model",
            str(other),
        ).returncode
        == 0
    )
    proc = run_cli("train", *COMMON, "--epochs", "1", "--reference", str(other), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "first mismatched tensor" in proc.stderr


def test_reference_from_another_init_is_warned_and_recorded(digits_reference, tmp_path):
    proc = _train(tmp_path / "seed1", digits_reference, "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "DIFFERENT initial weights" in proc.stderr
    meta = open_run(tmp_path / "seed1").meta
    assert meta["same_init"] is False and any("DIFFERENT" in w for w in meta["warnings"])


def test_a_checkpoint_scored_against_itself_scores_0_in_every_chunk(digits_reference, tmp_path):
    args = [
        "score",
        "--data",
        "digits",
        "--arch",
        "mlp",
        "--model",
        str(digits_reference),
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--chunk-size",
        "300",
        "--quiet",
    ]
    proc = run_cli(*args, "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    run = open_run(tmp_path / "s")
    assert len(run.scores) == 1797 and len(list((tmp_path / "s" / "scores").glob("chunk-*.parquet"))) == 6
    # identical model and reference: every score is exactly 0 (and the scorer says so)
    assert np.allclose(run.scores["proj"], 0.0)


def test_nan_loss_stops_naming_the_samples_and_marks_the_run_failed(digits_reference, tmp_path):
    state = torch.load(digits_reference, weights_only=True)
    state["head.bias"][0] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    out = tmp_path / "nan"
    proc = run_cli(
        "train",
        *COMMON,
        "--epochs",
        "2",
        "--init",
        str(broken),
        "--reference",
        str(digits_reference),
        "--out",
        str(out),
    )
    assert proc.returncode == 2
    assert "non-finite loss for sample(s) digits-" in proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "non-finite" in meta["error"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mimic_explorer", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_two_commands_writing_one_run_directory_are_refused(digits_reference, tmp_path):
    out = tmp_path / "shared"
    args = [
        "train",
        *COMMON,
        "--epochs",
        "40",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--out",
        str(out),
    ]
    first = _start(args)
    try:
        wait_for((out / ".lock").exists, 60, "the first command's lock", process=first, interval=0.02)
        parts_before = sorted(p.name for p in (out / "scores").glob("*.parquet"))
        second = run_cli(*args)
        assert second.returncode == 2
        assert "being written by another process" in second.stderr
        parts_after = sorted(p.name for p in (out / "scores").glob("*.parquet"))
        assert set(parts_before) <= set(parts_after)  # the refused command deleted nothing
    finally:
        first.kill()
        first.wait()
