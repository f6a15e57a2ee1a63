"""Bad input on an image-text pool, through whole runs (real Flickr8k pairs): a photo that is not an
image, a pair without a caption, an empty and a non-UTF-8 caption are each recorded in errors.parquet
with their cause and skipped by ``train --frozen-towers`` as by ``score``; captions longer than the
text encoder's context are cut, counted in the summary and the ``caption_truncated`` column, and
still scored; a batch of one is refused by ``train`` before anything is written."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.captions import EMPTY_CAPTION, NO_CAPTION, NOT_UTF8
from tests.pairs_helpers import flickr_pool, make_checkpoints, needs_flickr

pytestmark = [needs_flickr]
PAIRS = 12
CAUSES = {"broken": "not an image", "mute": NO_CAPTION, "blank": EMPTY_CAPTION, "latin": NOT_UTF8}


@pytest.fixture(scope="module")
def messy_shard(tmp_path_factory):
    """(folder, the clean shard, a shard of its 12 good pairs and four bad ones: CAUSES)."""
    folder = tmp_path_factory.mktemp("pairs-bad")
    clean = flickr_pool(folder / "clean.tar", PAIRS)
    with tarfile.open(clean) as src:
        photo = src.extractfile(next(m for m in src if m.name.endswith(".jpg"))).read()
    shard = folder / "messy.tar"
    with tarfile.open(clean) as src, tarfile.open(shard, "w") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        for name, data in (
            ("broken.jpg", b"not a jpeg"),
            ("broken.txt", b"a caption"),
            ("mute.jpg", photo),
            ("blank.jpg", photo),
            ("blank.txt", b"  \n"),
            ("latin.jpg", photo),
            ("latin.txt", b"caf\xe9 au lait"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return folder, clean, f"wds:{shard}"


@pytest.fixture(scope="module")
def messy(messy_shard):
    """The messy pool, and a model and reference (built on its good pairs) whose context is 12 words."""
    folder, clean, spec = messy_shard
    model, reference = make_checkpoints(f"wds:{clean}", folder)
    return spec, model, reference


def check_errors(run) -> None:
    errors = pd.read_parquet(run.layout.errors).set_index("sample_id")["reason"]
    assert sorted(errors.index) == sorted(CAUSES)
    for sample_id, cause in CAUSES.items():
        assert cause in errors[sample_id], (sample_id, errors[sample_id])
    assert len(run.samples) == PAIRS and not set(CAUSES) & set(run.samples["sample_id"])
    assert run.meta["summary"]["skipped"] == len(CAUSES)


def check_truncation(run) -> None:
    cut = run.samples["caption_truncated"]
    assert cut.dtype == bool and 0 < cut.sum() < PAIRS  # Flickr8k captions run past 12 words now and then
    assert run.meta["summary"]["pairs"]["truncated_captions"] == int(cut.sum())
    assert np.isfinite(run.samples.loc[cut, "mimic_score"]).all()  # cut, and still scored
    assert f"{int(cut.sum())} caption(s) were longer than the text encoder's context" in run.layout.log.read_text()


@pytest.mark.slow
def test_score_records_bad_pairs_and_counts_cut_captions(messy, tmp_path):
    spec, model, reference = messy
    run = open_run(
        run_score(
            ScoreOptions(
                data=spec,
                arch="small_dual",
                out=str(tmp_path / "run"),
                model=str(model),
                reference=str(reference),
                batch_size=4,
                device="cpu",
                quiet=True,
            )
        ).path
    )
    check_errors(run)
    check_truncation(run)


@pytest.mark.slow
def test_frozen_tower_training_records_bad_pairs_and_counts_cut_captions(messy, tmp_path):
    spec, _, reference = messy
    run = open_run(
        run_train(
            TrainOptions(
                data=spec,
                arch="small_dual",
                out=str(tmp_path / "run"),
                reference=str(reference),
                frozen_towers=True,
                epochs=1,
                batch_size=4,
                device="cpu",
                quiet=True,
            )
        ).path
    )
    check_errors(run)
    check_truncation(run)


def test_training_pairs_in_batches_of_one_is_refused_before_writing(messy_shard, tmp_path):
    _, _, spec = messy_shard
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--batch-size 1: a pair's InfoNCE loss needs the other pairs"):
        run_train(
            TrainOptions(
                data=spec, arch="small_dual", out=str(out), frozen_towers=True, batch_size=1, device="cpu", quiet=True
            )
        )
    assert not out.exists()
