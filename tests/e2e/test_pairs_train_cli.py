"""The two-command protocol on image-text pairs through the real command line: a reference trained
plainly (frozen towers) on clean Flickr8k pairs of one shard, then Grad-Mimic on pairs of another shard
with 30 % swapped captions against it, then ``score`` of the trained model on the same pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mimic_explorer import open_run
from tests.conftest import run_cli
from tests.pairs_helpers import flickr_pool, needs_flickr

pytestmark = [needs_flickr, pytest.mark.slow]  # subprocesses, a few hundred real photos

CLEAN, POOL = 600, 300
#: one torch thread: a frozen-tower step is a few small matmuls, and two threads on a busy 2-core machine
#: wait for each other far longer than they compute
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TRAINING = [
    "--arch",
    "small_dual",
    "--frozen-towers",
    "--epochs",
    "20",
    "--batch-size",
    "32",
    "--lr",
    "0.01",
    "--quiet",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flickr-pair-train")
    cuts = (("clean", CLEAN, "train-00.tar"), ("pool", POOL, "train-01.tar"))  # disjoint photos
    return (folder, *(f"wds:{flickr_pool(folder / f'{name}.tar', count, shard)}" for name, count, shard in cuts))


def test_reference_then_grad_mimic_then_score(shards, tmp_path):
    _folder, clean, pool = shards
    reference, model = tmp_path / "R.pt", tmp_path / "M.pt"
    plain = run_cli(
        "train",
        "--data",
        clean,
        *TRAINING,
        "--out",
        str(tmp_path / "ref"),
        "--save-model",
        str(reference),
        "--test-data",
        pool,
        env=ONE_THREAD,
    )
    assert plain.returncode == 0, plain.stderr
    assert "test recall: i2t@1" in plain.stdout and reference.exists()

    args = [
        "train",
        "--data",
        pool,
        *TRAINING,
        "--reference",
        str(reference),
        "--mimic-layer",
        "text",
        "--caption-noise",
        "0.3",
        "--out",
        str(tmp_path / "gm"),
        "--save-model",
        str(model),
    ]
    mimic = run_cli(*args, env=ONE_THREAD)
    assert mimic.returncode == 0, mimic.stderr
    assert "clip_score_ref" in mimic.stdout and "mimic_score" in mimic.stdout  # the detection table
    run = open_run(tmp_path / "gm")
    samples = run.samples
    assert len(samples) == POOL and int(samples["is_noisy"].sum()) == int(0.3 * POOL)
    for column in (
        "caption",
        "mimic_score",
        "keep",
        "clip_score_ref",
        "clip_score_model",
        "reference_loss",
        "score_batch",
        "batch_size",
    ):
        assert column in samples.columns, column
    assert np.isfinite(samples["mimic_score"].to_numpy(dtype=float)).all()
    # swapped captions score lower than their own on average: AUROC of the mimic score as a clean-pair detector
    auroc = roc_auc_score(~samples["is_noisy"].to_numpy(bool), samples["mimic_score"].to_numpy(float))
    assert auroc > 0.5, auroc
    assert (
        samples.loc[samples["is_noisy"], "mimic_score"].mean() < samples.loc[~samples["is_noisy"], "mimic_score"].mean()
    )
    assert json.loads((tmp_path / "gm" / "meta.json").read_text())["evaluation"]["mimic_score"][
        "auroc"
    ] == pytest.approx(auroc)

    scored = run_cli(
        "score",
        "--data",
        pool,
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
        "32",
        "--out",
        str(tmp_path / "score"),
        "--quiet",
        env=ONE_THREAD,
    )
    assert scored.returncode == 0, scored.stderr
    assert len(open_run(tmp_path / "score").samples) == POOL
