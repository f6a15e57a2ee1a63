"""A pool restricted to a keep-list (real CIFAR-10 and Flickr8k shards): the view has exactly the
listed samples in pool order, reads only them, matches DataComp uids without regard to case, warns
about listed ids the pool lacks and refuses a keep-list that shares no id with the pool."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.keep_lists import read_keep_list
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.subset import SubsetSource, restrict_to_keep_list
from mimic_explorer.filters.formats import datacomp_uids
from tests.pairs_helpers import FLICKR, needs_flickr
from tests.subset_helpers import CIFAR, needs_cifar, shard_excerpt, write_ids


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar-subset")
    return open_source(f"wds:{shard_excerpt(CIFAR / 'train-00.tar', folder / 'pool.tar', 40)}", index_dir=folder)


@needs_cifar
def test_the_view_holds_the_listed_samples_in_pool_order_and_reads_only_them(cifar, tmp_path):
    listed = [cifar.sample_ids[k] for k in (31, 3, 17, 8)]
    subset, report = restrict_to_keep_list(cifar, read_keep_list(write_ids(tmp_path / "k.csv", listed)))
    assert isinstance(subset, SubsetSource) and subset.positions.tolist() == [3, 8, 17, 31]
    assert subset.sample_ids.tolist() == [cifar.sample_ids[k] for k in (3, 8, 17, 31)]
    assert subset.labels.tolist() == cifar.labels[[3, 8, 17, 31]].tolist() and subset.class_names == cifar.class_names
    assert report.warnings == [] and report.facts["kept"] == 4 and report.facts["missing"] == 0
    assert report.facts["pool_samples"] == 40 and subset.describe()["pool_samples"] == 40
    read = []
    original = cifar.read_bytes
    cifar.read_bytes = lambda i: read.append(i) or original(i)
    try:
        images = dict(subset.iter_images())
    finally:
        del cifar.read_bytes
    assert sorted(read) == [3, 8, 17, 31] and len(images) == 4
    assert np.array_equal(np.asarray(images[2]), np.asarray(cifar.load(17)))
    assert (
        subset.source_of(3) == cifar.source_of(31) and subset.sizes().tolist() == cifar.sizes()[[3, 8, 17, 31]].tolist()
    )
    assert subset.fingerprint() != cifar.fingerprint()


@needs_cifar
def test_listed_ids_the_pool_lacks_are_counted_and_named(cifar, tmp_path):
    listed = [*list(cifar.sample_ids[:5]), "train_cat_99999", "elsewhere"]
    subset, report = restrict_to_keep_list(cifar, read_keep_list(write_ids(tmp_path / "k.parquet", listed)))
    assert len(subset) == 5
    assert report.facts["missing"] == 2 and sorted(report.facts["missing_examples"]) == ["elsewhere", "train_cat_99999"]
    assert len(report.warnings) == 1 and "2 of the 7 id(s)" in report.warnings[0] and "elsewhere" in report.warnings[0]


@needs_cifar
def test_a_keep_list_sharing_no_id_with_the_pool_is_refused(cifar, tmp_path):
    with pytest.raises(DataSourceError, match=r"none of its 2 id\(s\) is a usable sample.*'x1'.*the pool has e.g."):
        restrict_to_keep_list(cifar, read_keep_list(write_ids(tmp_path / "k.json", ["x1", "x2"])))


@needs_flickr
def test_datacomp_uids_select_pairs_with_their_captions(tmp_path):
    pool = open_source(f"wds:{shard_excerpt(FLICKR / 'dev-00.tar', tmp_path / 'pairs.tar', 12)}", index_dir=tmp_path)
    mask = np.zeros(len(pool), dtype=bool)
    mask[[1, 4, 9]] = True
    path = tmp_path / "subset.npy"
    np.save(path, datacomp_uids(pool.sample_ids, mask))
    # the pool's uids in upper case still match: a uid is a number
    pool.sample_ids = np.asarray([s.upper() for s in pool.sample_ids], dtype=object)
    subset, report = restrict_to_keep_list(pool, read_keep_list(path))
    assert subset.pool_kind == "pairs" and subset.positions.tolist() == [1, 4, 9]
    assert subset.captions.tolist() == pool.captions[[1, 4, 9]].tolist()
    assert subset.all_captions(0) == pool.all_captions(1) and len(subset.all_captions(0)) == 5
    assert report.facts["format"] == "uids" and report.facts["kept"] == 3


@needs_cifar
def test_a_uid_list_against_a_pool_keyed_otherwise_says_so(tmp_path, cifar):
    path = tmp_path / "subset.npy"
    np.save(path, datacomp_uids(["0" * 31 + "1"], np.ones(1, bool)))
    with pytest.raises(DataSourceError, match="32-hex-digit uids"):
        restrict_to_keep_list(cifar, read_keep_list(path))


@needs_flickr
def test_listed_pairs_the_pool_cannot_use_stay_recorded_as_bad_samples(tmp_path):
    import io
    import tarfile

    shard = shard_excerpt(FLICKR / "dev-00.tar", tmp_path / "pairs.tar", 4)
    with tarfile.open(shard, "a") as tar:  # a photo without a caption: an open error of the pool
        info = tarfile.TarInfo("mute.jpg")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\xff\xd8\xff\xe0"))
    pool = open_source(f"wds:{shard}", index_dir=tmp_path)
    assert [b.sample_id for b in pool.open_errors] == ["mute"]
    listed = [pool.sample_ids[0], pool.sample_ids[2], "mute"]
    subset, report = restrict_to_keep_list(pool, read_keep_list(write_ids(tmp_path / "k.csv", listed)))
    assert subset.sample_ids.tolist() == listed[:2] and [b.sample_id for b in subset.open_errors] == ["mute"]
    assert report.facts["unusable"] == 1 and report.facts["missing"] == 0 and report.warnings == []
    with pytest.raises(DataSourceError, match="the listed samples it holds are unusable: 'no caption"):
        restrict_to_keep_list(pool, read_keep_list(write_ids(tmp_path / "only.csv", ["mute"])))
