"""``score --redraws K`` on an image-text pool (real Flickr8k pairs, a tiny built-in dual encoder): each pair's
proj, cos and loss are the means over K batchings of its chunk, recomputed here batch by batch with the
public scorer; the summary's batch noise is what those draws say; a killed run resumes to the same rows;
a labelled pool refuses the flag (tests/commands/test_task_contract.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.data.specs import open_source
from mimic_explorer.scoring import mimic_scores
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.redraws import redraw_order
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from tests.commands.test_task_contract import ChunkParts, Killed
from tests.pairs_helpers import needs_flickr, scored_pool, scored_pool_options

pytestmark = [needs_flickr, pytest.mark.slow]  # real runs: a few seconds each

PAIRS, CHUNK, BATCH, DRAWS, SEED = 26, 13, 5, 3, 7  # chunks of 13 = 5 + 8 (a remainder of 3 joins no one)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return scored_pool(tmp_path_factory.mktemp("redraws"), PAIRS)


def options(pool, out, **kw) -> ScoreOptions:
    return scored_pool_options(
        pool, out, batch_size=BATCH, chunk_size=CHUNK, mimic_layer="text", score_method="cos", seed=SEED, **kw
    )


def _batchings(start: int, stop: int) -> list[list[np.ndarray]]:
    """Each draw's batches of one chunk, as ``score`` cuts them: BATCH pairs each, a last batch of the rest
    (never one pair alone)."""
    found = []
    for draw in range(DRAWS):
        order = redraw_order(start, stop, SEED, draw)
        cuts = list(range(0, len(order), BATCH))
        if len(order) - cuts[-1] == 1:
            cuts.pop()
        found.append([order[a:b] for a, b in zip(cuts, [*cuts[1:], len(order)], strict=True)])
    return found


def _per_draw_scores(pool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(proj, cos) of every pair (rows: pool position) in every draw (columns), from the public scorer."""
    source = open_source(pool[0])
    model, config = load_pair_model(pool[1], "small_dual", "--model")
    reference, _ = load_pair_model(pool[2], "small_dual", "--reference")
    model.eval()
    transform = dual_transform(model, config)
    proj, cos = pd.DataFrame(index=range(PAIRS), dtype=float), pd.DataFrame(index=range(PAIRS), dtype=float)
    for start in range(0, PAIRS, CHUNK):
        for draw, batches in enumerate(_batchings(start, min(start + CHUNK, PAIRS))):
            for positions in batches:
                images = torch.stack([transform(source.load(int(p))) for p in positions])
                tokens = model.tokenizer.encode([source.captions[int(p)] for p in positions]).ids
                for frame, method in ((proj, "proj"), (cos, "cos")):
                    values = mimic_scores(
                        model,
                        reference,
                        (images, tokens),
                        None,
                        params=["text_projection.weight"],
                        method=method,
                        loss=InfoNCELoss(),
                    )
                    frame.loc[positions, draw] = values.double().numpy()
    return proj, cos


def test_each_pairs_scores_are_the_means_over_its_batchings_and_the_noise_is_theirs(pool, tmp_path):
    run = open_run(run_score(options(pool, tmp_path / "run", redraws=DRAWS)).path)
    single = open_run(run_score(options(pool, tmp_path / "single")).path)
    proj, cos = _per_draw_scores(pool)
    assert not np.allclose(proj[0], proj[1], atol=1e-4)  # the batching moved the scores: the means are a real test
    source = open_source(pool[0])
    for frame, ids in ((run.samples, None), (single.samples, 1)):
        positions = [source.index_of(s) for s in frame["sample_id"]]
        draws = slice(None) if ids is None else [0]
        np.testing.assert_allclose(
            frame["proj_last"].to_numpy(), proj.loc[positions, draws].mean(axis=1), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            frame["cos_mean"].to_numpy(), cos.loc[positions, draws].mean(axis=1), rtol=1e-4, atol=1e-6
        )
    noise = run.meta["summary"]["pairs"]["batch_noise"]
    within = proj.var(axis=1, ddof=1).mean()
    between = proj.mean(axis=1).var(ddof=0) - within / DRAWS
    assert noise["draws"] == DRAWS and noise["pairs"] == PAIRS
    assert noise["proj_variance_between_draws"] == pytest.approx(within, rel=1e-3)
    assert noise["noise_share_one_draw"] == pytest.approx(within / (within + between), rel=1e-3)
    assert 0 < noise["noise_share_averaged"] < noise["noise_share_one_draw"] < 1
    assert "mean over 3 batchings" in run.meta["summary"]["pairs"]["loss"]
    assert "batch_noise" not in single.meta["summary"]["pairs"]
    assert run.meta["run_id"] != single.meta["run_id"]


def test_one_draw_is_the_run_without_the_flag(pool, tmp_path):
    """--redraws 1 is today's run: the same id (left out of the identity at its default) and rows."""
    plain = open_run(run_score(options(pool, tmp_path / "plain")).path)
    one = open_run(run_score(options(pool, tmp_path / "one", redraws=1)).path)
    assert one.meta["run_id"] == plain.meta["run_id"]
    pd.testing.assert_frame_equal(one.samples, plain.samples, check_exact=True)


def test_a_killed_redrawn_run_resumes_to_the_same_rows_and_noise(pool, tmp_path, monkeypatch):
    whole = open_run(run_score(options(pool, tmp_path / "whole", redraws=DRAWS)).path)
    out = tmp_path / "killed"
    ChunkParts(monkeypatch, out, 2, die_after=1)
    with pytest.raises(Killed):
        run_score(options(pool, out, redraws=DRAWS))
    monkeypatch.undo()
    resumed = open_run(run_score(options(pool, out, redraws=DRAWS)).path)
    pd.testing.assert_frame_equal(resumed.samples, whole.samples, check_exact=True)
    assert resumed.meta["summary"]["pairs"]["batch_noise"] == whole.meta["summary"]["pairs"]["batch_noise"]
