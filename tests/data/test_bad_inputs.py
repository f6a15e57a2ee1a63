"""A corpus of bad inputs, each a small fixture built here, each with its exact outcome: which samples
survive, the reason recorded for the ones that do not, or the one-line error.

Labels: one ``nan``/``inf``/``3.5`` among integer labels is one bad sample and no other label changes
its number; labels outside the declared classes, or a range far beyond the pool without declared
classes, are errors naming the row or sample. Shards: a tar cut at a header, inside a header or inside
a member's data keeps every complete sample and reports the shard, the byte and what was lost. Files: a
FIFO, ``/dev/zero``, a directory or an over-cap file is a bad sample at once. Ids: uids that differ only
in case are refused when the pool opens. And what already held stays held (member names with ``../``
or ``/``, symlink members, duplicate keys)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.data import wds as wds_module
from mimic_explorer.data.errors import BadSample, BadSampleError
from mimic_explorer.data.imageio import MAX_FILE_BYTES, MAX_FILE_BYTES_ENV, read_file
from mimic_explorer.data.keep_lists import read_keep_list
from mimic_explorer.data.labels import parse_label
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.subset import restrict_to_keep_list
from tests.data.test_sources import FIXTURE, error_of, fixture_items, write_shard

ITEMS = fixture_items()  # (key, label, jpeg bytes): 30 real CIFAR-10 photos, labels 0..9
JPEG = ITEMS[0][2]
LABELS = [k % 11 for k in range(30)]  # 0..10: "10" and "2" are where text sorting would renumber


def csv_manifest(folder: Path, labels: list, *, classes: list[str] | None = None, **columns) -> str:
    """A manifest of ``len(labels)`` rows pointing at real photos (row k: sample ``s{k}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [str(FIXTURE / "cat" / name) for name in sorted(os.listdir(FIXTURE / "cat"))]
    frame = pd.DataFrame(
        {
            "path": [photos[k % len(photos)] for k in range(len(labels))],
            "label": labels,
            "sample_id": [f"s{k}" for k in range(len(labels))],
            **columns,
        }
    )
    frame.to_csv(folder / "m.csv", index=False)
    if classes is not None:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    return f"manifest:{folder / 'm.csv'}"


def labelled_members(cls: dict[int, bytes] | None = None, count: int = 30) -> list[tuple[str, bytes]]:
    """``KEY.jpg`` + ``KEY.cls`` for the first ``count`` fixture photos; ``cls`` overrides some labels."""
    members = []
    for k, (key, label, data) in enumerate(ITEMS[:count]):
        members += [(f"{key}.jpg", data), (f"{key}.cls", (cls or {}).get(k, str(label).encode()))]
    return members


def member_offsets(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def cut(shard: Path, size: int, name: str) -> Path:
    """A copy of ``shard`` cut to its first ``size`` bytes, in a folder of its own."""
    out = shard.parent / name / shard.name
    out.parent.mkdir()
    out.write_bytes(shard.read_bytes()[:size])
    return out


def reasons(source) -> dict[str, str]:
    return {b.sample_id: b.reason for b in source.open_errors}


# --- manifest labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf", "3.5", "1_0", "seven"])
def test_one_non_integer_label_is_one_bad_sample_and_every_other_label_keeps_its_number(tmp_path, cell):
    labels = [str(v) for v in LABELS]
    labels[5] = cell
    source = open_source(csv_manifest(tmp_path, labels))
    assert source.class_names == [str(k) for k in range(11)]
    assert list(source.sample_ids) == [f"s{k}" for k in range(30) if k != 5]
    assert source.labels.tolist() == [v for k, v in enumerate(LABELS) if k != 5]  # "2" is 2, "10" is 10
    assert reasons(source) == {
        "s5": f"label {cell!r} in row 6 is not an integer class index (the label column holds integers)"
    }


def test_integer_labels_written_as_floats_are_integers(tmp_path):
    source = open_source(csv_manifest(tmp_path, ["3.0", "2", "9", " 1 ", "+4"]))
    assert source.labels.tolist() == [3, 2, 9, 1, 4] and source.class_names == [str(k) for k in range(10)]
    assert not source.open_errors


def test_a_parquet_float_column_with_inf_keeps_its_integers(tmp_path):
    photo = str(next((FIXTURE / "dog").iterdir()))
    values = [float(v) for v in LABELS]
    values[7] = float("inf")
    pd.DataFrame({"path": [photo] * 30, "label": values, "sample_id": [f"s{k}" for k in range(30)]}).to_parquet(
        tmp_path / "m.parquet"
    )
    source = open_source(f"manifest:{tmp_path / 'm.parquet'}")
    assert source.labels.tolist() == [v for k, v in enumerate(LABELS) if k != 7]
    assert reasons(source) == {
        "s7": "label 'inf' in row 8 is not an integer class index (the label column holds integers)"
    }


def test_a_names_column_stays_names(tmp_path):
    source = open_source(csv_manifest(tmp_path, ["cat", "dog", "bird", "cat"]))
    assert source.class_names == ["bird", "cat", "dog"] and source.labels.tolist() == [1, 2, 0, 1]


def test_a_column_mixing_names_and_integers_is_an_error_naming_both(tmp_path):
    message = error_of(csv_manifest(tmp_path, ["cat", "dog", "7", "bird"]))
    assert message == (
        f"manifest:{tmp_path / 'm.csv'}: the label column mixes integer class indices (row 3: '7') with 3 of 4 "
        "value(s) that are not (row 1: 'cat'); give class indices or class names, not both"
    )


@pytest.mark.parametrize(
    ("cell", "count"), [("1000000", "1,000,001"), ("1e23", "about 1e+23"), ("9" * 60, "more than 10^40")]
)
def test_a_label_far_beyond_the_pool_without_declared_classes_is_an_error_naming_the_row(tmp_path, cell, count):
    labels = [str(v) for v in LABELS]
    labels[5] = cell
    quoted = repr(cell if len(cell) <= 40 else cell[:40] + "…")
    assert error_of(csv_manifest(tmp_path, labels)) == (
        f"manifest:{tmp_path / 'm.csv'}: label {quoted} in row 6 (sample 's5') would make {count} classes "
        "for 30 sample(s); "
        "without a class list labels may span at most max(samples, 10) = 30 classes, so this looks like a typo: "
        "fix the label or list the classes in classes.txt beside the manifest"
    )


def test_the_same_label_is_fine_once_the_classes_are_declared_or_the_pool_is_large_enough(tmp_path):
    labels = [str(v) for v in LABELS]
    labels[5] = "29"  # 30 classes for 30 samples: the bound itself
    assert open_source(csv_manifest(tmp_path / "a", labels)).num_classes == 30
    labels[5] = "40"
    classes = [f"c{k}" for k in range(50)]
    source = open_source(csv_manifest(tmp_path / "b", labels, classes=classes))
    assert source.class_names == classes and source.labels[5] == 40
    assert open_source(csv_manifest(tmp_path / "c", ["0", "9", "3"])).num_classes == 10  # the floor of 10


def test_labels_outside_declared_classes_are_an_error_naming_the_row(tmp_path):
    spec = csv_manifest(tmp_path, ["0", "1", "12", "2"], classes=[str(k) for k in range(10)])
    assert error_of(spec) == (
        f"{spec}: label outside the class range 0..9 in row 3 (sample 's2': label=12; 1 row(s) in all); "
        f"classes: '0', '1', '2', '3', '4', '5', '6', '7', '8', '9' ({tmp_path / 'classes.txt'})"
    )
    spec = csv_manifest(tmp_path / "neg", ["0", "-1", "2"])
    assert error_of(spec) == (
        f"{spec}: label outside the class range 0..2 in row 2 (sample 's1': label=-1; 1 row(s) in all); "
        "classes: '0', '1', '2' (classes made from the labels)"
    )


def test_a_true_label_that_is_not_an_integer_is_an_error_naming_the_row(tmp_path):
    spec = csv_manifest(tmp_path, ["0", "1", "2"], true_label=["0", "nan", "2"])
    assert error_of(spec) == (
        f"{spec}: true_label 'nan' in row 2 is not an integer class index "
        "(the true_label column holds integers; 1 such row(s))"
    )


def test_parse_label_rules():
    assert [parse_label(v) for v in ("7", " -1 ", "+3", "7.0", "1e3", b"4\n", 5, 6.0, np.int64(2))] == [
        7,
        -1,
        3,
        7,
        1000,
        4,
        5,
        6,
        2,
    ]
    assert [
        parse_label(v) for v in ("nan", "inf", "3.5", "1_000", "\u0663", True, None, "", float("nan"), b"\xff")
    ] == [None] * 10
    assert parse_label("1e23") == int(1e23) and parse_label("9" * 5000) == 10**40


# --- WebDataset .cls labels -------------------------------------------------------------------------


def shard_with(tmp_path: Path, cls: dict[int, bytes], classes: list[str] | None = None) -> tuple[str, Path]:
    shard = tmp_path / "a.tar"
    write_shard(shard, labelled_members(cls))
    if classes is not None:
        (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    return f"wds:{shard}", shard


def test_a_cls_that_is_not_an_integer_is_one_bad_sample(tmp_path):
    spec, shard = shard_with(tmp_path, {3: b"nan", 8: b"3.5"})
    source = open_source(spec, index_dir=tmp_path / "idx")
    keys = [key for key, _, _ in ITEMS]
    assert list(source.sample_ids) == [k for j, k in enumerate(keys) if j not in (3, 8)]
    assert source.labels.tolist() == [lab for j, (_, lab, _) in enumerate(ITEMS) if j not in (3, 8)]
    assert reasons(source) == {
        keys[3]: f"{keys[3]}.cls holds 'nan': not an integer class index",
        keys[8]: f"{keys[8]}.cls holds '3.5': not an integer class index",
    }
    assert [b.path for b in source.open_errors] == [f"{shard}:{keys[3]}", f"{shard}:{keys[8]}"]


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        (
            b"-1",
            (
                "is outside the class range 0..9 (1 sample(s)); "
                "classes: '0', '1', '2', '3', '4', '5', '6', '7', '8', '9' (classes made from the labels)"
            ),
        ),
        (
            b"99",
            (
                "would make 100 classes for 30 sample(s); without a class list labels may span at most "
                "max(samples, 10) = 30 classes, so this looks like a typo: fix the label or list the classes in "
                "classes.txt beside the shards"
            ),
        ),
        (
            b"99999999999999999999999",
            (
                "would make about 1e+23 classes for 30 sample(s); without a class list labels may span at "
                "most max(samples, 10) = 30 classes, so this looks like a typo: fix the label or list the "
                "classes in classes.txt beside the shards"
            ),
        ),
    ],
)
def test_a_cls_outside_the_range_is_an_error_naming_the_sample(tmp_path, text, tail):
    spec, shard = shard_with(tmp_path, {3: text})
    key = ITEMS[3][0]
    assert (
        error_of(spec, index_dir=tmp_path / "idx") == f"{spec}: label {text.decode()!r} in {key}.cls of {shard} {tail}"
    )


def test_a_cls_beyond_classes_txt_is_an_error_naming_the_sample(tmp_path):
    spec, shard = shard_with(tmp_path, {3: b"12"}, classes=[f"c{k}" for k in range(10)])
    assert error_of(spec, index_dir=tmp_path / "idx") == (
        f"{spec}: label '12' in {ITEMS[3][0]}.cls of {shard} is outside the class range 0..9 (1 sample(s)); "
        f"classes: 'c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9' ({tmp_path / 'classes.txt'})"
    )


def test_shards_of_names_only_are_refused_with_the_reason(tmp_path):
    write_shard(tmp_path / "b.tar", [("k1.jpg", JPEG), ("k1.cls", b"cat")])
    assert error_of(f"wds:{tmp_path / 'b.tar'}", index_dir=tmp_path) == (
        f"wds:{tmp_path / 'b.tar'}: no sample has both an image and a usable .cls label "
        "(\"k1.cls holds 'cat': not an integer class index\")"
    )


# --- truncated shards --------------------------------------------------------------------------------


@pytest.fixture
def whole_shard(tmp_path) -> tuple[Path, list[tarfile.TarInfo]]:
    """A 30-sample labelled shard (60 members) and its members' offsets."""
    shard = tmp_path / "whole" / "pool-00.tar"
    shard.parent.mkdir()
    write_shard(shard, labelled_members())
    return shard, member_offsets(shard)


def test_the_whole_shard_has_no_warning(whole_shard, tmp_path):
    shard, _ = whole_shard
    source = open_source(f"wds:{shard}", index_dir=tmp_path / "idx")
    assert (
        len(source) == 30 and source.open_errors == [] and source.warnings == [] and source.describe()["warnings"] == []
    )


def test_a_shard_cut_at_a_member_header_keeps_its_samples_and_says_where_it_ends(whole_shard, tmp_path):
    shard, members = whole_shard
    at = members[30].offset  # the header of sample 15's image
    short = cut(shard, at, "at-header")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert list(source.sample_ids) == [key for key, _, _ in ITEMS[:15]]
    assert source.labels.tolist() == [lab for _, lab, _ in ITEMS[:15]]
    stops = (
        f"stops at byte {at} of {at}: the file ends after a complete member without tar's end-of-archive marker, "
        "so the members that followed are missing; the 15 sample(s) before it are read, whatever followed is lost"
    )
    assert source.open_errors == [BadSample(f"{short}@{at}", str(short), f"truncated shard: {stops}")]
    assert source.pool_errors == source.open_errors
    assert source.warnings == [f"TRUNCATED SHARD: {short} {stops} (re-download or re-write the shard)"]
    assert source.describe()["warnings"] == source.warnings and source.describe()["open_errors"] == 1


def test_a_shard_cut_inside_a_members_data_keeps_every_complete_sample(whole_shard, tmp_path):
    shard, members = whole_shard
    image = members[30]
    short = cut(shard, image.offset_data + 100, "in-data")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert list(source.sample_ids) == [key for key, _, _ in ITEMS[:15]]
    for i in range(15):  # every kept sample still reads its own photo
        assert source.read_bytes(i) == ITEMS[i][2]
    detail = f"member {image.name} is cut off, 100 of {image.size} data bytes present"
    key = ITEMS[15][0]
    assert reasons(source) == {
        f"{short}@{image.offset}": f"truncated shard: stops at byte {image.offset} of {image.offset_data + 100}: "
        f"{detail}; the 15 sample(s) before it are read, whatever followed is lost",
        key: f"incomplete sample: the shard is truncated at byte {image.offset} within it: {detail}",
    }
    assert source.open_errors[1].path == f"{short}:{key}"
    assert len(source.warnings) == 1 and source.warnings[0].startswith(
        f"TRUNCATED SHARD: {short} stops at byte {image.offset} "
    )


def test_a_shard_cut_between_a_samples_members_drops_that_sample_only(whole_shard, tmp_path):
    shard, members = whole_shard
    label = members[31]  # sample 15's .cls header: its image is whole, its label is lost
    short = cut(shard, label.offset, "between")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")  # not "member without .cls" for the pool
    assert list(source.sample_ids) == [key for key, _, _ in ITEMS[:15]]
    key = ITEMS[15][0]
    assert reasons(source)[key] == (
        f"incomplete sample: the shard is truncated at byte {label.offset} within it: the file ends "
        "after a complete member without tar's end-of-archive marker, so the members that followed are missing"
    )
    assert [b.sample_id for b in source.open_errors] == [f"{short}@{label.offset}", key]


def test_a_shard_cut_inside_a_header_or_with_a_damaged_header(whole_shard, tmp_path):
    shard, members = whole_shard
    at = members[40].offset
    short = cut(shard, at + 100, "in-header")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert len(source) == 20
    assert source.open_errors[0] == BadSample(
        f"{short}@{at}",
        str(short),
        f"truncated shard: stops at byte {at} of {at + 100}: a member header there is cut off, 100 of 512 "
        "bytes present; the 20 sample(s) before it are read, whatever followed is lost",
    )
    damaged = bytearray(shard.read_bytes())
    damaged[at : at + 512] = b"x" * 512
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "pool-00.tar").write_bytes(bytes(damaged))
    source = open_source(f"wds:{tmp_path / 'damaged' / 'pool-00.tar'}", index_dir=tmp_path / "idx")
    assert (
        len(source) == 20
        and (
            f"stops at byte {at} of {len(damaged)}: the member header there is damaged (not a tar header), "
            "so nothing after it can be found"
        )
        in source.warnings[0]
    )


