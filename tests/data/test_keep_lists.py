"""Keep-lists read back as sample ids from every format ``export`` writes (csv, json, parquet, an
.npy of ids, DataComp's u8,u8 uids), with one content hash per id set; and every unreadable
keep-list refused with its cause named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.data.keep_lists import KeepListError, read_keep_list
from mimic_explorer.filters.formats import datacomp_uids, render_export
from mimic_explorer.filters.rules import FilterResult

IDS = ["000123", "train_cat_0042", "b", "a"]
UIDS = ["0123456789abcdef0123456789ABCDEF", "ffffffffffffffff0000000000000001", "00000000000000000000000000000002"]


def exported(tmp_path, fmt: str, ids=IDS) -> str:
    """A keep-list written by ``filters.formats.render_export`` (the code behind ``mimic-explorer export``)."""
    samples = pd.DataFrame(
        {"sample_id": ids, "source": "x", "label": 0, "mimic_score": np.arange(len(ids), dtype=float)}
    )
    keep = np.ones(len(ids), dtype=bool)
    result = FilterResult(
        keep=keep, thresholds={}, kept=len(ids), total=len(ids), kept_per_class={}, total_per_class={}
    )
    path = tmp_path / f"keep.{'npy' if fmt == 'uids' else fmt}"
    path.write_bytes(render_export(samples, result, "mimic_score", fmt))
    return str(path)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_exported_tables_read_back_as_their_ids_with_leading_zeros_kept(tmp_path, fmt):
    keep = read_keep_list(exported(tmp_path, fmt))
    assert keep.format == fmt and keep.ids.tolist() == sorted(IDS) and keep.rows == len(IDS)


def test_the_content_hash_depends_on_the_ids_only(tmp_path):
    hashes = {read_keep_list(exported(tmp_path, fmt)).sha256 for fmt in ("csv", "json", "parquet")}
    ids_npy = tmp_path / "ids.npy"
    np.save(ids_npy, np.asarray([*list(reversed(IDS)), "a"]))  # another order, one repeat
    hashes.add(read_keep_list(ids_npy).sha256)
    assert len(hashes) == 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(IDS[:3]))
    assert read_keep_list(other).sha256 not in hashes


def test_datacomp_uids_read_back_as_lower_case_hex(tmp_path):
    keep = read_keep_list(exported(tmp_path, "uids", UIDS))
    assert keep.format == "uids" and keep.case_insensitive
    assert keep.ids.tolist() == sorted(u.lower() for u in UIDS)
    assert np.load(tmp_path / "keep.npy").dtype == datacomp_uids(UIDS, np.ones(3, bool)).dtype


def test_rows_marked_not_kept_are_left_out(tmp_path):
    path = tmp_path / "k.csv"
    pd.DataFrame({"sample_id": ["a", "b", "c"], "keep": [True, False, True]}).to_csv(path, index=False)
    assert read_keep_list(path).ids.tolist() == ["a", "c"]


@pytest.mark.parametrize(
    "name, content, cause",
    [
        ("k.txt", b"a\nb\n", "unknown keep-list format '.txt'"),
        ("k.csv", b"id,score\na,1\n", "no 'sample_id' column (columns: id, score)"),
        ("k.csv", b"sample_id\n", "names no sample"),
        ("k.json", b'{"ids": ["a"]}', "a JSON keep-list is a list of records"),
        ("k.json", b"[not json", "cannot read it as json"),
        ("k.parquet", b"PAR1 garbage", "cannot read it as parquet"),
    ],
)
def test_unreadable_keep_lists_name_their_cause(tmp_path, name, content, cause):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(
        KeepListError, match=f"--subset {path}.*{cause}".replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        read_keep_list(path)


@pytest.mark.parametrize(
    "array, cause",
    [
        (np.ones(4, dtype=bool), "boolean mask .* export the keep-list with --format csv"),
        (np.arange(4), "an array of int64 names no sample"),
        (np.zeros(2, dtype=[("a", "<u4"), ("b", "<u4")]), "not DataComp's uid format"),
    ],
)
def test_npy_arrays_that_name_no_ids_are_refused(tmp_path, array, cause):
    path = tmp_path / "k.npy"
    np.save(path, array)
    with pytest.raises(KeepListError, match=cause):
        read_keep_list(path)


def test_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "k.npy"
    np.save(path, np.asarray(["a", 1], dtype=object), allow_pickle=True)
    with pytest.raises(KeepListError, match="Python objects"):
        read_keep_list(path)


def test_a_missing_file_or_a_folder_is_named(tmp_path):
    with pytest.raises(KeepListError, match="no such file"):
        read_keep_list(tmp_path / "absent.csv")
    with pytest.raises(KeepListError, match="not a file"):
        read_keep_list(tmp_path)
