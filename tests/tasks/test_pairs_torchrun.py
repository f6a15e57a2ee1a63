"""Real ``torchrun --nproc_per_node=2`` (gloo, CPU) on an image-text pool (27 real Flickr8k pairs, tiny
built-in dual encoders): ``score`` and Grad-Mimic ``train --frozen-towers``.

What two processes guarantee for ``score``: chunk c (contiguous pool positions) goes to rank c mod 2 and
is cut into batches by the pool's order alone (``commands/score.py``), so every pair is scored with the
batch-mates one process gives it: the two runs agree on every column, the batch-relative ones (a pair's
loss and mimic score are its InfoNCE term *within its batch*) included — and a run killed under two
processes resumes in one and gives the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.data.specs import open_source
from mimic_explorer.scoring import mimic_scores
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from tests.conftest import run_cli, run_torchrun
from tests.pairs_helpers import batch_of, needs_flickr, scored_pool

pytestmark = [needs_flickr, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

PAIRS = 27  # odd: rank 0 holds 14 pairs, rank 1 13
BATCH = ["--batch-size", "4", "--device", "cpu", "--quiet"]
#: columns of samples.parquet that do not depend on the batch a pair was scored in
BATCH_FREE = ["clip_score_ref", "clip_score_model"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return scored_pool(tmp_path_factory.mktemp("pairs-ddp"), PAIRS)


SCORE_COLUMNS_EXACT = ["sample_id", "caption", "caption_truncated", "score_batch", "batch_size"]


def _score_args(pool, chunk_size: int) -> list[str]:
    spec, model_path, reference_path = pool
    return [
        "score",
        "--data",
        spec,
        "--arch",
        "small_dual",
        "--model",
        str(model_path),
        "--reference",
        str(reference_path),
        "--chunk-size",
        str(chunk_size),
        *BATCH,
    ]


def _same_samples(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Two runs' samples agree: ids, captions and batches exactly, every number within float noise."""
    a, b = a.sort_values("sample_id").reset_index(drop=True), b.sort_values("sample_id").reset_index(drop=True)
    assert list(a.columns) == list(b.columns) and b["sample_id"].is_unique and len(b) == PAIRS
    for column in SCORE_COLUMNS_EXACT:
        assert a[column].tolist() == b[column].tolist(), column
    for column in a.columns:
        if column not in SCORE_COLUMNS_EXACT and pd.api.types.is_float_dtype(a[column]):
            np.testing.assert_allclose(b[column], a[column], rtol=1e-5, atol=1e-6, err_msg=column)


