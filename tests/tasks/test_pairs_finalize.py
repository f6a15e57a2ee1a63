"""A pairs ``score`` run finishes samples.parquet one range of pool positions at a time
(``finalize.finish_samples``); on a real Flickr8k pool with swapped captions and a broken photo the
table and the evaluation are exactly those of the in-memory path (every score row read at once,
``finalize.add_stage2``). Batch numbers follow from the recorded steps alone, in part order."""

from __future__ import annotations

import functools
import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.commands import score as score_command
from mimic_explorer.commands.finalize import Stage2Options, add_stage2, evaluate
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.commands.score import run_score, score_step
from mimic_explorer.data.pool import open_pool
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.sample_rows import samples_table
from mimic_explorer.tasks.pairs import batch_steps, pair_captions, pair_samples, score_batches
from tests.pairs_helpers import FLICKR, make_checkpoints, needs_flickr
from tests.subset_helpers import shard_excerpt

PAIRS = 300


def with_a_broken_photo(shard, out):
    """``shard`` with one more sample whose photo is not an image (a decode error inside the pool)."""
    with tarfile.open(shard) as src, tarfile.open(out, "w") as dst:
        members = src.getmembers()
        for member in members[: 3 * 150]:
            dst.addfile(member, src.extractfile(member))
        for name, data in (("broken.jpg", b"not a jpeg"), ("broken.txt", b"a caption of nothing")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
        for member in members[3 * 150 :]:
            dst.addfile(member, src.extractfile(member))
    return out


def read_pair_scores(parts) -> pd.DataFrame:
    """Every part's rows with ``score_batch`` (the whole pool at once)."""
    frame = pd.concat([pd.read_parquet(path) for path in parts], ignore_index=True)
    frame["score_batch"] = score_batches(frame["step"].to_numpy(), batch_steps(parts))
    return frame


def in_memory(options: ScoreOptions) -> pd.DataFrame:
    """samples.parquet as the in-memory path makes it from the run's parts (the whole pool at once)."""
    pool = open_pool(options)
    source, captions = pool.source, pair_captions(pool, options.caption_noise, options.noise_seed)
    scores = read_pair_scores(RunLayout(options.out).chunk_parts())
    scored = set(scores["sample_id"])
    good = np.asarray([i for i, s in enumerate(source.sample_ids) if s in scored], dtype=np.int64)
    samples = samples_table(source.sample_ids[good], source.sources[good], pool.labels[good], None, None)
    samples = pair_samples(samples, captions.captions, captions.true_captions, good, captions.is_noisy, scores)
    return add_stage2(samples, scores, options.binarisation, options.aggregation, positions=good, total=len(source))


@needs_flickr
@pytest.mark.slow
def test_pairs_score_finishes_in_ranges_exactly_as_in_memory(tmp_path, monkeypatch):
    clean = shard_excerpt(FLICKR / "train-02.tar", tmp_path / "clean" / "pool.tar", PAIRS)
    spec = f"wds:{with_a_broken_photo(clean, tmp_path / 'pool.tar')}"
    model, reference = make_checkpoints(f"wds:{clean}", tmp_path)
    options = ScoreOptions(
        data=spec,
        arch="small_dual",
        out=str(tmp_path / "run"),
        model=str(model),
        reference=str(reference),
        batch_size=8,
        chunk_size=100,
        caption_noise=0.3,
        score_method="cos",
        device="cpu",
        quiet=True,
    )
    monkeypatch.setattr(score_command, "Stage2Options", functools.partial(Stage2Options, chunk=128))  # 3 ranges
    run = open_run(run_score(options).path)
    written = pd.read_parquet(run.layout.samples)
    expected = in_memory(options)
    assert len(written) == PAIRS and "broken" not in set(written["sample_id"])  # the broken photo is in errors.parquet
    assert {"combined_score", "is_noisy", "caption", "score_batch"} <= set(written.columns)
    pd.testing.assert_frame_equal(written, expected, check_exact=True)
    assert run.meta["evaluation"] == evaluate(expected)
    assert run.meta["summary"]["pairs"]["batches"] == expected["score_batch"].nunique()


def test_batch_steps_follow_the_pool_order_whatever_the_process_count():
    order = [score_step(chunk, step) for chunk in range(3) for step in range(4)]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert score_step(2, 7) == 200_007  # the steps as they always were
