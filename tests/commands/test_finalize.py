"""Finishing a real run: the combined score beside mimic_score, and chunked Stage 2 equal to in-memory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mimic_explorer.commands.finalize import PoolView, Stage2Options, add_stage2, combined_split, finish_samples
from mimic_explorer.stage2 import baselines
from mimic_explorer.stage2 import votes as stage2
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.score_rows import ScoreRows
from mimic_explorer.store.writer import SamplesWriter
from tests.conftest import COMMON, run_cli

pytestmark = pytest.mark.slow  # a real training run

BASE = ["sample_id", "source", "label", "true_label", "is_noisy"]
SIGNALS = ["reference_loss", "model_loss", "reducible_loss", "grand"]


@pytest.fixture(scope="module")
def real_run(digits_reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finalize") / "run"
    proc = run_cli(
        "train",
        *COMMON,
        "--epochs",
        "3",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _scores(run: Path) -> pd.DataFrame:
    return ScoreRows(run).range(0, 1 << 40)


def test_the_combined_score_is_written_beside_mimic_score_as_the_library_computes_it(real_run):
    samples = pd.read_parquet(real_run / "samples.parquet")
    scores = _scores(real_run)
    expected_cos = scores.groupby("sample_id")["cos"].mean().reindex(samples["sample_id"]).to_numpy()
    np.testing.assert_allclose(samples["cos_mean"].to_numpy(), expected_cos, rtol=1e-12)
    parts = [samples[c].to_numpy() for c in ("cos_mean", "reference_loss", "model_loss")]
    combined = baselines.combined_score(*parts)  # mean cos, the reference's loss and the model's own
    assert np.array_equal(samples["combined_score"].to_numpy(), combined)
    # the split: the top q̂ of the score, q̂ the noise model's clean fraction from the reference's class
    # probabilities (the run's reference_probs.npy); recomputed from the files, it is the same
    probs = np.load(real_run / "reference_probs.npy")
    _, keep, report = combined_split(
        parts[0], parts[1], samples["label"].to_numpy(), probs, model_loss=samples["model_loss"].to_numpy()
    )
    assert np.array_equal(samples["combined_keep"].to_numpy(), keep)
    assert report.method == "noise model"
    assert abs(keep.mean() - (1 - samples["is_noisy"].mean())) < 0.05  # 30 % injected noise
    meta = json.loads((real_run / "meta.json").read_text())
    assert meta["summary"]["combined_quality"] == pytest.approx(keep.mean())
    written = meta["summary"]["combined_split"]
    assert written["method"] == "noise model" and written["warnings"] == list(report.warnings)
    assert written["estimated_quality"] == pytest.approx(report.estimated_quality)
    assert written["separation"] == pytest.approx(report.separation)
    assert "combined_score" in meta["evaluation"]
    assert meta["evaluation"]["combined_score"]["auroc"] > 0.6


def _refinish(run: Path, tmp_path: Path, options: Stage2Options, row_group_rows: int) -> tuple[pd.DataFrame, object]:
    """Finish a copy of ``run`` again from its score parts, with its pool's base columns and signals."""
    copy = tmp_path / f"copy-{options.binarisation}-{options.chunk}"
    shutil.copytree(run, copy)
    samples = pd.read_parquet(run / "samples.parquet")
    signals = {name: samples[name].to_numpy() for name in SIGNALS}
    signals["model_pred"] = samples["pred"].to_numpy(dtype=np.int64)
    signals["ref_pred"] = samples["ref_pred"].to_numpy(dtype=np.int64)
    signals["ref_prob"] = samples["ref_prob"].to_numpy()
    signals["reference_probs"] = np.load(run / "reference_probs.npy")
    pool = PoolView(
        len(samples),
        np.zeros(0, dtype=np.int64),
        lambda positions: samples[BASE].iloc[positions],
        lambda positions: {name: values[positions] for name, values in signals.items()},
    )
    layout = RunLayout(copy)
    writer = SimpleNamespace(layout=layout, samples_writer=lambda: SamplesWriter(layout.samples, row_group_rows))
    finished = finish_samples(writer, pool, options)
    return pd.read_parquet(layout.samples), finished


def _in_memory(run: Path, tmp_path: Path, binarisation: str, cap: int) -> pd.DataFrame:
    samples = pd.read_parquet(run / "samples.parquet")[[*BASE, *SIGNALS, "pred", "ref_pred", "ref_prob"]]
    probs = np.load(run / "reference_probs.npy")
    frame = add_stage2(samples, _scores(run), binarisation, "majority", cap=cap, reference_probs=probs)
    path = tmp_path / f"in-memory-{binarisation}.parquet"
    with SamplesWriter(path) as writer:
        writer.write(frame)
    return pd.read_parquet(path)


def test_chunked_stage2_writes_the_same_samples_as_the_run_and_as_the_in_memory_path(real_run, tmp_path):
    chunked, finished = _refinish(
        real_run, tmp_path, Stage2Options("weight", "majority", chunk=256), row_group_rows=500
    )
    written = pd.read_parquet(real_run / "samples.parquet")
    pd.testing.assert_frame_equal(chunked, written, check_exact=True)
    pd.testing.assert_frame_equal(chunked, _in_memory(real_run, tmp_path, "weight", stage2.FIT_CAP), check_exact=True)
    assert pq.ParquetFile(tmp_path / "copy-weight-256" / "samples.parquet").num_row_groups == 4  # 1797 rows by 500
    meta = json.loads((real_run / "meta.json").read_text())
    assert finished.evaluation["mimic_score"] == pytest.approx(meta["evaluation"]["mimic_score"])
    assert not list((tmp_path / "copy-weight-256" / "scores").glob(".*"))  # the scratch file is gone


def test_chunked_two_group_fits_on_a_subsample_match_the_in_memory_path(real_run, tmp_path):
    options = Stage2Options("gmm", "majority", chunk=128, cap=500)  # the fits see ~500 of 1,797 samples
    chunked, _ = _refinish(real_run, tmp_path, options, row_group_rows=65_536)
    in_memory = _in_memory(real_run, tmp_path, "gmm", cap=500)
    pd.testing.assert_frame_equal(chunked, in_memory, check_exact=True)
    assert 0.2 < chunked["keep"].mean() < 1.0
