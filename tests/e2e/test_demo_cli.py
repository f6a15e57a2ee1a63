"""The embedded demo, end to end through the real CLI: contract, detection quality, bad input."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from mimic_explorer import open_run
from mimic_explorer.store.reader import RunError
from tests.conftest import run_cli, run_cli_killed

pytestmark = pytest.mark.slow  # whole module: real runs or subprocesses


def test_demo_run_follows_the_run_directory_contract(demo_run):
    run = open_run(demo_run)
    assert run.meta["status"] == "complete"
    for key in ("config", "fingerprints", "versions", "device", "timings"):
        assert key in run.meta
    samples = run.samples
    for column in (
        "sample_id",
        "source",
        "label",
        "mimic_score",
        "keep",
        "true_label",
        "is_noisy",
        "reference_loss",
        "reducible_loss",
        "grand",
        "proj_mean",
        "proj_min",
        "proj_last",
    ):
        assert column in samples.columns, column
    assert samples["sample_id"].is_unique
    assert samples["keep"].dtype == bool
    scores = run.scores
    epochs = run.meta["config"]["epochs"]
    # every sample, every epoch, exactly once
    counts = scores.groupby("sample_id")["epoch"].nunique()
    assert len(counts) == len(samples) and (counts == epochs).all()
    assert len(scores) == len(samples) * epochs
    assert {"sample_id", "epoch", "step", "proj", "weight"} <= set(scores.columns)
    # Stage-1 weights are a softmax over each batch: they sum to 1 per step
    np.testing.assert_allclose(scores.groupby("step")["weight"].sum(), 1.0, rtol=1e-6)


def test_demo_noise_is_the_papers_symmetric_definition(demo_run):
    samples = open_run(demo_run).samples
    n = len(samples)
    assert samples["is_noisy"].sum() == int(0.3 * n)
    noisy = samples[samples["is_noisy"]]
    assert (noisy["label"] != noisy["true_label"]).all()
    clean = samples[~samples["is_noisy"]]
    assert (clean["label"] == clean["true_label"]).all()


def test_demo_detects_noisy_labels_as_well_as_the_prototype(demo_run):
    samples = open_run(demo_run).samples
    auroc = roc_auc_score(samples["is_noisy"], -samples["mimic_score"])
    f1 = f1_score(samples["is_noisy"], ~samples["keep"])
    quality_error = abs(samples["keep"].mean() - (1 - samples["is_noisy"].mean()))
    assert auroc >= 0.97
    assert f1 >= 0.93
    assert quality_error <= 0.03


def test_majority_vote_keep_matches_mimic_score_cut(demo_run):
    samples = open_run(demo_run).samples
    assert ((samples["mimic_score"] >= 0.5) == samples["keep"]).all()


def test_demo_prints_summary_and_run_dir_last(tmp_path):
    out = tmp_path / "d"
    proc = run_cli("demo", "--out", str(out), "--epochs", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out.resolve())
    text = proc.stdout
    assert "AUROC" in text and "F1" in text and "plain" in text and "Grad-Mimic" in text and "estimated" in text


def test_the_same_demo_command_returns_the_finished_run_and_another_is_refused(demo_run):
    samples = demo_run / "samples.parquet"
    before = samples.stat().st_mtime_ns
    again = run_cli("demo", "--out", str(demo_run), "--quiet")
    assert again.returncode == 0, again.stderr
    assert "cached" in again.stderr and "AUROC" in again.stdout
    assert again.stdout.strip().splitlines()[-1] == str(demo_run.resolve())
    other = run_cli("demo", "--out", str(demo_run), "--epochs", "2", "--quiet")
    assert other.returncode == 2 and "different run" in other.stderr and "--force" in other.stderr
    assert samples.stat().st_mtime_ns == before and open_run(demo_run).meta["config"]["epochs"] == 20


def test_demo_thumbnails_are_real_images(demo_run):
    import io

    from PIL import Image

    run = open_run(demo_run)
    sample_id = run.samples["sample_id"].iloc[0]
    image = Image.open(io.BytesIO(run.thumbnails.get(sample_id)))
    assert image.size == (8, 8)  # small images keep their size; the galleries scale them up
    assert np.asarray(image.convert("L")).std() > 10  # a digit, not a blank


def test_demo_out_pointing_at_a_file_is_a_one_line_error(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    proc = run_cli("demo", "--out", str(target), "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "not a directory" in proc.stderr
    assert target.read_text() == "keep me"


def test_demo_out_in_an_unusable_place_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("demo", "--out", str(blocker / "sub" / "run"), "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.strip().count("\n") == 0


def test_killed_demo_is_never_opened_as_complete(tmp_path):
    out = tmp_path / "killed"
    killed = run_cli_killed(1, "epoch-", "demo", "--out", str(out), "--quiet")  # kill -9 after the first epoch part
    assert killed.returncode == -signal.SIGKILL
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "running"
    with pytest.raises(RunError, match="not complete"):
        open_run(out)
    # the same command afterwards completes the run (the stale lock of the dead process is taken over)
    again = run_cli("demo", "--out", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    assert open_run(out).status == "complete"


def test_interrupted_demo_is_marked_failed(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first epoch part (a KeyboardInterrupt raised right after it is committed, where
    Python's SIGINT handler would raise it): the run is marked failed, and the command exits 130."""
    import torch

    from mimic_explorer.cli import main

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the demo asks for more: not in this process
    out = tmp_path / "interrupted"
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if os.path.basename(dst).startswith("epoch-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    status = main(["demo", "--out", str(out), "--quiet"])
    monkeypatch.undo()
    assert status == 130
    assert "interrupted" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed"
    with pytest.raises(RunError):
        open_run(out)
