"""``build_for_run``: timm and torchvision backbones (random weights, nothing downloaded) get their head
and their own preprocessing, score through ``mimic_scores`` and split into backbone features + linear
probe; weights load from the torch hub cache, ``.safetensors`` files and model folders; bad input is
refused with the cause named."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mimic_explorer
from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.models.build import build_for_run, checkpoint_preprocessing_warning
from mimic_explorer.models.checkpoints import CheckpointError, save_checkpoint
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.models.registry import ArchError

NUM_CLASSES = 3


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def head_inputs_and_logits(
    model: torch.nn.Module, head_name: str, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head receives (the backbone's features) and the model's logits, in eval mode."""
    captured = []
    hook = model.get_submodule(head_name).register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        hook.remove()
    return captured[0], logits


def check_scores_and_probe(built) -> None:
    """The head found is the logits' producer; mimic scores are finite; a linear probe on the backbone's
    features gives the model's logits and the same head-layer mimic scores."""
    torch.manual_seed(0)
    x = torch.randn(4, *built.input_shape)
    y = torch.tensor([0, 1, 2, 1])
    model = built.model.eval()
    assert find_head(model, x)[0] == built.head_name  # traced forward agrees with the family's answer
    reference = built.twin().eval()
    reference.load_state_dict(model.state_dict())  # the shared backbone of the valid protocol
    with torch.no_grad():
        reference.get_submodule(built.head_name).weight.add_(
            0.1 * torch.randn_like(reference.get_submodule(built.head_name).weight)
        )
    scores = mimic_explorer.mimic_scores(model, reference, x, y)
    assert scores.shape == (4,) and torch.isfinite(scores).all() and scores.abs().max() > 0
    features, logits = head_inputs_and_logits(model, built.head_name, x)
    assert features.shape == (4, model.get_submodule(built.head_name).in_features)
    probe = LinearProbe(model.get_submodule(built.head_name))
    assert torch.allclose(probe(features), logits, atol=1e-5)
    probe_scores = mimic_explorer.mimic_scores(
        probe, LinearProbe(reference.get_submodule(built.head_name)), features, y
    )
    assert torch.allclose(probe_scores, scores, atol=1e-5)


# --- timm -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "image_size", "head"),
    [
        ("timm:test_resnet", 32, "fc"),
        ("timm:test_vit", 32, "head"),
        ("timm:test_convnext", 32, "head.fc"),
        ("timm:test_efficientnet", 32, "classifier"),
    ],
)
def test_timm_models_build_find_their_head_and_score(arch, image_size, head):
    timm = pytest.importorskip("timm")
    built = build_for_run(arch, NUM_CLASSES, image_size=image_size)
    name = arch.removeprefix("timm:")
    assert built.head_name == head
    assert built.model.get_classifier() is built.model.get_submodule(head)  # timm's own answer
    assert built.model.get_classifier().out_features == NUM_CLASSES
    assert built.input_shape == (3, image_size, image_size)
    assert built.preprocessing["mean"] == list(timm.models.get_pretrained_cfg(name).mean)
    assert built.load_report is None and not built.warnings
    check_scores_and_probe(built)


def test_timm_vit_is_rebuilt_for_the_input_size():
    pytest.importorskip("timm")
    built = build_for_run("timm:vit_tiny_patch16_224", NUM_CLASSES, image_size=32)
    assert tuple(built.model.patch_embed.img_size) == (32, 32)
    assert built.model(torch.zeros(1, 3, 32, 32)).shape == (1, NUM_CLASSES)
    assert tuple(built.twin().patch_embed.img_size) == (32, 32)


@pytest.mark.parametrize("arch", ["timm:resnet18", "timm:test_vit"])
def test_recorded_preprocessing_equals_timms_own(arch):
    timm = pytest.importorskip("timm")
    built = build_for_run(arch, NUM_CLASSES)
    config = timm.data.resolve_model_data_config(built.model)
    resize, crop, _to_tensor, normalize = timm.data.create_transform(**config, is_training=False).transforms
    assert built.preprocessing == {
        "resize": resize.size,
        "crop": crop.size[0],
        "mean": pytest.approx(normalize.mean.tolist()),
        "std": pytest.approx(normalize.std.tolist()),
        "interpolation": resize.interpolation.value,
    }
    assert built.preprocessing_source == f"timm data config of {arch.removeprefix('timm:')}"
    image = random_image(300, 300)
    assert torch.allclose(built.transform(image), timm.data.create_transform(**config)(image), atol=1e-5)


