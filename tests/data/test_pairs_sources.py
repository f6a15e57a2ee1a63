"""Image-text pair pools: shards with captions (DataComp layout) and caption manifests open as pairs,
bad pairs are recorded and skipped, a pool mixing labels and captions is refused, caption noise is a
seeded derangement. The real Flickr8k shards are used when ../shared is present."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.noise import caption_noise
from mimic_explorer.data.specs import open_source
from tests.data.test_sources import error_of, fixture_items, write_shard

FLICKR = Path(__file__).resolve().parents[3] / "shared" / "data" / "flickr8k"
needs_flickr = pytest.mark.skipif(not (FLICKR / "dev-00.tar").exists(), reason="../shared/data/flickr8k not present")


def jpegs(count: int) -> list[bytes]:
    return [data for _, _, data in fixture_items()[:count]]


def pair_members(
    key: str, image: bytes | None, caption: bytes | None, meta: dict | bytes | None = None
) -> list[tuple[str, bytes]]:
    members = [] if image is None else [(f"{key}.jpg", image)]
    if caption is not None:
        members.append((f"{key}.txt", caption))
    if meta is not None:
        members.append((f"{key}.json", meta if isinstance(meta, bytes) else json.dumps(meta).encode()))
    return members


# --- shards --------------------------------------------------------------------------------------


def test_caption_shards_open_as_pairs_with_uids_as_ids(tmp_path):
    images = jpegs(3)
    members = (
        pair_members(
            "k0", images[0], b"A dog runs .\n", {"uid": "00ff" * 8, "all_captions": ["A dog runs .", "A dog .", " "]}
        )
        + pair_members("k1", images[1], "Un caf\u00e9 .".encode(), {"caption": "no uid here"})
        + pair_members("k2", images[2], b"two cats", None)
    )
    write_shard(tmp_path / "p.tar", members)
    src = open_source(f"wds:{tmp_path / 'p.tar'}", index_dir=tmp_path)
    assert src.pool_kind == "pairs" and src.describe()["pool_kind"] == "pairs"
    assert list(src.sample_ids) == ["00ff" * 8, "k1", "k2"]
    assert list(src.captions) == ["A dog runs .", "Un caf\u00e9 .", "two cats"]
    assert src.class_names == [] and src.labels.tolist() == [-1, -1, -1]
    assert src.source_of(0).endswith("p.tar:k0.jpg")  # the member's key, not the uid
    assert src.all_captions(0) == ["A dog runs .", "A dog ."] and src.all_captions(2) == ["two cats"]
    assert src.metadata(1) == {"caption": "no uid here"} and src.metadata(2) is None
    assert np.array_equal(np.asarray(src.get("00ff" * 8)), np.asarray(src.load(0)))
    assert "3 image-text pairs" in repr(src) and not src.open_errors
    reopened = open_source(f"wds:{tmp_path / 'p.tar'}", index_dir=tmp_path)  # from the saved index
    assert list(reopened.captions) == list(src.captions) and reopened.fingerprint() == src.fingerprint()


def test_bad_pairs_are_recorded_and_skipped(tmp_path):
    images = jpegs(7)
    members = (
        pair_members("good", images[0], b"a fine caption")
        + pair_members("no_image", None, b"caption without a picture")
        + pair_members("no_caption", images[1], None, {"uid": "u-no-caption"})
        + pair_members("empty", images[2], b"  \n")
        + pair_members("latin1", images[3], "caf\u00e9".encode("latin-1"))
        + pair_members("broken_json", images[4], b"ok text", b"{not json")
        + pair_members("list_uid", images[5], b"ok text", {"uid": ["x"]})
        + [("corrupt.jpg", b"not a jpeg"), ("corrupt.txt", b"text of a broken image")]
    )
    write_shard(tmp_path / "p.tar", members)
    src = open_source(f"wds:{tmp_path / 'p.tar'}", index_dir=tmp_path)
    assert list(src.sample_ids) == ["good", "corrupt"]
    reasons = {b.sample_id: b.reason for b in src.open_errors}
    assert set(reasons) == {"no_image", "u-no-caption", "empty", "latin1", "broken_json", "list_uid"}
    assert "no image member" in reasons["no_image"]
    assert reasons["u-no-caption"].startswith("no caption")
    assert reasons["empty"] == "empty caption"
    assert reasons["latin1"].startswith("caption is not UTF-8")
    assert "unreadable .json" in reasons["broken_json"] and "not a non-empty string" in reasons["list_uid"]
    errors = ErrorLog()
    assert [i for i, _ in src.iter_images(errors=errors)] == [0]  # the undecodable image joins at load time
    assert set(errors.sample_ids) == set(reasons) | {"corrupt"}
    assert {"sample_id", "path", "reason"} <= set(errors.to_frame().columns)


def test_duplicate_uids_are_an_error_naming_them(tmp_path):
    images = jpegs(3)
    write_shard(
        tmp_path / "a.tar",
        pair_members("k0", images[0], b"one", {"uid": "abc"}) + pair_members("k1", images[1], b"two"),
    )
    write_shard(tmp_path / "b.tar", pair_members("k2", images[2], b"three", {"uid": "abc"}))
    message = error_of(f"wds:{tmp_path}/{{a,b}}.tar", index_dir=tmp_path)
    assert "duplicate sample ids" in message and "abc" in message
    assert "k0 in" in message and "k2 in" in message and "a.tar" in message and "b.tar" in message


def test_mixing_labels_and_captions_is_an_error_naming_examples(tmp_path):
    images = jpegs(4)
    labelled = [("l0.jpg", images[0]), ("l0.cls", b"1"), ("l1.jpg", images[1]), ("l1.cls", b"0")]
    pairs = pair_members("p0", images[2], b"a caption") + pair_members("p1", images[3], b"another")
    write_shard(tmp_path / "mixed.tar", labelled + pairs)
    message = error_of(f"wds:{tmp_path / 'mixed.tar'}", index_dir=tmp_path)
    assert "mixes labelled samples" in message and "l0" in message and "p0" in message
    write_shard(tmp_path / "l.tar", labelled)
    write_shard(tmp_path / "p.tar", pairs)
    message = error_of(f"wds:{tmp_path}/{{l,p}}.tar", index_dir=tmp_path)
    assert "mixes labelled samples" in message and "l1" in message and "p1" in message


def test_labelled_shards_with_extra_text_stay_labelled(tmp_path):
    images = jpegs(2)
    write_shard(
        tmp_path / "a.tar",
        [
            ("k0.jpg", images[0]),
            ("k0.cls", b"1"),
            ("k0.txt", b"cat"),
            ("k0.json", b'{"uid": "z"}'),
            ("k1.jpg", images[1]),
            ("k1.cls", b"0"),
        ],
    )
    src = open_source(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path)
    assert src.pool_kind == "labelled" and src.captions is None and src.all_captions(0) == []
    assert list(src.sample_ids) == ["k0", "k1"] and src.labels.tolist() == [1, 0]


def test_indexing_a_labelled_shard_reads_no_text_member(tmp_path, monkeypatch):
    """The labelled index build stays as it was: .txt/.json members are located, never read."""
    from mimic_explorer.data import wds as wds_module

    def refuse(*args, **kwargs):
        raise AssertionError("a labelled shard's text members were read")

    monkeypatch.setattr(wds_module, "read_text", refuse)
    images = jpegs(2)
    write_shard(
        tmp_path / "a.tar",
        [("k0.jpg", images[0]), ("k0.cls", b"1"), ("k0.json", b"{}"), ("k1.jpg", images[1]), ("k1.cls", b"0")],
    )
    assert open_source(f"wds:{tmp_path / 'a.tar'}", index_dir=tmp_path).labels.tolist() == [1, 0]


@needs_flickr
def test_real_flickr8k_shards(tmp_path):
    src = open_source(f"wds:{FLICKR}/dev-00.tar", index_dir=tmp_path)
    assert len(src) == 1000 and src.pool_kind == "pairs" and not src.open_errors
    assert all(re.fullmatch(r"[0-9a-f]{32}", sid) for sid in src.sample_ids.tolist())
    meta = src.metadata(7)
    assert meta["uid"] == src.sample_ids[7] and meta["caption"] == src.captions[7] and meta["split"] == "dev"
    assert src.all_captions(7)[0] == src.captions[7] and 2 <= len(src.all_captions(7)) <= 5
    image = src.load(7)
    assert max(image.size) == 128
    pool = open_source(f"wds:{FLICKR}/train-{{00..02}}.tar", index_dir=tmp_path)
    assert len(pool) == 6000 and not set(pool.sample_ids) & set(src.sample_ids)


# --- manifests -----------------------------------------------------------------------------------


def _fixture_paths(count: int) -> list[str]:
    root = Path(__file__).resolve().parents[1] / "fixtures" / "cifar_mini"
    return [str(p) for p in sorted(root.glob("*/*.jpg"))[:count]]


def test_caption_manifest_opens_as_pairs_and_records_bad_rows(tmp_path):
    paths = _fixture_paths(4)
    frame = pd.DataFrame(
        {
            "path": [*paths, ""],
            "caption": ["a plane", "", "  a car  ", "x", "no path"],
            "sample_id": ["a", "b", "c", "d", "e"],
        }
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    raw = (tmp_path / "m.csv").read_bytes().replace(b",x,", b",caf\xe9,")  # one Latin-1 caption
    (tmp_path / "m.csv").write_bytes(raw)
    src = open_source(f"manifest:{tmp_path / 'm.csv'}")
    assert src.pool_kind == "pairs" and list(src.sample_ids) == ["a", "c"]
    assert list(src.captions) == ["a plane", "a car"]
    reasons = {b.sample_id: b.reason for b in src.open_errors}
    assert reasons == {
        "b": "manifest row has no caption",
        "d": "caption is not UTF-8 text",
        "e": "manifest row has no path",
    }
    src.load(1)


def test_caption_manifest_parquet_bytes_and_errors(tmp_path):
    paths = _fixture_paths(3)
    pd.DataFrame({"path": paths, "caption": [b"bytes caption", "caf\u00e9".encode("latin-1"), "text"]}).to_parquet(
        tmp_path / "m.parquet"
    )
    src = open_source(f"manifest:{tmp_path / 'm.parquet'}")
    assert list(src.captions) == ["bytes caption", "text"] and len(src.open_errors) == 1
    pd.DataFrame({"path": paths, "label": ["0", "", ""], "caption": ["", "a dog", "a cat"]}).to_csv(
        tmp_path / "mix.csv", index=False
    )
    message = error_of(f"manifest:{tmp_path / 'mix.csv'}")
    assert "mixes labelled samples" in message and "caption without label" in message
    pd.DataFrame({"file": paths}).to_csv(tmp_path / "none.csv", index=False)
    assert "or path and caption" in error_of(f"manifest:{tmp_path / 'none.csv'}")
    (tmp_path / "badpath.csv").write_bytes(b"path,caption\n/tmp/caf\xe9.jpg,a caption\n")
    message = error_of(f"manifest:{tmp_path / 'badpath.csv'}")
    assert "column 'path' is not UTF-8" in message and "row 1" in message
    labelled = pd.DataFrame({"path": paths, "label": [0, 1, 0], "caption": ["a", "b", "c"]})
    labelled.to_csv(tmp_path / "lab.csv", index=False)
    assert open_source(f"manifest:{tmp_path / 'lab.csv'}").pool_kind == "labelled"


def test_pairs_fingerprint_depends_on_captions(tmp_path):
    paths = _fixture_paths(2)
    pd.DataFrame({"path": paths, "caption": ["one", "two"]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"path": paths, "caption": ["one", "three"]}).to_csv(tmp_path / "b.csv", index=False)
    first, second = (open_source(f"manifest:{tmp_path / n}") for n in ("a.csv", "b.csv"))
    assert list(first.sample_ids) == list(second.sample_ids) and first.fingerprint() != second.fingerprint()


# --- caption noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, rate", [(10, 0.2), (1000, 0.3), (7, 0.5), (6000, 0.5)])
def test_caption_noise_is_a_seeded_derangement_of_exactly_the_chosen_pairs(n, rate):
    noisy = caption_noise(n, rate, seed=3)
    assert noisy.is_noisy.sum() == int(rate * n)
    moved = np.flatnonzero(noisy.is_noisy)
    assert (noisy.order[moved] != moved).all() and (
        noisy.order[~noisy.is_noisy] == np.flatnonzero(~noisy.is_noisy)
    ).all()
    assert sorted(noisy.order[moved].tolist()) == moved.tolist()  # permuted among themselves
    assert sorted(noisy.order.tolist()) == list(range(n))
    again, other = caption_noise(n, rate, seed=3), caption_noise(n, rate, seed=4)
    assert np.array_equal(again.order, noisy.order) and not np.array_equal(other.order, noisy.order)


def test_caption_noise_refuses_bad_rates_and_too_few_pairs():
    for rate in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"caption noise rate must be in \[0, 1\)"):
            caption_noise(100, rate)
    with pytest.raises(ValueError, match="needs at least 2"):
        caption_noise(10, 0.15)
    identity = caption_noise(5, 0.0)
    assert identity.order.tolist() == [0, 1, 2, 3, 4] and not identity.is_noisy.any()