def test_a_shard_whose_last_padding_is_cut_loses_nothing_but_is_reported(whole_shard, tmp_path):
    shard, members = whole_shard
    end = members[-1].offset_data + members[-1].size
    short = cut(shard, end, "padding")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert len(source) == 30
    assert source.warnings == [
        (
            f"TRUNCATED SHARD: {short} stops at byte {end} of {end}: the file ends inside the padding after a "
            "complete member, before the end-of-archive marker, so any members that followed are missing; the 30 "
            "sample(s) before it are read, whatever followed is lost (re-download or re-write the shard)"
        )
    ]


def test_truncation_is_kept_in_the_cached_index_and_through_a_subset(whole_shard, tmp_path, monkeypatch):
    shard, members = whole_shard
    short = cut(shard, members[30].offset, "cached")
    first = open_source(f"wds:{short}", index_dir=tmp_path / "idx")

    def refuse(path):
        raise AssertionError("the shard was indexed again")

    monkeypatch.setattr(wds_module, "build_shard_index", refuse)
    again = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert again.warnings == first.warnings and again.open_errors == first.open_errors
    pd.DataFrame({"sample_id": [ITEMS[2][0], ITEMS[20][0]]}).to_csv(tmp_path / "keep.csv", index=False)
    view, report = restrict_to_keep_list(again, read_keep_list(tmp_path / "keep.csv"))
    assert list(view.sample_ids) == [ITEMS[2][0]]
    assert view.warnings == first.warnings and view.open_errors == first.pool_errors  # the damage stays reported
    assert report.warnings[0].startswith("SUBSET: 1 of the 2 id(s)")


