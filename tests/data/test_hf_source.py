"""``hf:`` pools: a ``datasets`` folder or parquet file made from the committed fixtures gives the same samples,
labels, captions and pixels as the files it was made from; rows without an image, a label or a caption are bad
samples; every bad SPEC is one line naming what exists. Nothing is downloaded (no Hub name is opened)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimic_explorer.data.errors import BadSampleError, DataSourceError
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.torch_dataset import load_tensors
from tests.source_helpers import CLASSES, FIXTURE, FLICKR_MINI, cifar_dataset, flickr_dataset

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "cifar"
    cifar_dataset().save_to_disk(str(folder))
    return folder


def error_of(spec: str) -> str:
    with pytest.raises(DataSourceError) as info:
        open_source(spec)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_save_to_disk_folder_is_the_folder_pool_it_was_made_from(cifar_folder, tmp_path):
    folder = open_source(f"folder:{FIXTURE}")
    hf = open_source(f"hf:{cifar_folder}?id=key")
    assert hf.kind == "hf" and len(hf) == 30 and hf.class_names == CLASSES == folder.class_names
    assert [Path(s).stem for s in folder.sample_ids] == hf.sample_ids.tolist()
    np.testing.assert_array_equal(hf.labels, folder.labels)
    np.testing.assert_array_equal(hf.sizes(), folder.sizes())  # the same encoded bytes
    _, x_ref, y_ref = load_tensors(folder, arch="small_cnn")
    _, x, y = load_tensors(hf, arch="small_cnn")
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert hf.source_of(3) == f"{cifar_folder}#3"
    assert hf.describe()["hf"]["columns"] == {"image": "img", "label": "label", "caption": None, "id": "key"}
    # the row index is the id without an id column; the same rows as a parquet file are the same pool
    assert open_source(f"hf:{cifar_folder}").sample_ids.tolist() == [str(k) for k in range(30)]
    cifar_dataset().to_parquet(str(tmp_path / "cifar.parquet"))
    parquet = open_source(f"hf:{tmp_path / 'cifar.parquet'}?id=key")
    assert parquet.fingerprint() == hf.fingerprint() and parquet.class_names == CLASSES
    arrow = open_source(f"hf:{next(cifar_folder.glob('*.arrow'))}?id=key")  # one Arrow file of the folder
    assert arrow.fingerprint() == hf.fingerprint()
    # workers get a pickled copy that reads the same bytes
    copy = pickle.loads(pickle.dumps(hf))
    assert copy.read_bytes(7) == hf.read_bytes(7) == (FIXTURE / folder.sample_ids[7]).read_bytes()


def test_splits_of_a_dataset_dict(tmp_path):
    whole = cifar_dataset()
    dd = datasets.DatasetDict({"train": whole.select(range(20)), "test": whole.select(range(20, 30))})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(open_source(f"hf:{tmp_path / 'dd'}")) == 20  # train without a split named
    test = open_source(f"hf:{tmp_path / 'dd'}:test?id=key")
    assert len(test) == 10 and test.sample_ids[0] == whole[20]["key"]
    assert "no split 'valid'; the dataset has train, test" in error_of(f"hf:{tmp_path / 'dd'}:valid")
    datasets.DatasetDict({"a": whole, "b": whole}).save_to_disk(str(tmp_path / "ab"))
    assert "has splits a, b; name one" in error_of(f"hf:{tmp_path / 'ab'}")


def test_image_text_pairs_from_a_caption_column(tmp_path):
    shards = open_source(f"wds:{FLICKR_MINI}")
    flickr_dataset().save_to_disk(str(tmp_path / "pairs"))
    hf = open_source(f"hf:{tmp_path / 'pairs'}")
    assert hf.pool_kind == "pairs" and hf.class_names == [] and (hf.labels == -1).all()
    assert hf.sample_ids.tolist() == shards.sample_ids.tolist()  # the uid column is the id
    assert hf.captions.tolist() == shards.captions.tolist()
    assert hf.read_bytes(5) == shards.read_bytes(5)
    # a list of captions: the first is the caption, all of them are the pair's captions
    rows = flickr_dataset().to_dict()
    from tests.source_helpers import flickr_members

    every = [p["all_captions"] for p in flickr_members()]
    listed = datasets.Dataset.from_dict(
        {"jpg": rows["image"], "sentences": every, "uid": rows["uid"]},
        features=datasets.Features(
            {
                "jpg": datasets.Image(),
                "sentences": datasets.List(datasets.Value("string")),
                "uid": datasets.Value("string"),
            }
        ),
    )
    listed.to_parquet(str(tmp_path / "listed.parquet"))
    many = open_source(f"hf:{tmp_path / 'listed.parquet'}?caption=sentences")
    assert many.all_captions(0) == shards.all_captions(0) and many.captions[0] == every[0][0]


def test_rows_without_an_image_a_label_or_a_decodable_image_are_bad_samples(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good, "PNG")
    ds = datasets.Dataset.from_dict(
        {
            "picture": [{"bytes": good.getvalue(), "path": None}, None, {"bytes": b"not an image", "path": None}] * 2,
            "label": [0, 1, 1, 1, -1, 0],
        },
        features=datasets.Features({"picture": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}),
    )
    ds.save_to_disk(str(tmp_path / "messy"))
    source = open_source(f"hf:{tmp_path / 'messy'}")
    bad = {b.sample_id: b.reason for b in source.open_errors}
    assert bad == {"1": "no image in this row", "4": "no image in this row"}  # row 4 also has no label
    assert source.sample_ids.tolist() == ["0", "2", "3", "5"]
    with pytest.raises(BadSampleError, match="not an image"):
        source.load(1)  # row 2's bytes: a bad sample the run records in errors.parquet
    positions, errors = source.scan()
    assert positions.tolist() == [0, 2] and sorted(errors.sample_ids) == ["1", "2", "4", "5"]


def test_label_and_id_columns_named_in_the_spec(tmp_path):
    items = cifar_dataset().to_dict()
    ds = datasets.Dataset.from_dict(
        {
            "img": items["img"],
            "fine_label": [CLASSES[k] for k in items["label"]],
            "coarse": [k % 2 for k in items["label"]],
            "uid": [f"id-{k}" for k in range(30)],
        },
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.Value("string"),
                "coarse": datasets.Value("int64"),
                "uid": datasets.Value("string"),
            }
        ),
    )
    ds.save_to_disk(str(tmp_path / "named"))
    names = open_source(f"hf:{tmp_path / 'named'}?label=fine_label")
    assert names.class_names == sorted(CLASSES) and names.sample_ids[0] == "id-0"
    assert [names.class_names[k] for k in names.labels] == [CLASSES[k] for k in items["label"]]
    coarse = open_source(f"hf:{tmp_path / 'named'}?label=coarse&image=img")
    assert coarse.class_names == ["0", "1"] and coarse.labels.tolist() == [k % 2 for k in items["label"]]
    assert "duplicate sample ids" in error_of(f"hf:{tmp_path / 'named'}?label=coarse&id=fine_label")


@pytest.mark.parametrize(
    "query, cause",
    [
        ("?label=fine", "no column 'fine' (label=); columns: img (Image), label (ClassLabel), key (Value(string))"),
        ("?colour=red", "unknown column role 'colour'"),
        ("?label=label&caption=key", "name a label or a caption column, not both"),
        ("?image=key", "image=key is a Value(string) column"),
        ("?id=label", "duplicate sample ids"),
        (":test", "holds one dataset without splits; drop :test"),
    ],
)
def test_bad_specs_are_one_line_naming_what_exists(cifar_folder, query, cause):
    assert cause in error_of(f"hf:{cifar_folder}{query}")


def test_no_image_column_no_label_missing_paths(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]})
    ds.save_to_disk(str(tmp_path / "plain"))
    assert "no image column (no Image feature); name one with ?image=COLUMN; columns: text (Value(string))" in (
        error_of(f"hf:{tmp_path / 'plain'}")
    )
    no_label = cifar_dataset().remove_columns(["label", "key"])
    no_label.save_to_disk(str(tmp_path / "nolabel"))
    assert "no label column (a ClassLabel or one named label) and no caption column" in error_of(
        f"hf:{tmp_path / 'nolabel'}"
    )
    assert "does not exist" in error_of(f"hf:{tmp_path / 'absent'}")
    assert "does not exist" in error_of(f"hf:{tmp_path / 'absent.parquet'}")
    assert "no file matches" in error_of(f"hf:{tmp_path / '*.parquet'}")
    empty_ids = cifar_dataset().map(lambda row, k: {"key": "" if k == 3 else row["key"]}, with_indices=True)
    empty_ids.save_to_disk(str(tmp_path / "emptyid"))
    assert "id column 'key' is empty in 1 row(s) (first: row 3)" in error_of(f"hf:{tmp_path / 'emptyid'}?id=key")