def test_timm_squash_crop_mode_matches_timm_pixels():
    timm = pytest.importorskip("timm")
    from mimic_explorer.models.timm_models import timm_config_preprocessing

    cfg = timm.models.get_pretrained_cfg("convnext_small.fb_in22k_ft_in1k_384").to_dict()
    ours = timm_config_preprocessing(cfg)
    assert ours.crop_mode == "squash" and ours.describe()["crop_mode"] == "squash"
    image = random_image(200, 150)  # not square: squash changes the aspect ratio
    theirs = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=cfg))
    assert torch.allclose(ours(image), theirs(image), atol=1e-5)


def test_timm_model_folder_and_safetensors_round_trip(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(1)
    source = build_for_run("timm:test_resnet", 1000, image_size=32).model
    pt = save_checkpoint(source, tmp_path / "w.pt")
    st = save_checkpoint(source, tmp_path / "w.safetensors")
    from_pt = build_for_run("timm:test_resnet", 1000, init=pt, image_size=32)
    from_st = build_for_run("timm:test_resnet", 1000, init=st, image_size=32)
    for name, tensor in source.state_dict().items():
        assert torch.equal(from_st.model.state_dict()[name], tensor) and torch.equal(
            from_pt.model.state_dict()[name], tensor
        )
    report_pt, report_st = from_pt.load_report.to_dict(), from_st.load_report.to_dict()
    assert report_pt.pop("path") != report_st.pop("path") and report_pt == report_st and from_st.load_report.head_loaded

    folder = tmp_path / "hf"
    folder.mkdir()
    save_checkpoint(source, folder / "model.safetensors")
    pretrained_cfg = {
        "input_size": [3, 48, 48],
        "crop_pct": 0.75,
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    (folder / "config.json").write_text(
        json.dumps({"architecture": "test_resnet", "num_classes": 1000, "pretrained_cfg": pretrained_cfg})
    )
    built = build_for_run("timm:test_resnet", 10, init=folder)
    assert [n for n, _ in built.load_report.skipped] == ["fc.weight", "fc.bias"]  # 1000-class head kept at its init
    assert torch.equal(built.model.conv1[0].weight, source.conv1[0].weight)
    assert built.preprocessing == {
        "resize": 64,
        "crop": 48,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
    }
    assert built.input_shape == (3, 48, 48) and not built.warnings
    assert any("recorded with --init" in note for note in built.notes)
    overridden = build_for_run("timm:test_resnet", 10, init=folder, transform="mean=0.4,std=0.2")
    (warning,) = overridden.warnings
    assert warning.startswith("PREPROCESSING MISMATCH") and "mean [0.5, 0.5, 0.5] -> [0.4, 0.4, 0.4]" in warning


def test_safetensors_for_another_architecture_names_the_first_mismatched_tensor(tmp_path):
    pytest.importorskip("timm")
    path = save_checkpoint(build_for_run("timm:test_resnet", 10, image_size=32).model, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match=r"first mismatched tensor \S+ .*is missing from the checkpoint"):
        build_for_run("timm:test_convnext", 10, init=path, image_size=32)
    folder = tmp_path / "folder"
    folder.mkdir()
    save_checkpoint(build_for_run("timm:test_resnet", 10, image_size=32).model, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet"}))
    with pytest.raises(CheckpointError, match=r"first mismatched tensor.*metadata names architecture 'test_resnet'"):
        build_for_run("timm:test_convnext", 10, init=folder, image_size=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder without model.safetensors"):
        build_for_run("timm:test_resnet", 10, init=tmp_path / "empty")


def test_timm_names_that_do_not_exist_list_close_matches():
    pytest.importorskip("timm")
    with pytest.raises(ArchError, match=r"timm has no model 'resnet19'\. Did you mean .*resnet18"):
        build_for_run("timm:resnet19", 10)
    with pytest.raises(ArchError, match=r"no pretrained tag 'augreg_in22k' for vit_small_patch16_224.*augreg_in21k"):
        build_for_run("timm:vit_small_patch16_224.augreg_in22k", 10)


def test_timm_heads_that_are_not_one_linear_are_refused():
    pytest.importorskip("timm")
    from mimic_explorer.models.timm_models import timm_head_name

    class Distilled(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head, self.head_dist = head, torch.nn.Linear(4, 2)

        def get_classifier(self):
            return self.head if not isinstance(self.head, torch.nn.Linear) else (self.head, self.head_dist)

    with pytest.raises(ArchError, match="2 classifier heads"):
        timm_head_name(Distilled(torch.nn.Linear(4, 2)))
    with pytest.raises(ArchError, match="classifier is a Conv2d, not an nn.Linear"):
        timm_head_name(Distilled(torch.nn.Conv2d(4, 2, 1)))


def test_timm_pretrained_without_network_says_to_pass_init(monkeypatch):
    timm = pytest.importorskip("timm")
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to the Hub to download the weights")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(
        ArchError, match=r"could not load the pretrained weights of test_resnet.*couldn't connect.*pass --init"
    ):
        build_for_run("timm:test_resnet", 10, pretrained=True)
    with pytest.raises(ArchError, match="either --pretrained .* or --init"):
        build_for_run("timm:test_resnet", 10, pretrained=True, init="w.pt")
    with pytest.raises(ArchError, match="--pretrained applies to timm:NAME and torchvision"):
        build_for_run("small_cnn", 10, pretrained=True)


def test_timm_missing_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail as when it is not installed
    with pytest.raises(ArchError, match=r'pip install -e "\.\[timm\]" in a checkout'):
        build_for_run("timm:resnet18", 10)


# --- torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "head"), [("resnet18", "fc"), ("torchvision:mobilenet_v3_small", "classifier.3")])
def test_torchvision_models_build_find_their_head_and_score(arch, head):
    built = build_for_run(arch, NUM_CLASSES, image_size=32)
    assert built.head_name == head and built.input_shape == (3, 32, 32)
    assert built.model.get_submodule(head).out_features == NUM_CLASSES
    check_scores_and_probe(built)


def fake_hub_file(monkeypatch, tmp_path, weights, model: torch.nn.Module):
    """``model``'s weights saved where torchvision keeps ``weights``' file, in a private hub folder."""
    from mimic_explorer.models.torchvision_models import hub_checkpoint_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = hub_checkpoint_path(weights)
    assert path == tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.slow
def test_torchvision_weights_come_from_the_hub_cache_with_their_own_transforms(monkeypatch, tmp_path):
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    weights = MobileNet_V3_Small_Weights.IMAGENET1K_V1
    arch = "torchvision:mobilenet_v3_small:IMAGENET1K_V1"
    with pytest.raises(
        CheckpointError, match=r"not in the local torch hub cache: looked for .*mobilenet_v3_small-\w+\.pth.*--init"
    ):
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
        build_for_run(arch, NUM_CLASSES)
    torch.manual_seed(2)
    published = mobilenet_v3_small(num_classes=1000)
    path = fake_hub_file(monkeypatch, tmp_path, weights, published)
    built = build_for_run(arch, NUM_CLASSES)
    assert built.load_report.path == str(path) and not built.load_report.head_loaded
    assert torch.equal(built.model.features[0][0].weight, published.features[0][0].weight)
    assert (
        built.weights["weights"] == "MobileNet_V3_Small_Weights.IMAGENET1K_V1" and built.weights["categories"] == 1000
    )
    (warning,) = built.warnings  # our stand-in file does not have the published file's hash
    assert warning.startswith("WEIGHTS FILE") and str(path) in warning
    preset = weights.transforms()
    assert built.preprocessing == {
        "resize": preset.resize_size[0],
        "crop": preset.crop_size[0],
        "mean": list(preset.mean),
        "std": list(preset.std),
        "interpolation": preset.interpolation.value,
    }
    image = random_image(300, 300)
    assert torch.allclose(built.transform(image), preset(image), atol=1e-5)
    full = build_for_run(arch, 1000)
    assert full.load_report.head_loaded
    check_scores_and_probe(build_for_run(arch, NUM_CLASSES, image_size=32))


def test_torchvision_names_and_weights_that_do_not_exist(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(
        CheckpointError,
        match=rf"ResNet18_Weights.IMAGENET1K_V1 are not in .* looked for {tmp_path}/checkpoints/resnet18-",
    ):
        build_for_run("resnet18", 10, pretrained=True)  # --pretrained: the DEFAULT weights, from the hub cache only
    with pytest.raises(ArchError, match=r"no classification model 'resnet5'\. Did you mean .*resnet50"):
        build_for_run("torchvision:resnet5", 10)
    with pytest.raises(
        ArchError, match=r"no weights 'IMAGENET1K_V3'.*ResNet50_Weights has: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"
    ):
        build_for_run("torchvision:resnet50:IMAGENET1K_V3", 10)


# --- preprocessing ----------------------------------------------------------------------------


def test_factory_declares_its_input_size_or_is_told_what_is_assumed(tmp_path):
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def cifar(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 30 * 30, num_classes))\n"
        "cifar.input_size = 32\n"
        "def plain(num_classes):\n"
        "    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))\n"
        "def on_module(num_classes):\n"
        "    model = plain(num_classes)\n"
        "    model.input_size = (3, 40, 40)\n"
        "    return model\n"
    )
    declared = build_for_run(f"{tmp_path / 'nets.py'}:cifar", 10)
    assert declared.input_shape == (3, 32, 32) and not declared.notes and declared.head_name == "2"
    assert declared.preprocessing_source == f"input_size 32 declared by {tmp_path / 'nets.py'}:cifar"
    assert build_for_run(f"{tmp_path / 'nets.py'}:on_module", 10).input_shape == (3, 40, 40)
    assumed = build_for_run(f"{tmp_path / 'nets.py'}:plain", 10)
    (note,) = assumed.notes
    assert assumed.input_shape == (3, 224, 224) and "declares no input size, so 224-px inputs are assumed" in note
    assert not build_for_run(f"{tmp_path / 'nets.py'}:plain", 10, image_size=32).notes
    with pytest.raises(ArchError, match=r"cannot run a 3×64×64 input.*declare input_size on it or pass --image-size"):
        build_for_run(f"{tmp_path / 'nets.py'}:cifar", 10, image_size=64)
    (tmp_path / "small.py").write_text(
        "from torch import nn\n"
        "input_size = 24  # every factory in this file\n"
        "def net(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 24, num_classes))\n"
    )
    in_file = build_for_run(f"{tmp_path / 'small.py'}:net", 10)
    assert in_file.input_shape == (3, 24, 24) and not in_file.notes
    assert in_file.preprocessing["crop"] == in_file.preprocessing["resize"] == 24


def test_sidecar_preprocessing_is_adopted_and_a_contradiction_is_loud(tmp_path):
    path = save_checkpoint(build_for_run("small_cnn", 10).model, tmp_path / "probe.pt")
    recorded = ImageTransform(40, 36, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)).describe()
    (tmp_path / "probe.pt.meta.json").write_text(json.dumps({"arch": "small_cnn", "preprocessing": recorded}))
    built = build_for_run("small_cnn", 10, init=path)
    assert built.preprocessing == recorded and not built.warnings and built.load_report.head_loaded
    (warning,) = build_for_run("small_cnn", 10, init=path, image_size=32).warnings
    assert "PREPROCESSING MISMATCH" in warning and "crop 36 -> 32" in warning and "resize 40 -> 32" in warning
    as_reference = checkpoint_preprocessing_warning(path, ImageTransform(32, 32))
    assert as_reference.startswith(f"PREPROCESSING MISMATCH: --reference {path} was trained")
    assert checkpoint_preprocessing_warning(path, built.transform) is None


def test_builtin_models_keep_their_defaults_and_take_overrides():
    built = build_for_run("small_cnn", 10)
    assert built.preprocessing == {
        "resize": 32,
        "crop": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bilinear",
    }
    mlp = build_for_run("mlp", 10, image_size=16, transform="interpolation=bicubic")
    assert mlp.model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert mlp.preprocessing["interpolation"] == "bicubic"
    assert mlp.preprocessing_source == "mlp default (32 px); --image-size 16; --transform interpolation"
    assert mlp.describe()["preprocessing"] == mlp.preprocessing and json.dumps(mlp.describe())
