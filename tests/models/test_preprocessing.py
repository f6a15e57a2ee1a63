"""Preprocessing: the ``--transform`` text parser and its errors, ``--image-size``, declared input
sizes, the mismatch warning, ``ImageTransform`` validation and the feature-cache key it feeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mimic_explorer.data.digits import ArrayDataset
from mimic_explorer.data.memory import ArraySource
from mimic_explorer.data.transforms import ImageTransform, default_transform
from mimic_explorer.models.checkpoints import load_checkpoint, save_checkpoint
from mimic_explorer.models.preprocessing import (
    PreprocessingError,
    declared_input_size,
    override_preprocessing,
    parse_transform_text,
    preprocessing_mismatch,
)
from mimic_explorer.models.small import SmallCNN
from mimic_explorer.training.features import feature_key

BASE = ImageTransform(256, 224)


def parse_error(text: str) -> str:
    with pytest.raises(PreprocessingError) as info:
        parse_transform_text(text)
    return str(info.value)


def test_transform_text_is_parsed_into_typed_values():
    parsed = parse_transform_text("resize=40, crop=32,mean=0.5,0.4,0.3,std=0.2,interpolation=BICUBIC,crop-mode=squash")
    assert parsed == {
        "resize": 40,
        "crop": 32,
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.2, 0.2),
        "interpolation": "bicubic",
        "crop_mode": "squash",
    }
    assert parse_transform_text("crop=28") == {"crop": 28}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "needs KEY=VALUE pairs"),
        ("size=32", "unknown key 'size'"),
        ("corp=32", "did you mean crop?"),
        ("crop=32,crop=28", "crop is given twice"),
        ("32,crop=28", "'32' comes before any KEY=VALUE"),
        ("crop=big", "crop must be a whole number of pixels, got 'big'"),
        ("crop=0", "crop must be at least 1 pixel"),
        ("crop=32,28", "crop takes one whole number of pixels"),
        ("mean=0.5,0.4", "mean needs 3 values (R,G,B) or one for all channels, got 2"),
        ("std=0.2,0,0.2", "std values must be finite and > 0"),
        ("mean=a,b,c", "mean needs numbers"),
        ("interpolation=bicubik", "did you mean bicubic?"),
        ("crop_mode=border", "crop_mode 'border' is not one of center, squash"),
        ("crop=", "crop has an empty value"),
    ],
)
def test_bad_transform_text_names_the_cause(text, expected):
    message = parse_error(text)
    assert expected in message and (text == "" or repr(text) in message)


def test_image_size_then_transform_keys_override_the_base():
    assert override_preprocessing(BASE, image_size=32) == ImageTransform(32, 32)
    assert override_preprocessing(BASE, image_size=32, overrides="resize=36") == ImageTransform(36, 32)
    assert override_preprocessing(BASE, overrides={"mean": (0.1, 0.2, 0.3)}).mean == (0.1, 0.2, 0.3)
    assert override_preprocessing(BASE) == BASE
    with pytest.raises(PreprocessingError, match="resize 24 is smaller than crop 32"):
        override_preprocessing(BASE, image_size=32, overrides="resize=24")
    with pytest.raises(PreprocessingError, match="--image-size must be a positive whole number"):
        override_preprocessing(BASE, image_size=0)
    with pytest.raises(PreprocessingError, match="unknown preprocessing key"):
        override_preprocessing(BASE, overrides={"size": 3})


def test_image_transform_refuses_values_it_cannot_apply():
    for kwargs, expected in [
        ({"resize": 0, "crop": 1}, "resize must be a positive whole number"),
        ({"resize": 32, "crop": 32.5}, "crop must be a positive whole number"),
        ({"resize": 32, "crop": 32, "mean": (0.5,)}, "mean needs 3 values"),
        ({"resize": 32, "crop": 32, "std": (1, 0, 1)}, "std values must be > 0"),
        ({"resize": 32, "crop": 32, "interpolation": "cubic"}, "interpolation 'cubic' is not one of"),
        ({"resize": 32, "crop": 32, "crop_mode": "pad"}, "crop_mode 'pad' is not one of"),
    ]:
        with pytest.raises(ValueError, match=expected):
            ImageTransform(**kwargs)
    assert ImageTransform(np.int64(32), 32).resize == 32


def test_squash_resizes_both_sides_and_describe_keeps_earlier_keys():
    from PIL import Image

    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 16, 32))  # the left quarter blue
    centre, squash = ImageTransform(32, 32), ImageTransform(32, 32, crop_mode="squash")
    assert squash(image).shape == centre(image).shape == (3, 32, 32)
    assert squash(image)[2, 16, 2] > 0 and centre(image)[2, 16, 2] < 0  # the blue strip survives only a squash
    assert "crop_mode" not in centre.describe()  # descriptions (and cache keys) of earlier runs are unchanged
    assert ImageTransform.from_description(squash.describe()) == squash
    assert default_transform("small_cnn").describe() == {
        "resize": 32,
        "crop": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bilinear",
    }


def test_declared_input_sizes():
    def make():
        return None

    module = nn.Linear(2, 2)
    assert declared_input_size(module, make) is None
    make.input_size = 32
    assert declared_input_size(module, make) == 32
    module.input_size = (3, 48, 48)
    assert declared_input_size(module, make) == 48
    module.input_size = (28, 28)
    assert declared_input_size(module) == 28
    module.input_size = (1, 28, 28)
    with pytest.raises(PreprocessingError, match="declares 1 channel"):
        declared_input_size(module)
    module.input_size = (3, 32, 48)
    with pytest.raises(PreprocessingError, match="is not square"):
        declared_input_size(module)
    module.input_size = "32"
    with pytest.raises(PreprocessingError, match=r"input_size must be N, \(H, W\) or \(C, H, W\)"):
        declared_input_size(module)


def test_mismatch_warning_lists_each_difference():
    recorded = ImageTransform(256, 224, interpolation="bicubic").describe()
    assert preprocessing_mismatch(recorded, ImageTransform(256, 224, interpolation="bicubic"), "x.pt") is None
    assert preprocessing_mismatch({"crop": 224}, ImageTransform(300, 224), "x.pt") is None  # only recorded keys count
    warning = preprocessing_mismatch(recorded, ImageTransform(32, 32), "--init x.pt")
    assert warning.startswith("PREPROCESSING MISMATCH: --init x.pt was trained")
    assert (
        "resize 256 -> 32" in warning and "crop 224 -> 32" in warning and "interpolation bicubic -> bilinear" in warning
    )


def test_feature_cache_key_changes_with_the_preprocessing():
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    data = ArrayDataset(np.array(["a", "b", "c", "d"], dtype=object), images, np.array([0, 1, 0, 1]), ["0", "1"], "mem")
    source = ArraySource(data)
    model = SmallCNN(2)

    def key(transform):
        return feature_key(model, "head", transform, source, None)

    assert key(ImageTransform(32, 32)) == key(ImageTransform(32, 32))
    others = [
        ImageTransform(36, 32),
        ImageTransform(32, 32, interpolation="bicubic"),
        ImageTransform(32, 32, mean=(0.5, 0.5, 0.5)),
        ImageTransform(32, 32, crop_mode="squash"),
        override_preprocessing(ImageTransform(32, 32), image_size=28),
    ]
    assert len({key(ImageTransform(32, 32))} | {key(t) for t in others}) == 1 + len(others)


def test_ignored_checkpoint_modules_are_reported_not_refused(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(10)
    state = dict(model.state_dict(), **{"aux1.fc.weight": torch.zeros(2, 2), "aux1.fc.bias": torch.zeros(2)})
    path = save_checkpoint(state, tmp_path / "with-aux.pt")
    report = load_checkpoint(SmallCNN(10), path, ignore=("aux1",))
    assert report.head_loaded and [n for n, _ in report.skipped] == ["aux1.fc.weight", "aux1.fc.bias"]
    assert "aux1 is not part of this model; ignored" in report.skipped[0][1] and not report.unexpected
