"""Real image pools through the CLI: bad files never kill a run, and one pool in three forms scores the same."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from tests.conftest import run_cli
from tests.data.test_sources import CLASSES, FIXTURE, fixture_items, make_messy_pool, write_pool_shards

pytestmark = pytest.mark.slow  # whole module: real runs or subprocesses

SMALL = ["--arch", "small_cnn", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A model and a reference for the 10-class fixture pool (plain training, same init)."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = []
    for name, epochs in (("model", 1), ("reference", 3)):
        path = root / f"{name}.pt"
        proc = run_cli(
            "train",
            "--data",
            f"folder:{FIXTURE}",
            *SMALL,
            "--epochs",
            str(epochs),
            "--out",
            str(root / name),
            "--save-model",
            str(path),
        )
        assert proc.returncode == 0, proc.stderr
        paths.append(path)
    return paths[0], paths[1]


def test_folder_pool_with_2_percent_bad_files_completes(tmp_path, checkpoints):
    model, reference = checkpoints
    expected_bad = make_messy_pool(tmp_path / "pool")
    (tmp_path / "pool" / "classes.txt").write_text("\n".join(CLASSES))
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--data",
        f"folder:{tmp_path / 'pool'}",
        *SMALL,
        "--epochs",
        "2",
        "--init",
        str(model),
        "--reference",
        str(reference),
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 bad sample(s)" in proc.stdout
    run = open_run(out)
    assert len(run.samples) == 98 and set(expected_bad).isdisjoint(run.samples["sample_id"])
    assert run.scores.groupby("sample_id")["epoch"].nunique().eq(2).all() and run.scores["sample_id"].nunique() == 98
    errors = pd.read_parquet(out / "errors.parquet")
    assert set(errors["sample_id"]) == set(expected_bad)
    for sample_id, fragment in expected_bad.items():
        assert fragment in errors.set_index("sample_id").loc[sample_id, "reason"].lower()
    assert all(run.thumbnails.get(s) for s in run.samples["sample_id"])


def test_same_pool_as_folder_manifest_and_shards_scores_the_same(tmp_path, checkpoints):
    model, reference = checkpoints
    items = fixture_items()
    rel = os.path.relpath(FIXTURE, tmp_path)
    pd.DataFrame(
        {
            "path": [f"{rel}/{CLASSES[lab]}/{key}.jpg" for key, lab, _ in items],
            "label": [CLASSES[lab] for _, lab, _ in items],
        }
    ).to_csv(tmp_path / "pool.csv", index=False)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    write_pool_shards(tmp_path / "shards", items[::-1], shards=2)
    specs = {
        "folder": f"folder:{FIXTURE}",
        "manifest": f"manifest:{tmp_path / 'pool.csv'}",
        "wds": f"wds:{tmp_path / 'shards'}/pool-{{00..01}}.tar",
    }
    results = {}
    for name, spec in specs.items():
        out = tmp_path / name
        proc = run_cli(
            "score", "--data", spec, *SMALL, "--model", str(model), "--reference", str(reference), "--out", str(out)
        )
        assert proc.returncode == 0, proc.stderr
        run = open_run(out)
        frame = (
            run.samples.assign(stem=run.samples["sample_id"].map(lambda s: Path(s).stem)).set_index("stem").sort_index()
        )
        scores = (
            run.scores.assign(stem=run.scores["sample_id"].map(lambda s: Path(s).stem)).set_index("stem").sort_index()
        )
        results[name] = (frame, scores)
    folder_samples, folder_scores = results["folder"]
    assert len(folder_samples) == 30
    for name in ("manifest", "wds"):
        samples, scores = results[name]
        assert list(samples.index) == list(folder_samples.index)
        np.testing.assert_array_equal(samples["label"], folder_samples["label"])
        np.testing.assert_allclose(scores["proj"], folder_scores["proj"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(scores["loss"], folder_scores["loss"], rtol=1e-5, atol=1e-7)


def test_linear_probe_runs_share_cached_features_and_still_get_thumbnails(tmp_path, checkpoints):
    model, reference = checkpoints
    cache = tmp_path / "cache"
    env = {"MIMIC_EXPLORER_CACHE": str(cache)}
    args = ["train", "--data", f"folder:{FIXTURE}", *SMALL, "--epochs", "2", "--init", str(model), "--linear-probe"]
    first = run_cli(*args, "--out", str(tmp_path / "a"), env=env)
    assert first.returncode == 0, first.stderr
    assert len(list((cache / "features").glob("*/entry.json"))) == 1  # one streamed cache entry (a folder)
    second = run_cli(
        *args, "--reference", str(reference), "--label-noise", "0.3", "--out", str(tmp_path / "b"), env=env
    )
    assert second.returncode == 0, second.stderr
    run = open_run(tmp_path / "b")
    assert run.meta["timings"]["features_cached"] is True
    assert len(list((cache / "features").glob("*/entry.json"))) == 1  # one streamed cache entry (a folder)
    assert all(run.thumbnails.get(s) for s in run.samples["sample_id"])
