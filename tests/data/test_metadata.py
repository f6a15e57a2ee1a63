"""Metadata joined onto a pool by id (``--metadata``, or DataComp's parquet beside each shard): the columns at
each position, ids on either side counted in warnings, names a run writes itself kept apart, the files' content
in the pool's fingerprints, and metadata without an id column refused in one line."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.commands.finalize import COMBINED_COLUMNS, SIGNAL_COLUMNS
from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.metadata import RESERVED
from mimic_explorer.data.pool import open_pool, pool_fingerprints
from mimic_explorer.data.specs import open_source
from mimic_explorer.stage2.votes import PER_SAMPLE_COLUMNS
from mimic_explorer.tasks.labelled import pool_rows
from mimic_explorer.tasks.pairs import PAIR_SIGNAL_COLUMNS
from tests.source_helpers import FIXTURE, FLICKR_MINI, ShardServer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))


def options(data: str, metadata=None, subset=None) -> SimpleNamespace:
    return SimpleNamespace(data=data, metadata=metadata, subset=subset, label_noise=0.0)


def datacomp_metadata(uids: list[str]) -> pd.DataFrame:
    """DataComp's columns for ``uids``: uid, url, text, the CLIP scores, sizes and a nested column."""
    n = len(uids)
    return pd.DataFrame(
        {
            "uid": uids,
            "url": [f"https://example.org/{k}.jpg" for k in range(n)],
            "text": [f"text {k}" for k in range(n)],
            "original_width": np.arange(n, dtype=np.int64) + 100,
            "clip_l14_similarity_score": np.linspace(0.1, 0.4, n),
            "face_bboxes": [[[0.0, 0.0, 1.0, 1.0]]] * n,
            "caption": ["not the pool's caption"] * n,
        }
    )


def test_datacomp_metadata_joins_by_uid_at_every_position(tmp_path):
    pool_ids = open_source(f"wds:{FLICKR_MINI}").sample_ids.tolist()
    listed = [u.upper() for u in pool_ids[2:]] + ["f" * 32, "e" * 32, "d" * 32]  # upper case: the same uids
    frame = datacomp_metadata(listed)
    frame.to_parquet(tmp_path / "meta.parquet")
    pool = open_pool(options(f"wds:{FLICKR_MINI}", tmp_path / "meta.parquet"))
    meta = pool.metadata
    assert meta.key == "uid" and meta.facts["matched"] == 22 and meta.facts["not_in_pool"] == 3
    assert meta.facts["samples_without_row"] == 2 and meta.facts["skipped_columns"] == ["face_bboxes"]
    assert list(meta.columns) == ["url", "text", "original_width", "clip_l14_similarity_score", "metadata_caption"]
    warnings = [w for w in pool.warnings if w.startswith("METADATA")]
    assert len(warnings) == 3 and "3 of the 25 uid(s)" in warnings[0] and "2 of the pool's 24 samples" in warnings[1]
    rows = pool_rows(pool)(np.arange(24))
    assert rows.columns.tolist()[:3] == ["sample_id", "source", "label"]
    np.testing.assert_allclose(rows["clip_l14_similarity_score"][2:], frame["clip_l14_similarity_score"][:22])
    assert rows["clip_l14_similarity_score"][:2].isna().all() and rows["url"][:2].isna().all()
    assert str(rows["original_width"].dtype) == "Int64" and rows["original_width"][5] == 103
    # any range of positions has the same dtypes (samples.parquet is written a range at a time)
    assert pool_rows(pool)(np.arange(5, 9)).dtypes.equals(rows.dtypes)
    assert pool_fingerprints(pool)["metadata"] == meta.sha256
    frame.assign(clip_l14_similarity_score=0.5).to_parquet(tmp_path / "meta.parquet")
    changed = open_pool(options(f"wds:{FLICKR_MINI}", tmp_path / "meta.parquet"))
    assert pool_fingerprints(changed)["metadata"] != meta.sha256


def test_the_parquet_beside_each_shard_is_joined_without_an_option(tmp_path):
    folder = tmp_path / "datacomp"
    folder.mkdir()
    shutil.copy(FLICKR_MINI, folder / "00000000.tar")
    ids = open_source(f"wds:{folder / '00000000.tar'}").sample_ids.tolist()
    datacomp_metadata(ids).to_parquet(folder / "00000000.parquet")
    pool = open_pool(options(f"wds:{folder}/{{00000000..00000000}}.tar"))
    assert pool.metadata.facts["matched"] == 24 and not [w for w in pool.warnings if "not in the pool" in w]
    assert pool.metadata.files == [str(folder / "00000000.parquet")]
    # the same layout over HTTP: the parquet is fetched from beside the shard
    with ShardServer(folder) as server:
        remote = open_pool(options(f"wds:{server.url}/00000000.tar"))
    assert remote.metadata.facts["matched"] == 24 and remote.metadata.sha256 == pool.metadata.sha256
    # a subset keeps the rows of its samples
    keep = tmp_path / "keep.csv"
    pd.DataFrame({"sample_id": ids[:5]}).to_csv(keep, index=False)
    subset = open_pool(options(f"wds:{folder / '00000000.tar'}", subset=str(keep)))
    assert subset.metadata.facts["matched"] == 5 and subset.metadata.facts["not_in_pool"] == 19
    # without a parquet beside, no metadata
    assert open_pool(options(f"wds:{FLICKR_MINI}")).metadata is None


def test_a_labelled_pool_joins_by_sample_id(tmp_path):
    source = open_source(f"folder:{FIXTURE}")
    pd.DataFrame({"sample_id": source.sample_ids, "quality": np.arange(30) / 30, "ok": [True] * 30}).to_parquet(
        tmp_path / "m.parquet"
    )
    pool = open_pool(options(f"folder:{FIXTURE}", str(tmp_path / "*.parquet")))
    rows = pool_rows(pool)(np.array([0, 29]))
    assert rows["quality"].tolist() == [0.0, 29 / 30] and rows["ok"].dtype == bool and not pool.warnings


def test_bad_metadata_is_one_line(tmp_path):
    pd.DataFrame({"id": ["a"], "score": [1.0]}).to_parquet(tmp_path / "nokey.parquet")
    pd.DataFrame({"uid": ["a" * 32, "A" * 32], "score": [1.0, 2.0]}).to_parquet(tmp_path / "twice.parquet")
    (tmp_path / "meta.csv").write_text("uid\n")
    cases = {
        "nokey.parquet": "nokey.parquet has no uid or sample_id column to join by; columns: id, score",
        "twice.parquet": "1 uid(s) occur more than once, e.g. " + "a" * 32,
        "meta.csv": "a metadata file must be .parquet, got meta.csv",
        "absent.parquet": "no such file",
        "none-*.parquet": "no such file matches",
    }
    for name, cause in cases.items():
        with pytest.raises(DataSourceError) as info:
            open_pool(options(f"wds:{FLICKR_MINI}", str(tmp_path / name)))
        assert cause in str(info.value) and "\n" not in str(info.value)


def test_reserved_names_cover_every_column_a_run_writes():
    written = {"sample_id", "source", "label", "true_label", "is_noisy", "caption", "true_caption"}
    written |= {"caption_truncated", "pred", *SIGNAL_COLUMNS, *COMBINED_COLUMNS, *PER_SAMPLE_COLUMNS}
    written |= set(PAIR_SIGNAL_COLUMNS)
    assert written <= RESERVED