def test_torchrun_pairs_score_equals_one_process(pool, tmp_path):
    """Chunks of contiguous positions go to the ranks in turn and are cut into batches by the pool's
    order alone, so two processes score every pair with the batch-mates one process gives it."""
    args = [*_score_args(pool, 7), "--test-data", pool[0]]  # held-out clean pairs: the pool's own photos
    single = run_cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    multi = run_torchrun(*args, "--out", str(tmp_path / "two"), timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, two = open_run(tmp_path / "one"), open_run(tmp_path / "two")
    assert two.meta["world_size"] == 2 and two.meta["status"] == "complete"
    parts = sorted(p.name for p in (tmp_path / "two" / "scores").glob("chunk-*-rank*.parquet"))
    assert {name.split("-rank")[1] for name in parts} == {"000.parquet", "001.parquet"}
    _same_samples(one.samples, two.samples)
    # the split's estimate from every rank's chunk totals (embedding sums), and the embeddings by samples row
    split_one, split_two = (r.meta["summary"]["combined_split"] for r in (one, two))
    assert split_one["method"] == split_two["method"] == "held-out clean pairs"
    assert split_two["estimated_quality"] == pytest.approx(split_one["estimated_quality"], abs=1e-6)
    assert (one.samples["combined_keep"] == two.samples["combined_keep"]).all()
    for side in ("image", "text"):
        np.testing.assert_allclose(np.asarray(two.embedding(side)), np.asarray(one.embedding(side)), atol=1e-3)
    assert all(two.thumbnails.get(s) is not None for s in two.samples["sample_id"])  # every rank's pairs, for the app
    # every pair in exactly one batch of consecutive pool positions; the batch-relative columns are the
    # scorer's on the batch each pair was scored in
    source = open_source(two.meta["config"]["data"])
    batches = two.samples.assign(position=[source.index_of(s) for s in two.samples["sample_id"]]).groupby("score_batch")
    sizes = batches.size()
    assert (batches["batch_size"].first() == sizes).all() and sizes.sum() == PAIRS and (sizes >= 2).all()
    assert (batches["position"].agg(lambda p: p.max() - p.min() + 1) == sizes).all()
    model, config = load_pair_model(str(pool[1]), "small_dual", "--model")
    reference, _ = load_pair_model(str(pool[2]), "small_dual", "--reference")
    names = two.meta["params"].split(",")
    for number in sizes.index:
        rows, inputs = batch_of(two.samples, number, source, model.eval(), dual_transform(model, config))
        expected = mimic_scores(model, reference.eval(), inputs, None, params=names, loss=InfoNCELoss())
        np.testing.assert_allclose(rows["proj_last"].to_numpy(), expected.double().numpy(), rtol=1e-4, atol=1e-6)


def test_torchrun_redrawn_pairs_score_equals_one_process(pool, tmp_path):
    """--redraws: each chunk's shuffles are seeded by the chunk alone, so the rank that scores it makes the same
    batchings, and rank 0 sums every rank's batch-noise totals into the same summary."""
    args = [*_score_args(pool, 7), "--redraws", "3", "--seed", "5"]
    single = run_cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    multi = run_torchrun(*args, "--out", str(tmp_path / "two"), timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, two = open_run(tmp_path / "one"), open_run(tmp_path / "two")
    assert two.meta["world_size"] == 2
    _same_samples(one.samples, two.samples)
    noise_one, noise_two = (r.meta["summary"]["pairs"]["batch_noise"] for r in (one, two))
    assert noise_one["pairs"] == noise_two["pairs"] == PAIRS
    assert noise_two["noise_share_one_draw"] == pytest.approx(noise_one["noise_share_one_draw"], rel=1e-4)


def test_pairs_score_killed_under_torchrun_resumes_in_one_process(pool, tmp_path):
    """kill -9 of one rank of ``torchrun --nproc_per_node=2 score`` after its second chunk part, then the
    same command in one process: the run completes with every pair once, equal to an uninterrupted run."""
    args = _score_args(pool, 3)  # 9 chunks: rank 0 scores 0, 2, 4, 6, 8
    out = tmp_path / "killed"
    killer = Path(__file__).resolve().parents[1] / "faults" / "killer.py"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "MIMIC_EXPLORER_KILL_AFTER": "2",
        "MIMIC_EXPLORER_KILL_MATCH": "-rank000.parquet",
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
    assert killed.returncode != 0
    written = {p.name for p in (out / "scores").glob("chunk-*.parquet")}
    assert {"chunk-000000-rank000.parquet", "chunk-000002-rank000.parquet"} <= written and len(written) < 9
    assert json.loads((out / "meta.json").read_text())["status"] == "running"  # killed: nothing marked it failed
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    whole = run_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    run = open_run(out)
    assert run.meta["status"] == "complete" and not (out / ".lock").exists()
    rows = pd.concat([pd.read_parquet(p) for p in run.layout.chunk_parts()], ignore_index=True)
    assert rows["sample_id"].is_unique and len(rows) == PAIRS  # every pair scored exactly once
    _same_samples(open_run(tmp_path / "whole").samples, run.samples)
    assert not list(out.rglob("*.tmp*")) and not run.layout.error_parts()


def trained_on_two_ranks(out, *args: str):
    """A 2-epoch ``torchrun train`` of the built-in dual encoder into ``out``, checked to be complete with
    every pair recorded once an epoch by one of the two ranks, and the ranks stepping together (one
    gradient all-reduce a step: rank 0's 14 pairs and rank 1's 13 once made 4 and 3 batches of 4, and
    the run hung); returns the run and its epoch rows."""
    proc = run_torchrun("train", "--arch", "small_dual", *args, "--epochs", "2", *BATCH, "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    run = open_run(out)
    assert run.meta["world_size"] == 2 and run.meta["status"] == "complete"
    parts = run.layout.epoch_parts()
    assert {p.name.split("-rank")[1] for p in parts} == {"000.parquet", "001.parquet"}
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    counts = rows.groupby(["sample_id", "epoch"]).size()
    assert (counts == 1).all() and len(counts) == PAIRS * 2
    assert rows.groupby("epoch")["step"].nunique().tolist() == [3, 3]  # 14 = 4 + 4 + 6 and 13 = 4 + 4 + 5
    # step numbers count the ranks' common batches: epoch e holds steps 3e, 3e + 1, 3e + 2 on both ranks
    assert sorted(rows.groupby("epoch")["step"].unique().map(sorted).tolist()) == [[0, 1, 2], [3, 4, 5]]
    return run, rows


def test_torchrun_pairs_grad_mimic_records_every_pair_once_per_epoch(pool, tmp_path):
    spec, _, reference_path = pool
    run, rows = trained_on_two_ranks(
        tmp_path / "ddp",
        "--data",
        spec,
        "--frozen-towers",
        "--reference",
        str(reference_path),
        "--caption-noise",
        "0.3",
    )
    # each step holds one local batch of each rank, whose Stage-1 weights sum to 1
    sums = rows.groupby(["epoch", "step"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 2.0, rtol=1e-5)
    samples = run.samples
    assert len(samples) == PAIRS and samples["sample_id"].is_unique
    assert set(samples["sample_id"]) == set(open_source(spec).sample_ids)
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert samples.groupby("score_batch")["batch_size"].first().sum() == PAIRS
    assert int(samples["is_noisy"].sum()) == int(0.3 * PAIRS)


def test_torchrun_pairs_training_the_towers_records_every_pair_once_per_epoch(pool, tmp_path):
    """The towers train (each epoch's pairs decoded again, ``training/pool_batches.StreamedPairs``)."""
    run, _ = trained_on_two_ranks(tmp_path / "ddp", "--data", pool[0])
    assert len(run.samples) == PAIRS and set(run.samples["sample_id"]) == set(open_source(pool[0]).sample_ids)
