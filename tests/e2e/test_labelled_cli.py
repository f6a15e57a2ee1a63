"""``mimic-explorer train`` / ``score`` end to end on real data: contract, cache, resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer import open_run
from tests.conftest import COMMON, run_cli

pytestmark = pytest.mark.slow  # whole module: real runs or subprocesses

def _train(out: Path, reference: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", *COMMON, "--epochs", "4", "--reference", str(reference), "--label-noise", "0.3",
                   "--out", str(out), *extra)


def test_reference_checkpoint_has_its_init_fingerprint(digits_reference):
    side = json.loads(Path(str(digits_reference) + ".meta.json").read_text())
    assert side["arch"] == "mlp" and len(side["init_fingerprint"]) == 16
    state = torch.load(digits_reference, weights_only=True)
    assert "head.weight" in state


def test_grad_mimic_run_records_every_sample_each_epoch(digits_reference, tmp_path):
    proc = _train(tmp_path / "gm", digits_reference)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str((tmp_path / "gm").resolve())
    assert "mimic_score" in proc.stdout and "reference_loss" in proc.stdout  # evaluation table with baselines
    run = open_run(tmp_path / "gm")
    samples, scores = run.samples, run.scores
    assert len(samples) == 1797 and samples["sample_id"].is_unique
    assert samples["is_noisy"].sum() == int(0.3 * 1797)
    assert (scores.groupby(["sample_id", "epoch"]).size() == 1).all()
    assert scores.groupby("sample_id")["epoch"].nunique().eq(4).all()
    for column in ("proj", "weight", "loss", "pred", "cos"):
        assert scores[column].notna().all(), column
    for column in ("reference_loss", "reducible_loss", "grand", "proj_mean", "proj_min", "proj_last", "mimic_score", "keep"):
        assert samples[column].notna().all(), column
    evaluation = run.meta["evaluation"]
    assert {"mimic_score", "reference_loss", "reducible_loss", "grand"} <= set(evaluation)
    assert evaluation["mimic_score"]["auroc"] > 0.6  # far above chance even in 4 epochs
    assert run.meta["same_init"] is True
    assert not any("DIFFERENT" in w for w in run.meta["warnings"])


def test_same_command_twice_hits_the_cache_and_force_recomputes(digits_reference, tmp_path):
    out = tmp_path / "cache"
    assert _train(out, digits_reference).returncode == 0
    before = (out / "samples.parquet").stat().st_mtime_ns
    started = time.perf_counter()
    again = _train(out, digits_reference)
    assert again.returncode == 0 and "cached" in again.stderr
    assert (out / "samples.parquet").stat().st_mtime_ns == before
    forced = _train(out, digits_reference, "--force")
    assert forced.returncode == 0 and (out / "samples.parquet").stat().st_mtime_ns != before
    assert time.perf_counter() - started > 0  # both calls really ran


def test_a_different_run_in_the_same_directory_is_refused(digits_reference, tmp_path):
    out = tmp_path / "busy"
    assert _train(out, digits_reference).returncode == 0
    other = _train(out, digits_reference, "--temperature", "2")
    assert other.returncode == 2 and "different run" in other.stderr


def test_kill_9_then_same_command_equals_an_uninterrupted_run(digits_reference, tmp_path):
    args = ["train", *COMMON, "--epochs", "12", "--reference", str(digits_reference), "--label-noise", "0.3",
            "--checkpoint-every", "0"]
    assert run_cli(*args, "--out", str(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mimic_explorer", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "scores").glob("epoch-*.parquet"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "meta.json").read_text())["status"] == "running"
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    a, b = open_run(tmp_path / "whole"), open_run(out)
    key = ["epoch", "step", "sample_id"]
    pd.testing.assert_frame_equal(a.scores.sort_values(key).reset_index(drop=True), b.scores.sort_values(key).reset_index(drop=True))
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
    pd.testing.assert_frame_equal(a.scores.sort_values(key).reset_index(drop=True), b.scores.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(a.samples, b.samples)


@pytest.mark.parametrize("extra, message", [
    (["--label-noise", "1.0"], "label-noise"),
    (["--temperature", "0"], "temperature"),
    (["--batch-size", "5000"], "larger than the dataset"),
    (["--checkpoint-every", "-1"], "checkpoint-every"),
])
def test_bad_options_are_one_line_errors(digits_reference, tmp_path, extra, message):
    proc = run_cli("train", *COMMON, "--epochs", "1", "--reference", str(digits_reference), "--out", str(tmp_path / "x"), *extra)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.startswith("error:")


def test_reference_of_another_architecture_is_refused(tmp_path):
    other = tmp_path / "cnn.pt"
    assert run_cli("train", "--data", "digits", "--arch", "small_cnn", "--epochs", "1", "--batch-size", "256", "--quiet",
                   "--out", str(tmp_path / "cnn"), "--save-model", str(other)).returncode == 0
    proc = run_cli("train", *COMMON, "--epochs", "1", "--reference", str(other), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "first mismatched tensor" in proc.stderr


def test_reference_from_another_init_is_warned_and_recorded(digits_reference, tmp_path):
    proc = _train(tmp_path / "seed1", digits_reference, "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert "DIFFERENT initial weights" in proc.stderr
    meta = open_run(tmp_path / "seed1").meta
    assert meta["same_init"] is False and any("DIFFERENT" in w for w in meta["warnings"])


def test_score_a_fixed_checkpoint_and_resume_by_chunk(digits_reference, tmp_path):
    args = ["score", "--data", "digits", "--arch", "mlp", "--model", str(digits_reference), "--reference", str(digits_reference),
            "--label-noise", "0.3", "--chunk-size", "300", "--quiet"]
    proc = run_cli(*args, "--out", str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    run = open_run(tmp_path / "s")
    assert len(run.scores) == 1797 and run.scores["sample_id"].is_unique
    assert len(list((tmp_path / "s" / "scores").glob("chunk-*.parquet"))) == 6
    # identical model and reference: every score is exactly 0 (and the scorer says so)
    assert np.allclose(run.scores["proj"], 0.0)


def test_nan_loss_stops_naming_the_samples_and_marks_the_run_failed(digits_reference, tmp_path):
    state = torch.load(digits_reference, weights_only=True)
    state["head.bias"][0] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    out = tmp_path / "nan"
    proc = run_cli("train", *COMMON, "--epochs", "2", "--init", str(broken), "--reference", str(digits_reference),
                   "--out", str(out))
    assert proc.returncode == 2
    assert "non-finite loss for sample(s) digits-" in proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "non-finite" in meta["error"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mimic_explorer", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_9_during_score_resumes_from_the_last_chunk(digits_reference, tmp_path):
    args = ["score", "--data", "digits", "--arch", "mlp", "--model", str(digits_reference), "--reference", str(digits_reference),
            "--label-noise", "0.3", "--chunk-size", "60", "--batch-size", "20", "--quiet"]
    assert run_cli(*args, "--out", str(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    proc = _start([*args, "--out", str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "scores").glob("chunk-*.parquet"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "scores").glob("chunk-*.parquet")))
    assert 3 <= done_before < 30
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    a, b = open_run(tmp_path / "whole"), open_run(out)
    pd.testing.assert_frame_equal(a.scores.sort_values("sample_id").reset_index(drop=True),
                                  b.scores.sort_values("sample_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(a.samples, b.samples)


def test_two_commands_writing_one_run_directory_are_refused(digits_reference, tmp_path):
    out = tmp_path / "shared"
    args = ["train", *COMMON, "--epochs", "40", "--reference", str(digits_reference), "--label-noise", "0.3", "--out", str(out)]
    first = _start(args)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / ".lock").exists():
            time.sleep(0.02)
        parts_before = sorted(p.name for p in (out / "scores").glob("*.parquet"))
        second = run_cli(*args)
        assert second.returncode == 2
        assert "being written by another process" in second.stderr
        parts_after = sorted(p.name for p in (out / "scores").glob("*.parquet"))
        assert set(parts_before) <= set(parts_after)  # the refused command deleted nothing
    finally:
        first.kill()
        first.wait()
