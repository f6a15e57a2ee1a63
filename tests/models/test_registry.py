"""Model registry and checkpoints: every ARCH form builds a model with the right head; checkpoints
load safely (no pickle unless trusted), partially when only the head differs, and a checkpoint that
does not fit names its first mismatched tensor."""

from __future__ import annotations

import json
import struct
import textwrap

import pytest
import torch

from mimic_explorer.models.checkpoints import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.registry import ArchError, build_model, list_architectures, replace_head


def arch_error(arch: str, **kwargs) -> str:
    with pytest.raises(ArchError) as info:
        build_model(arch, 10, **kwargs)
    return str(info.value)


def test_builtin_models():
    x = torch.randn(2, 3, 32, 32)
    assert build_model("small_cnn", 7)(x).shape == (2, 7)
    assert build_model("mlp", 4)(x).shape == (2, 4)
    digits_mlp = build_model("mlp", 10, input_shape=(1, 8, 8), hidden=(16,))
    assert digits_mlp(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert {"mlp", "small_cnn", "resnet18", "vit_b_16"} <= set(list_architectures())


@pytest.mark.slow
def test_torchvision_models_are_built_without_weights():
    model = build_model("resnet18", 5)
    assert model.fc.out_features == 5
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    small = build_model("mobilenet_v3_small", 3)
    assert find_head(small)[0] == "classifier.3" and small.classifier[3].out_features == 3
    inception = build_model("googlenet", 4).train()
    assert isinstance(inception(torch.randn(2, 3, 64, 64)), torch.Tensor)  # aux heads off: plain logits


def test_factory_from_file_and_module(tmp_path):
    (tmp_path / "parts.py").write_text("WIDTH = 12\n")
    (tmp_path / "nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from parts import WIDTH

            def tiny(num_classes):
                return nn.Sequential(
                    nn.Flatten(), nn.Linear(3 * 32 * 32, WIDTH), nn.ReLU(), nn.Linear(WIDTH, num_classes)
                )

            def fixed():  # ignores the dataset: a 1000-class model whose head must be replaced
                return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 20), nn.Linear(20, 1000))

            def headless(num_classes):
                return nn.Conv2d(3, num_classes, 1)

            def not_a_model(num_classes):
                return "oops"
            """
        )
    )
    model = build_model(f"{tmp_path / 'nets.py'}:tiny", 6)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6)
    fixed = build_model(f"{tmp_path / 'nets.py'}:fixed", 6)
    assert fixed(torch.randn(2, 3, 32, 32)).shape == (2, 6) and fixed[2].in_features == 20
    module_model = build_model("mimic_explorer.models.small:SmallCNN", 3)
    assert module_model.head.out_features == 3
    assert "no nn.Linear classifier head" in arch_error(f"{tmp_path / 'nets.py'}:headless")
    assert "not a torch.nn.Module" in arch_error(f"{tmp_path / 'nets.py'}:not_a_model")
    message = arch_error(f"{tmp_path / 'nets.py'}:tinny")
    assert "has no function 'tinny'" in message and "tiny" in message


def test_arch_strings_that_name_nothing(tmp_path):
    message = arch_error("resnet19")
    assert "unknown ARCH 'resnet19'" in message and "resnet18" in message
    assert "does not exist" in arch_error(f"{tmp_path / 'missing.py'}:make")
    assert "no Python module named 'no_such_pkg'" in arch_error("no_such_pkg.nets:make")
    assert "empty ARCH" in arch_error("  ")
    (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('boom')\n")
    assert "importing" in arch_error(f"{tmp_path / 'broken.py'}:make") and "boom" in arch_error(
        f"{tmp_path / 'broken.py'}:make"
    )
    assert "no nn.Linear classifier head" in arch_error("squeezenet1_0")


def test_replace_head_keeps_the_backbone():
    model = build_model("small_cnn", 10)
    before = model.backbone[0][0].weight.clone()
    assert replace_head(model, 3) == "head"
    assert model.head.out_features == 3 and torch.equal(model.backbone[0][0].weight, before)


# --- checkpoints -------------------------------------------------------------------------------


def test_roundtrip_loads_everything(tmp_path):
    torch.manual_seed(0)
    source = build_model("small_cnn", 10)
    path = save_checkpoint(source, tmp_path / "a.pt")
    target = build_model("small_cnn", 10)
    report = load_checkpoint(target, path)
    assert report.head == "head" and report.head_loaded and not report.skipped and not report.missing
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_partial_load_when_only_the_head_differs(tmp_path):
    torch.manual_seed(0)
    pretrained = build_model("small_cnn", 1000)
    path = save_checkpoint(pretrained, tmp_path / "backbone1000.pt")
    model = build_model("small_cnn", 10)
    head_before = model.head.weight.clone()
    report = load_checkpoint(model, path)
    assert [name for name, _ in report.skipped] == ["head.weight", "head.bias"]
    assert "checkpoint (1000, 128) vs model (10, 128)" in report.skipped[0][1]
    assert not report.head_loaded and "skipped head.weight" in report.summary()
    assert torch.equal(model.head.weight, head_before)
    for name, tensor in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor)

    backbone_only = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("head.")}
    torch.save(backbone_only, tmp_path / "backbone.pt")
    report = load_checkpoint(build_model("small_cnn", 10), tmp_path / "backbone.pt")
    assert all("not in the checkpoint" in why for _, why in report.skipped) and len(report.skipped) == 2


def test_torchvision_backbone_with_imagenet_head_into_ten_classes(tmp_path):
    path = save_checkpoint(build_model("resnet18", 1000), tmp_path / "r18.pt")
    report = load_checkpoint(build_model("resnet18", 10), path)
    assert [n for n, _ in report.skipped] == ["fc.weight", "fc.bias"] and len(report.loaded) > 100


def test_checkpoint_that_does_not_fit_names_the_first_mismatched_tensor(tmp_path):
    path = save_checkpoint(build_model("small_cnn", 10, width=16), tmp_path / "narrow.pt")
    with pytest.raises(
        CheckpointError,
        match=r"first mismatched tensor backbone\.0\.0\.weight: checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)",
    ):
        load_checkpoint(build_model("small_cnn", 10), path)
    other = save_checkpoint(build_model("mlp", 10), tmp_path / "mlp.pt")
    with pytest.raises(
        CheckpointError, match=r"first mismatched tensor backbone\.0\.0\.weight \(32, 3, 3, 3\) is missing"
    ):
        load_checkpoint(build_model("small_cnn", 10), other)
    extra = dict(build_model("small_cnn", 10).state_dict(), **{"aux.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"first mismatched tensor aux\.weight \(2,\) has no counterpart"):
        load_checkpoint(build_model("small_cnn", 10), tmp_path / "extra.pt")
    report = load_checkpoint(build_model("small_cnn", 10), tmp_path / "extra.pt", strict=False)
    assert report.unexpected == ["aux.weight"]


def test_pickled_module_is_refused_unless_trusted(tmp_path):
    model = build_model("small_cnn", 10)
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects.*trust_pickle=True"):
        load_checkpoint(build_model("small_cnn", 10), tmp_path / "full.pt")
    report = load_checkpoint(build_model("small_cnn", 10), tmp_path / "full.pt", trust_pickle=True)
    assert report.head_loaded


def test_wrapped_prefixed_and_safetensors_checkpoints(tmp_path):
    model = build_model("small_cnn", 10)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": {}}
    torch.save(wrapped, tmp_path / "ddp.pt")
    assert load_checkpoint(build_model("small_cnn", 10), tmp_path / "ddp.pt").head_loaded

    state = {k: v.float().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    header, blobs, offset = {}, [], 0
    for name, tensor in state.items():
        data = tensor.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    loaded = read_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(build_model("mlp", 2), tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(build_model("mlp", 2), tmp_path / "junk.pt")
    torch.save({"epoch": 1, "note": "x"}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        load_checkpoint(build_model("mlp", 2), tmp_path / "meta.pt")
