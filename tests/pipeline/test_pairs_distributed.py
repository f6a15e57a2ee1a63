"""Real ``torchrun --nproc_per_node=2`` (gloo, CPU) on an image-text pool (27 real Flickr8k pairs, tiny
built-in dual encoders): ``score`` and Grad-Mimic ``train --frozen-towers``.

What two processes guarantee for ``score``: each rank scores the pool positions ``rank, rank + world,
…`` (``pipeline/pairs_score.py``), cut into its own chunks and batches, so the scoring batches are not
the single process's. A pair's caption and its CLIP scores under model and reference (the cosine of its
own two embeddings) do not depend on the batch and equal the single process's; its loss, reference
loss and mimic score are its InfoNCE term *within its batch*, so they differ from the single process's
and are checked instead against the scorer on the batch the run recorded (``score_batch``): that batch
holds pairs of one rank only, and every pair sits in exactly one batch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.data.sources import open_source
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from mimic_explorer.scoring import mimic_scores
from mimic_explorer.scoring.contrastive import InfoNCELoss
from tests.conftest import run_cli, run_torchrun
from tests.pairs_helpers import batch_of, needs_flickr, scored_pool

pytestmark = [needs_flickr, pytest.mark.slow]

PAIRS = 27  # odd: rank 0 holds 14 pairs, rank 1 13
BATCH = ["--batch-size", "4", "--device", "cpu", "--quiet"]
#: columns of samples.parquet that do not depend on the batch a pair was scored in
BATCH_FREE = ["clip_score_ref", "clip_score_model"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return scored_pool(tmp_path_factory.mktemp("pairs-ddp"), PAIRS)


def test_torchrun_pairs_score_agrees_with_one_process_on_every_batch_free_column(pool, tmp_path):
    spec, model_path, reference_path = pool
    args = ["score", "--data", spec, "--arch", "small_dual", "--model", str(model_path), "--reference", str(reference_path),
            "--chunk-size", "7", *BATCH]
    single = run_cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    multi = run_torchrun(*args, "--out", str(tmp_path / "two"), timeout=300)
    assert multi.returncode == 0, multi.stderr
    one, two = open_run(tmp_path / "one"), open_run(tmp_path / "two")
    assert two.meta["world_size"] == 2 and two.meta["status"] == "complete"
    parts = sorted(p.name for p in (tmp_path / "two" / "scores").glob("chunk-*-rank*.parquet"))
    assert {name.split("-rank")[1] for name in parts} == {"000.parquet", "001.parquet"}
    a = one.samples.set_index("sample_id").sort_index()
    b = two.samples.set_index("sample_id").sort_index()
    assert b.index.is_unique and len(b) == PAIRS and (a.index == b.index).all()
    assert (a["caption"] == b["caption"]).all() and (a["caption_truncated"] == b["caption_truncated"]).all()
    for column in BATCH_FREE:
        np.testing.assert_allclose(b[column], a[column], rtol=1e-6, atol=1e-6, err_msg=column)
    # every pair in exactly one batch, each batch of one rank's pairs (positions of one parity), sizes recorded
    source = open_source(spec)
    batches = two.samples.assign(position=[source.index_of(s) for s in two.samples["sample_id"]]).groupby("score_batch")
    sizes = batches.size()
    assert (batches["batch_size"].nunique() == 1).all() and (batches["batch_size"].first() == sizes).all()
    assert sizes.sum() == PAIRS and (sizes >= 2).all()
    assert (batches["position"].agg(lambda p: (p % 2).nunique()) == 1).all()
    assert sorted(sizes.index) == list(range(len(sizes)))
    assert all(two.thumbnails.get(s) is not None for s in two.samples["sample_id"])  # every rank's pairs, for the app
    # the batch-relative columns are the scorer's on the batch each pair was scored in
    model, config = load_pair_model(str(model_path), "small_dual", "--model")
    reference, _ = load_pair_model(str(reference_path), "small_dual", "--reference")
    names = two.meta["params"].split(",")
    for number in sizes.index:
        rows, inputs = batch_of(two.samples, number, source, model.eval(), dual_transform(model, config))
        expected = mimic_scores(model, reference.eval(), inputs, None, params=names, loss=InfoNCELoss())
        np.testing.assert_allclose(rows["proj_last"].to_numpy(), expected.double().numpy(), rtol=1e-4, atol=1e-6)


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
    run, rows = trained_on_two_ranks(tmp_path / "ddp", "--data", spec, "--frozen-towers", "--reference", str(reference_path),
                                     "--caption-noise", "0.3")
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
    """The towers train (each epoch's pairs decoded again, ``pipeline/pair_stream.py``)."""
    run, _ = trained_on_two_ranks(tmp_path / "ddp", "--data", pool[0])
    assert len(run.samples) == PAIRS and set(run.samples["sample_id"]) == set(open_source(pool[0]).sample_ids)