def test_only_the_truncated_shard_of_several_is_reported(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    write_shard(folder / "pool-00.tar", labelled_members(count=10))  # whole
    write_shard(folder / "pool-01.tar", [(f"b-{name}", data) for name, data in labelled_members()])
    at = member_offsets(folder / "pool-01.tar")[30].offset
    (folder / "pool-01.tar").write_bytes((folder / "pool-01.tar").read_bytes()[:at])  # 15 of its 30 samples left
    source = open_source(f"wds:{folder}/pool-{{00..01}}.tar", index_dir=tmp_path / "idx")
    assert list(source.sample_ids) == [key for key, _, _ in ITEMS[:10]] + [f"b-{key}" for key, _, _ in ITEMS[:15]]
    assert [b.sample_id for b in source.open_errors] == [f"{folder / 'pool-01.tar'}@{at}"]
    assert len(source.warnings) == 1 and source.warnings[0].startswith(
        f"TRUNCATED SHARD: {folder / 'pool-01.tar'} stops at byte {at} "
    )


def test_a_truncated_pairs_shard_reports_the_same_way_and_keeps_every_uid(tmp_path):
    members = []
    for k, (_, _, data) in enumerate(ITEMS[:10]):
        members += [
            (f"p{k}.jpg", data),
            (f"p{k}.txt", f"caption {k}".encode()),
            (f"p{k}.json", json.dumps({"uid": f"{k:032x}"}).encode()),
        ]
    shard = tmp_path / "pairs.tar"
    write_shard(shard, members)
    at = member_offsets(shard)[20].offset  # p6.json: its image and caption are whole, its uid is lost
    short = cut(shard, at, "pairs")
    source = open_source(f"wds:{short}", index_dir=tmp_path / "idx")
    assert source.pool_kind == "pairs"
    assert list(source.sample_ids) == [f"{k:032x}" for k in range(6)]  # p6 is not kept under its key
    assert reasons(source) == {
        f"{short}@{at}": f"truncated shard: stops at byte {at} of {at}: the file ends after a complete member "
        "without tar's end-of-archive marker, so the members that followed are missing; the 6 sample(s) before it "
        "are read, whatever followed is lost",
        "p6": f"incomplete sample: the shard is truncated at byte {at} within it: the file ends after a complete "
        "member without tar's end-of-archive marker, so the members that followed are missing",
    }
    assert len(source.warnings) == 1


def test_a_shard_with_no_complete_member_is_refused_naming_the_cut(tmp_path):
    write_shard(tmp_path / "a.tar", labelled_members(count=2))
    first = member_offsets(tmp_path / "a.tar")[0]
    short = cut(tmp_path / "a.tar", first.offset_data + 10, "nothing")
    assert error_of(f"wds:{short}", index_dir=tmp_path / "idx") == (
        f"wds:{short}: no sample has both an image and a usable .cls label ('incomplete sample: the shard is "
        f"truncated at byte 0 within it: member {first.name} is cut off, 10 of {first.size} data bytes present')"
    )


# --- files that are not what they claim -----------------------------------------------------------------


def scan_with_guard(source):
    """``source.scan()`` in a daemon thread: a hang fails the test instead of stalling the suite."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("scan", source.scan()), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "reading the pool hung"
    return result["scan"]


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs FIFOs and /dev/zero")
def test_a_fifo_a_device_a_directory_and_a_huge_file_are_bad_samples(tmp_path):
    photo = str(next((FIXTURE / "cat").iterdir()))
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with open(tmp_path / "huge.jpg", "wb") as handle:  # sparse: no disk used
        handle.truncate(MAX_FILE_BYTES + 1)
    paths = [photo, "pipe.jpg", "/dev/zero", "folder.jpg", "huge.jpg", "missing.jpg"]
    pd.DataFrame({"path": paths, "label": [0, 1, 0, 1, 0, 1], "sample_id": list("abcdef")}).to_csv(
        tmp_path / "m.csv", index=False
    )
    source = open_source(f"manifest:{tmp_path / 'm.csv'}")
    good, errors = scan_with_guard(source)
    assert good.tolist() == [0]
    assert {b.sample_id: b.reason for b in errors} == {
        "b": "is a FIFO (named pipe), not a regular file",
        "c": "is a character device, not a regular file",
        "d": "is a directory, not a file",
        "e": (
            f"file too large ({MAX_FILE_BYTES + 1:,} bytes; the cap is {MAX_FILE_BYTES:,}, "
            f"set {MAX_FILE_BYTES_ENV} to change it)"
        ),
        "f": "file missing",
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_class_folder_is_a_bad_sample(tmp_path):
    (tmp_path / "pool" / "cat").mkdir(parents=True)
    (tmp_path / "pool" / "cat" / "a.jpg").write_bytes(JPEG)
    os.mkfifo(tmp_path / "pool" / "cat" / "b.jpg")
    good, errors = scan_with_guard(open_source(f"folder:{tmp_path / 'pool'}"))
    assert good.tolist() == [0] and [(b.sample_id, b.reason) for b in errors] == [
        ("cat/b.jpg", "is a FIFO (named pipe), not a regular file")
    ]


def test_the_size_cap_comes_from_the_environment(tmp_path, monkeypatch):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(JPEG)
    pd.DataFrame({"path": ["p.jpg"], "label": [0]}).to_csv(tmp_path / "m.csv", index=False)
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, str(len(JPEG)))
    assert open_source(f"manifest:{tmp_path / 'm.csv'}").read_bytes(0) == JPEG  # exactly the cap: read
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, str(len(JPEG) - 1))
    source = open_source(f"manifest:{tmp_path / 'm.csv'}")
    with pytest.raises(BadSampleError) as info:
        source.load(0)
    assert info.value.bad.reason == (
        f"file too large ({len(JPEG):,} bytes; the cap is {len(JPEG) - 1:,}, set {MAX_FILE_BYTES_ENV} to change it)"
    )
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "lots")
    assert error_of(f"manifest:{tmp_path / 'm.csv'}") == (
        f"manifest:{tmp_path / 'm.csv'}: {MAX_FILE_BYTES_ENV}='lots' is not a positive whole number of bytes "
        f"(default {MAX_FILE_BYTES})"
    )


def test_an_over_cap_shard_member_is_a_bad_sample(tmp_path, monkeypatch):
    write_shard(tmp_path / "a.tar", labelled_members(count=3))
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, str(len(ITEMS[1][2]) - 1))
    source = open_source(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path / "idx")
    with pytest.raises(BadSampleError) as info:
        source.load(1)
    assert info.value.bad.reason == (
        f"image member too large ({len(ITEMS[1][2]):,} bytes; the cap is {len(ITEMS[1][2]) - 1:,}, "
        f"set {MAX_FILE_BYTES_ENV} to change it)"
    )


def test_read_file_reads_a_regular_file_whole(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00\x01" * 100_000)
    assert read_file(path, "x", max_bytes=200_000) == b"\x00\x01" * 100_000
    with pytest.raises(BadSampleError, match="file too large"):
        read_file(path, "x", max_bytes=199_999)


# --- uids that differ only in case ----------------------------------------------------------------------


def test_uids_that_differ_only_in_case_are_refused_when_shards_open(tmp_path):
    upper, lower = "AB" * 16, "ab" * 16
    members = []
    for key, uid, data in (("k0", upper, ITEMS[0][2]), ("k1", "cd" * 16, ITEMS[1][2]), ("k2", lower, ITEMS[2][2])):
        members += [
            (f"{key}.jpg", data),
            (f"{key}.txt", b"a caption"),
            (f"{key}.json", json.dumps({"uid": uid}).encode()),
        ]
    write_shard(tmp_path / "p.tar", members)
    assert error_of(f"wds:{tmp_path / 'p.tar'}", index_dir=tmp_path) == (
        f"wds:{tmp_path / 'p.tar'}: uids differ only in case: {upper!r} (k0 in {tmp_path / 'p.tar'}) and "
        f"{lower!r} (k2 in {tmp_path / 'p.tar'}) are one 128-bit uid, and DataComp subsets and uid keep-lists "
        "ignore case; every pair needs a unique uid"
    )


def test_uids_that_differ_only_in_case_are_refused_in_a_manifest_but_paths_may(tmp_path):
    photo = str(next((FIXTURE / "cat").iterdir()))
    pd.DataFrame({"path": [photo] * 2, "caption": ["one", "two"], "sample_id": ["0F" * 16, "0f" * 16]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    assert error_of(f"manifest:{tmp_path / 'm.csv'}") == (
        f"sample ids in manifest:{tmp_path / 'm.csv'} differ only in case: {'0F' * 16!r} and {'0f' * 16!r} "
        "are one 128-bit uid, and DataComp subsets and uid keep-lists ignore case; every pair needs a unique uid"
    )
    pd.DataFrame({"path": [photo] * 2, "label": [0, 1], "sample_id": ["cat/A.jpg", "cat/a.jpg"]}).to_csv(
        tmp_path / "n.csv", index=False
    )
    assert list(open_source(f"manifest:{tmp_path / 'n.csv'}").sample_ids) == ["cat/A.jpg", "cat/a.jpg"]


# --- what already held ----------------------------------------------------------------------------------


def test_member_names_with_dots_or_a_root_and_symlink_members_are_never_followed(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name, data in (("../evil.jpg", JPEG), ("../evil.cls", b"1"), ("/abs/x.jpg", JPEG), ("/abs/x.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        info = tarfile.TarInfo("link.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"0"))
    before = sorted(os.listdir(tmp_path.parent))
    source = open_source(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path / "idx")
    assert list(source.sample_ids) == ["../evil", "/abs/x"] and source.labels.tolist() == [1, 0]
    assert source.read_bytes(0) == JPEG and source.read_bytes(1) == JPEG  # bytes from inside the tar, nothing written
    assert reasons(source) == {"link": "no image member (.jpg/.jpeg/.png/.webp)"}
    assert sorted(os.listdir(tmp_path.parent)) == before and not Path("/abs").exists()


def test_duplicate_keys_in_a_truncated_shard_are_still_refused(tmp_path):
    members = labelled_members(count=4)
    write_shard(tmp_path / "a.tar", [*members[:4], (f"{ITEMS[1][0]}.jpg", JPEG), *members[4:]])
    short = cut(tmp_path / "a.tar", member_offsets(tmp_path / "a.tar")[-1].offset, "dup")
    message = error_of(f"wds:{short}", index_dir=tmp_path / "idx")
    assert message == f"wds:{short}: duplicate sample ids (the same key twice in one shard): '{ITEMS[1][0]} in {short}'"
