"""Dual-encoder checkpoints: a saved built-in model rebuilds exactly, a bare state dict loads when --arch
names its image tower, and a checkpoint of another architecture is refused naming the flag and file."""

from __future__ import annotations

import pytest
import torch

from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual_checkpoint import (
    DualArch, dual_transform, load_dual_encoder, parse_dual_arch, read_dual_checkpoint, save_dual_encoder,
)
from mimic_explorer.models.registry import ArchError
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer

CAPTIONS = ["a dog runs on the grass", "two cats sleep on a sofa", "a red bus in the street"]


def tiny(arch: str = "mlp", shape=(3, 8, 8), seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_captions(CAPTIONS, context_length=5)
    return build_small_dual_encoder(arch, tokenizer, embed_dim=4, input_shape=shape, word_dim=5, text_hidden=6, text_width=6)


def test_parse_dual_arch_forms_and_refusal():
    assert parse_dual_arch("small_dual") == DualArch("small_dual", None)
    assert parse_dual_arch("small_dual:mlp").spell() == "small_dual:mlp"
    assert parse_dual_arch("open_clip:ViT-B-32") == DualArch("open_clip", "ViT-B-32")
    with pytest.raises(ArchError, match="small_cnn.*is not a dual encoder.*small_dual:IMAGE_ARCH"):
        parse_dual_arch("small_cnn")


def test_saved_dual_encoder_rebuilds_exactly_with_its_arch_and_shape(tmp_path):
    model = tiny()
    path = save_dual_encoder(model, tmp_path / "m.pt", "small_dual:mlp", (3, 8, 8))
    loaded, arch, shape = load_dual_encoder(path, "small_dual")  # the image ARCH comes from the file
    assert arch.spell() == "small_dual:mlp" and shape == (3, 8, 8)
    images, tokens = torch.randn(3, 3, 8, 8), model.tokenizer.encode(CAPTIONS).ids
    expected, got = model.eval()(images, tokens), loaded.eval()(images, tokens)
    assert torch.equal(expected.image, got.image) and torch.equal(expected.text, got.text)
    assert loaded.tokenizer.vocabulary == model.tokenizer.vocabulary
    assert dual_transform(loaded, arch, shape).crop == 8


def test_bare_state_dict_loads_when_arch_names_the_image_tower(tmp_path):
    model = tiny(shape=(3, 32, 32))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    assert read_dual_checkpoint(tmp_path / "bare.pt").arch is None
    loaded, arch, shape = load_dual_encoder(tmp_path / "bare.pt", "small_dual:mlp")
    assert arch.spell() == "small_dual:mlp" and shape == (3, 32, 32)  # the image ARCH's default input
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_of_another_arch_or_a_classifier_is_refused(tmp_path):
    path = save_dual_encoder(tiny(), tmp_path / "m.pt", "small_dual:mlp", (3, 8, 8))
    with pytest.raises(CheckpointError, match=r"--reference .*m\.pt holds a small_dual:mlp dual encoder, not small_dual:small_cnn"):
        load_dual_encoder(path, "small_dual:small_cnn", flag="--reference")
    torch.save({"fc.weight": torch.zeros(2, 3)}, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="--model .*classifier.pt is not a built-in dual encoder checkpoint"):
        load_dual_encoder(tmp_path / "classifier.pt", "small_dual:mlp")
    torch.save(tiny().state_dict(), tmp_path / "bare8.pt")  # saved at 8 px, loaded at the default 32 px
    with pytest.raises(CheckpointError, match="does not fit small_dual:mlp at input"):
        load_dual_encoder(tmp_path / "bare8.pt", "small_dual:mlp")
