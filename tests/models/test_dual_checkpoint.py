"""Dual encoders save with their build config and load back into the same function; a file of another
kind or a model asked for with another ARCH or input size is refused with the cause named."""

from __future__ import annotations

import json

import pytest
import torch

from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual_checkpoint import load_dual_encoder, read_dual_checkpoint, save_dual_encoder
from mimic_explorer.models.dual_registry import build_dual_encoder
from mimic_explorer.models.small import SmallCNN

CAPTIONS = ["A dog runs on the grass .", "Two children play in the snow .", "A man rides a red bike down a hill ."]


def _same_function(a, b, images, tokens):
    a.eval(), b.eval()
    with torch.no_grad():
        for x, y in zip(a(images, tokens), b(images, tokens)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_built_in_dual_encoder_round_trips_with_its_config(tmp_path):
    torch.manual_seed(0)
    model = build_dual_encoder("small_cnn", captions=CAPTIONS, input_shape=(3, 16, 16), embed_dim=8, context_length=7)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
        model.text_projection.weight.mul_(3)
    path = save_dual_encoder(
        model, tmp_path / "sub" / "dual.pt", arch=" small_cnn", input_shape=(3, 16, 16), extra={"run_id": "r1"}
    )
    config, state = read_dual_checkpoint(path)
    assert config == {
        "arch": "small_cnn",
        "input_shape": [3, 16, 16],
        "embed_dim": 8,
        "context_length": 7,
        "run_id": "r1",
    }
    assert "text_tower.vocabulary" in state
    loaded, config = load_dual_encoder(path, arch="small_cnn", input_shape=(3, 16, 16))
    assert loaded.tokenizer.vocabulary == model.tokenizer.vocabulary and loaded.tokenizer.context_length == 7
    images, tokens = torch.randn(3, 3, 16, 16), model.tokenizer.encode(CAPTIONS).ids
    _same_function(model, loaded, images, tokens)
    again = build_dual_encoder("small_cnn", init=path, input_shape=(3, 16, 16))  # readable as an --init file too
    _same_function(model, again, images, tokens)


def test_mismatches_and_other_files_are_refused_with_the_cause(tmp_path):
    model = build_dual_encoder("mlp", captions=CAPTIONS, input_shape=(3, 8, 8), embed_dim=4)
    path = save_dual_encoder(model, tmp_path / "dual.pt", arch="mlp", input_shape=(3, 8, 8))
    with pytest.raises(CheckpointError, match="built as --arch mlp, not small_cnn"):
        load_dual_encoder(path, arch="small_cnn")
    with pytest.raises(CheckpointError, match=r"for inputs \(3, 8, 8\), not \(3, 32, 32\)"):
        load_dual_encoder(path, input_shape=(3, 32, 32))
    torch.save(SmallCNN(10).state_dict(), tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="not a dual encoder checkpoint saved by mimic-explorer"):
        load_dual_encoder(tmp_path / "classifier.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable dual encoder checkpoint"):
        load_dual_encoder(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dual_encoder(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="saves a DualEncoder"):
        save_dual_encoder(SmallCNN(10), tmp_path / "x.pt", arch="small_cnn")


def test_open_clip_dual_encoder_round_trips(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "mimic-tiny-clip-ckpt.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "mimic-tiny-clip-ckpt.json")
    torch.manual_seed(0)
    model = build_dual_encoder("open_clip:mimic-tiny-clip-ckpt")
    path = save_dual_encoder(
        model, tmp_path / "clip.pt", arch="open_clip: mimic-tiny-clip-ckpt", input_shape=model.input_shape
    )
    loaded, config = load_dual_encoder(path, arch="open_clip:mimic-tiny-clip-ckpt")
    assert config["arch"] == "open_clip:mimic-tiny-clip-ckpt" and config["context_length"] == 12
    _same_function(model, loaded, torch.randn(2, 3, 32, 32), model.tokenizer.encode(["a dog", "a cat"]).ids)
