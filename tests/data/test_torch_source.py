"""``TorchSource``: a dataset in memory read as a pool — ids, targets and classes up front, pictures by
position, the dataset's own tensors handed to the model unchanged, bad items reported, and a fingerprint
that follows the items' content."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.torch_source import MODEL_INPUT, ModelInputs, TorchSource, picture_of
from mimic_explorer.data.transforms import ImageTransform


def _tensors(n: int = 6) -> list:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(3, 8, 8, generator=generator), i % 3) for i in range(n)]


class WithClasses(list):
    classes = ("cat", "dog", "eel")


def test_tensors_reach_the_model_unchanged_and_a_picture_of_each_is_shown():
    items = _tensors()
    source = TorchSource(WithClasses(items))
    assert source.gives_tensors and source.class_names == ["cat", "dog", "eel"]
    assert source.sample_ids.tolist() == ["0", "1", "2", "3", "4", "5"] and source.labels.tolist() == [0, 1, 2] * 2
    picture = source.load(2)
    assert picture.mode == "RGB" and picture.size == (8, 8)
    inputs = source.model_inputs()
    assert inputs(picture) is picture.info[MODEL_INPUT] and torch.equal(inputs(picture), items[2][0])
    assert inputs.describe() == {"inputs": "the tensors WithClasses gives, unchanged"}
    assert source.source_of(2) == "WithClasses[2]"


def test_pictures_go_through_the_transform_and_its_description_is_recorded():
    transform = ImageTransform(8, 8)
    source = TorchSource([(Image.new("RGB", (10, 12), (200, 10, 10)), 1), (np.zeros((9, 9), np.uint8), 0)])
    assert not source.gives_tensors and source.class_names == ["0", "1"]
    inputs = source.model_inputs(transform)
    assert inputs(source.load(0)).shape == (3, 8, 8) and inputs.describe() == transform.describe()
    assert ModelInputs(lambda image: image).describe()["callable"].endswith("<lambda>")  # no memory address


def test_dict_rows_are_read_by_their_column_names_or_the_ones_given():
    rows = [{"pixels": torch.zeros(3, 4, 4), "fine_label": k, "uid": f"u{k}"} for k in range(3)]
    source = TorchSource(rows, columns={"image": "pixels"})
    assert source.sample_ids.tolist() == ["u0", "u1", "u2"] and source.labels.tolist() == [0, 1, 2]
    pairs = TorchSource([{"image": torch.zeros(3, 4, 4), "caption": f"a dog {k}"} for k in range(3)])
    assert pairs.pool_kind == "pairs" and pairs.captions.tolist() == ["a dog 0", "a dog 1", "a dog 2"]
    with pytest.raises(DataSourceError, match="no column that is an image"):
        TorchSource([{"x": 1, "label": 0}])
    with pytest.raises(DataSourceError, match="columns names image 'nope', which the items lack"):
        TorchSource(rows, columns={"image": "nope"})


def test_an_item_that_fails_or_differs_in_kind_is_a_bad_sample_not_a_dead_pool():
    class Broken(list):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("unreadable")
            return super().__getitem__(i)

    items = _tensors(4)
    items[3] = (Image.new("RGB", (8, 8)), 0)  # a picture among tensors
    source = TorchSource(Broken(items))
    assert source.sample_ids.tolist() == ["0", "2"] and source.dataset_index(np.arange(2)).tolist() == [0, 2]
    reasons = {bad.sample_id: bad.reason for bad in source.open_errors}
    assert reasons == {
        "1": "OSError: unreadable",
        "3": "ValueError: item 3 is a picture where the first items are tensors",
    }

    class Gone(list):
        def __getitem__(self, i):
            raise OSError("unreadable")

    with pytest.raises(DataSourceError, match=r"Gone: the dataset has no usable items \(the first: OSError"):
        TorchSource(Gone([0, 0]))


def test_the_fingerprint_follows_the_content_not_only_ids_and_labels():
    items = _tensors()
    same = TorchSource(list(items)).fingerprint()
    assert TorchSource(list(items)).fingerprint() == same
    items[4] = (items[4][0] + 1e-3, items[4][1])
    assert TorchSource(items).fingerprint() != same


def test_pictures_of_inputs_that_are_no_images_are_still_pictures():
    assert picture_of(torch.arange(10.0)).size == (4, 4)  # a feature vector laid out as a square
    assert picture_of(torch.zeros(1, 5, 5)).size == (5, 5)  # constant: black, not a division by zero
