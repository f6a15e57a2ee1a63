"""A checkpoint never names code to run: a dual-encoder file whose recorded architecture is a
``file.py:function`` or a ``module:function`` is refused by every command that reads one (``train
--init``, ``train --reference``, ``score --model``) unless ``--trust-checkpoint`` is given, and the file
it names is never imported (a marker file its import would write stays absent). A config whose input
shape is absurd, or does not match the weights, is refused before the model is built."""

from __future__ import annotations

import pytest
import torch

from mimic_explorer.cli import main
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual_checkpoint import load_dual_encoder, names_code, save_dual_encoder
from tests.pairs_helpers import SHAPE, flickr_pool, make_checkpoints, needs_flickr, tiny_dual

CAPTIONS = ["a dog runs", "two children play", "a man rides a bike"]


def _evil_tower(folder) -> tuple[str, object]:
    """(ARCH naming a file whose import writes a marker, the marker's path)."""
    marker = folder / "IMPORTED"
    code = folder / "evil_tower.py"
    code.write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from mimic_explorer.models.small import SmallCNN\n"
        "def make(num_classes=1):\n    return SmallCNN(num_classes)\n"
    )
    return f"{code}:make", marker


def _retarget(path, arch=None, input_shape=None) -> None:
    """Rewrite the config of a saved dual checkpoint as a hostile file would."""
    saved = torch.load(path, weights_only=True)
    if arch is not None:
        saved["config"]["arch"] = arch
    if input_shape is not None:
        saved["config"]["input_shape"] = input_shape
    torch.save(saved, path)


def test_which_architectures_name_code():
    assert names_code("evil.py:make") and names_code("os:system") and names_code("package.module:function")
    assert not any(
        names_code(a)
        for a in ("small_cnn", "mlp", "resnet18", "timm:resnet18", "torchvision:resnet18", "open_clip:ViT-B-32")
    )


@pytest.mark.parametrize("hostile", ["file", "module"])
def test_loader_refuses_code_named_by_the_file_and_never_imports_it(tmp_path, hostile):
    arch, marker = _evil_tower(tmp_path)
    if hostile == "module":
        arch = "os:system"
    path = save_dual_encoder(tiny_dual(CAPTIONS), tmp_path / "dual.pt", arch="small_cnn", input_shape=SHAPE)
    _retarget(path, arch=arch)
    with pytest.raises(CheckpointError, match="never chooses code to run.*--trust-checkpoint"):
        load_dual_encoder(path)
    assert not marker.exists()


def test_trusting_the_file_runs_its_code(tmp_path):
    """The refusal above is the guard: with trust the same file is imported (so the test can fail)."""
    arch, marker = _evil_tower(tmp_path)
    path = save_dual_encoder(tiny_dual(CAPTIONS), tmp_path / "dual.pt", arch="small_cnn", input_shape=SHAPE)
    _retarget(path, arch=arch)
    _model, config = load_dual_encoder(path, trust_code=True)  # the file's SmallCNN tower fits the saved tensors
    assert marker.read_text() == "ran" and config["arch"] == arch


@pytest.mark.parametrize(
    "shape, cause",
    [
        ([3, 20000, 20000], "outside 1"),
        ([3, 32], "three integers"),
        ([3, "32", 32], "three integers"),
        ([99, 32, 32], "outside 1"),
    ],
)
def test_absurd_input_shapes_are_refused_before_building(tmp_path, shape, cause):
    path = save_dual_encoder(tiny_dual(CAPTIONS), tmp_path / "dual.pt", arch="small_cnn", input_shape=SHAPE)
    _retarget(path, input_shape=shape)
    with pytest.raises(CheckpointError, match=cause):
        load_dual_encoder(path)


def test_an_mlp_tower_shape_is_checked_against_its_weights(tmp_path):
    from mimic_explorer.models.dual_registry import build_dual_encoder

    model = build_dual_encoder("mlp", captions=CAPTIONS, input_shape=(3, 8, 8), embed_dim=4)
    path = save_dual_encoder(model, tmp_path / "dual.pt", arch="mlp", input_shape=(3, 8, 8))
    _retarget(path, input_shape=[3, 2000, 2000])
    with pytest.raises(CheckpointError, match="does not match the weights"):
        load_dual_encoder(path)


@needs_flickr
@pytest.mark.slow
def test_every_command_refuses_a_checkpoint_naming_code(tmp_path, capsys):
    pool = flickr_pool(tmp_path / "pool.tar", 12)
    model, reference = make_checkpoints(f"wds:{pool}", tmp_path)
    arch, marker = _evil_tower(tmp_path)
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(reference.read_bytes())
    _retarget(hostile, arch=arch)
    common = ["--data", f"wds:{pool}", "--arch", "small_dual", "--batch-size", "4", "--device", "cpu", "--quiet"]
    commands = {
        "train --reference": ["train", *common, "--frozen-towers", "--epochs", "1", "--reference", str(hostile)],
        "train --init": ["train", *common, "--frozen-towers", "--epochs", "1", "--init", str(hostile)],
        "score --model": ["score", *common, "--model", str(hostile), "--reference", str(reference)],
        "score --reference": ["score", *common, "--model", str(model), "--reference", str(hostile)],
    }
    for name, args in commands.items():
        out = tmp_path / name.replace(" ", "_")
        assert main([*args, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        # score's reference must be the model's architecture: refused as another one before anything is built
        refusal = "not small_cnn" if name == "score --reference" else "never chooses code to run"
        assert refusal in err and "Traceback" not in err, (name, err)
        assert not marker.exists(), f"{name} imported the file the checkpoint named"
        assert not (out / "meta.json").exists(), name


def test_a_pickled_dual_checkpoint_is_refused_in_one_whole_sentence(tmp_path):
    """The refusal names the cause and how to fix it, never cut off mid-sentence; no payload runs."""
    marker = tmp_path / "RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(
        {"format": "mimic_explorer.dual_encoder", "version": 1, "config": {}, "state_dict": {}, "x": Payload()},
        tmp_path / "pickled.pt",
    )
    with pytest.raises(CheckpointError) as refused:
        load_dual_encoder(tmp_path / "pickled.pt")
    message = str(refused.value)
    assert "contains pickled Python objects" in message and message.endswith("on an image-text pool")
    assert "\n" not in message and not marker.exists()
