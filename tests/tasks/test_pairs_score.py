"""``score`` on an image-text pool (a few dozen real Flickr8k pairs, a tiny built-in dual encoder): the
run's per-pair columns, ids that are the shards' uids, scores equal to the scorer's on the batch each
pair was scored in, caption noise, and options a pairs pool cannot take refused before anything is
written. What every task's ``score`` does (every sample once, resuming, bad samples, the other task's
options) is in tests/commands/test_task_contract.py."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.data.specs import open_source
from mimic_explorer.scoring import mimic_scores
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from tests.pairs_helpers import batch_of, expected_clean_fraction, needs_flickr, scored_pool, scored_pool_options

pytestmark = [needs_flickr, pytest.mark.slow]  # real runs: a few seconds each

PAIRS = 26  # batches of 8: 8 + 5 per chunk of 13, a remainder that is not a multiple of the batch


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return scored_pool(tmp_path_factory.mktemp("pairs"), PAIRS)


def options(pool, out, **kw) -> ScoreOptions:
    return scored_pool_options(pool, out, batch_size=8, chunk_size=13, **kw)


def test_pairs_run_writes_uids_captions_and_every_per_pair_column(pool, tmp_path):
    outcome = run_score(options(pool, tmp_path / "run", caption_noise=0.3, score_method="cos", mimic_layer="image"))
    run = open_run(outcome.path)
    samples = run.samples
    assert len(samples) == PAIRS and run.meta["status"] == "complete"
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in samples["sample_id"])  # the .json uids, DataComp's ids
    for column in (
        "caption",
        "mimic_score",
        "keep",
        "clip_score_ref",
        "clip_score_model",
        "reference_loss",
        "model_loss",
        "score_batch",
        "batch_size",
        "is_noisy",
        "true_caption",
    ):
        assert column in samples.columns, column
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert samples["is_noisy"].sum() == int(0.3 * PAIRS)
    noisy = samples[samples["is_noisy"]]
    assert (noisy["caption"] != noisy["true_caption"]).all()  # a derangement: no swapped pair kept its caption
    assert samples.groupby("score_batch").size().tolist() == [8, 5, 8, 5]  # chunk 13 = 8 + 5; never a pair alone
    assert (samples.groupby("score_batch")["batch_size"].first() == samples.groupby("score_batch").size()).all()
    assert run.meta["params"] == "image_projection.weight" and run.meta["source"]["pool_kind"] == "pairs"
    assert (
        run.meta["summary"]["pairs"]["batch_size"] == 8
        and "within its scoring batch" in run.meta["summary"]["pairs"]["loss"]
    )
    assert "clip_score_ref" in run.meta["evaluation"]
    assert all(run.thumbnails.get(s)[8:12] == b"WEBP" for s in samples["sample_id"])  # the photos, for the app


def test_held_out_clean_pairs_set_the_score_runs_split(pool, tmp_path):
    """score --test-data: as a train run's, the split keeps the top q̂, q̂ from the held-out pairs and the pool's
    embedding sums (kept per chunk, so also with --no-embeddings and whichever rank scored a chunk)."""
    spec = pool[0]
    run = open_run(run_score(options(pool, tmp_path / "run", caption_noise=0.3, test_data=spec)).path)
    bare = open_run(
        run_score(options(pool, tmp_path / "bare", caption_noise=0.3, test_data=spec, embeddings=False)).path
    )
    split = run.meta["summary"]["combined_split"]
    assert split["method"] == "held-out clean pairs"
    assert bare.meta["summary"]["combined_split"] == split and bare.layout.embedding_sources() == []
    samples = run.samples
    assert samples["combined_keep"].mean() == pytest.approx(split["estimated_quality"], abs=1 / len(samples) + 1e-9)
    # the estimate from the run's own files: the held-out pairs here are the pool's own photos with their own
    # captions (all clean), so q̂ places the noisy pool between them and its wrong pairings
    assert split["estimated_quality"] == pytest.approx(expected_clean_fraction(run, pool[2], spec), abs=2e-3)


@pytest.mark.parametrize(
    "layers",
    [dict(mimic_layer="text"), dict(params="text_tower.mlp.2.weight,text_projection.weight")],
    ids=["mimic-layer", "params"],
)
def test_scores_equal_the_scorer_on_the_batch_each_pair_was_scored_in(pool, tmp_path, layers):
    outcome = run_score(options(pool, tmp_path / "run", **layers))
    samples = open_run(outcome.path).samples
    source = open_source(pool[0])
    model, config = load_pair_model(pool[1], "small_dual", "--model")
    reference, _ = load_pair_model(pool[2], "small_dual", "--reference")
    rows, inputs = batch_of(samples, 1, source, model.eval(), dual_transform(model, config))
    names = ["text_projection.weight"] if "mimic_layer" in layers else layers["params"].split(",")
    assert open_run(outcome.path).meta["params"] == ",".join(names)
    expected = mimic_scores(model, reference, inputs, None, params=names, loss=InfoNCELoss())
    np.testing.assert_allclose(rows["proj_last"].to_numpy(), expected.double().numpy(), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        ref_out = reference.eval()(*inputs)
    np.testing.assert_allclose(
        rows["clip_score_ref"].to_numpy(), clip_score(ref_out.image, ref_out.text).double().numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        rows["reference_loss"].to_numpy(), InfoNCELoss()(ref_out, None).double().numpy(), rtol=1e-5
    )
    run = open_run(outcome.path)  # the map's vectors: the reference's unit-length embeddings, row r = samples row r
    for source, values in (("image", ref_out.image), ("text", ref_out.text)):
        expected = torch.nn.functional.normalize(values, dim=-1).numpy()
        np.testing.assert_allclose(run.embedding(source)[rows.index].astype(np.float32), expected, atol=2e-3)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(batch_size=1), "--batch-size 1: a pair's InfoNCE loss needs the other pairs"),
        (dict(arch="small_dual:mlp"), "built as --arch small_cnn, not mlp"),
        (dict(mimic_layer="text", params="all"), "either --mimic-layer text or --params all"),
    ],
)
def test_wrong_options_on_a_pairs_pool_are_refused_before_anything_is_written(pool, tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=re.escape(message)):
        run_score(replace(options(pool, out), **change))
    assert not out.exists()
