"""``mimic-explorer score`` on image-text shards through the real command line: two shards cut from the
Flickr8k train split, 30 % swapped captions, a tiny built-in dual encoder and its reference."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mimic_explorer import open_run
from tests.conftest import run_cli
from tests.pairs_helpers import flickr_pool, make_checkpoints, needs_flickr

pytestmark = [needs_flickr, pytest.mark.slow]  # subprocesses


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flickr-pairs")
    for k, shard in enumerate(("train-00.tar", "train-01.tar")):
        flickr_pool(folder / f"pool-{k:02d}.tar", 20, shard)
    spec = f"wds:{folder}/pool-{{00..01}}.tar"
    return spec, *make_checkpoints(spec, folder)


def test_score_cli_on_flickr_shards_with_caption_noise(shards, tmp_path):
    spec, model, reference = shards
    out = tmp_path / "run"
    args = [
        "score",
        "--data",
        spec,
        "--arch",
        "small_dual",
        "--model",
        str(model),
        "--reference",
        str(reference),
        "--mimic-layer",
        "text",
        "--caption-noise",
        "0.3",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "clip_score_ref" in proc.stdout and "mimic_score" in proc.stdout  # the detection table, every signal
    samples = open_run(out).samples
    assert len(samples) == 40 and samples["is_noisy"].sum() == 12
    assert all(
        re.fullmatch(r"[0-9a-f]{32}", s) for s in samples["sample_id"]
    )  # uids: what `export --format uids` writes
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert samples["caption"].str.len().gt(0).all() and samples["score_batch"].nunique() == 5
    written = (out / "samples.parquet").stat().st_mtime_ns
    again = run_cli(*args)  # the same command: the finished run is returned, not recomputed
    assert again.returncode == 0 and (out / "samples.parquet").stat().st_mtime_ns == written
    refused = run_cli(*args[:-3], "--label-noise", "0.2", "--out", str(tmp_path / "refused"), "--quiet")
    assert refused.returncode != 0 and "--label-noise 0.2: only for labelled pools" in refused.stderr
    assert not (tmp_path / "refused").exists()
