"""Dual encoders: the built-in small model (tokenizer with truncation counts, vocabulary inside the
state dict, image tower from an image checkpoint), the open_clip adapter (same function as open_clip,
projections as nn.Linear, native and adapted checkpoints) and the frozen-tower ProjectionProbe."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mimic_explorer.models.checkpoints import CheckpointError, save_checkpoint
from mimic_explorer.models.dual import DualEncoder, DualOutput, ProjectionProbe
from mimic_explorer.models.dual_registry import build_dual_encoder
from mimic_explorer.models.registry import ArchError
from mimic_explorer.models.small import SmallCNN
from mimic_explorer.models.text import WordTokenizer, words

CAPTIONS = ["A dog runs on the grass .", "Two children play in the snow .", "A man rides a red bike down a hill ."]


def test_word_tokenizer_counts_truncated_captions_and_maps_unknown_words():
    tokenizer = WordTokenizer.from_captions([*CAPTIONS, "a dog"], context_length=5)
    assert tokenizer.vocabulary[:3] == ["<pad>", "<unk>", "a"]  # most frequent word first
    batch = tokenizer.encode(["A dog runs", "a purple zebra", "A man rides a red bike down a hill", ""])
    assert batch.ids.shape == (4, 5) and batch.ids.dtype == torch.int64
    assert batch.truncated.tolist() == [False, False, True, False]
    assert batch.ids[1].tolist() == [tokenizer.vocabulary.index("a"), 1, 1, 0, 0]  # unknown words → 1
    assert batch.ids[3].tolist() == [0] * 5
    assert words("Don't STOP, it's 2 o'clock!") == ["don't", "stop", "it's", "2", "o'clock"]
    restored = WordTokenizer.from_buffer(tokenizer.to_buffer(), 5)
    assert restored.vocabulary == tokenizer.vocabulary


def test_built_in_dual_encoder_round_trips_through_a_weights_only_checkpoint(tmp_path):
    model = build_dual_encoder("small_cnn", captions=CAPTIONS, context_length=6, embed_dim=8)
    assert isinstance(model, DualEncoder) and isinstance(model.text_projection, nn.Linear)
    assert {"image_projection.weight", "text_projection.weight", "logit_scale"} <= {
        n for n, _ in model.named_parameters()
    }
    save_checkpoint(model, tmp_path / "dual.pt")
    raw = torch.load(tmp_path / "dual.pt", weights_only=True)
    assert raw["text_tower.vocabulary"].dtype == torch.uint8
    again = build_dual_encoder("small_cnn", init=tmp_path / "dual.pt")
    assert again.tokenizer.vocabulary == model.tokenizer.vocabulary and again.tokenizer.context_length == 6
    images = torch.randn(3, 3, 32, 32)
    tokens = model.tokenizer.encode(CAPTIONS).ids
    model.eval(), again.eval()
    first, second = model(images, tokens), again(images, tokens)
    assert isinstance(first, DualOutput)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_image_tower_loads_an_image_classifier_checkpoint(tmp_path):
    classifier = SmallCNN(10)
    save_checkpoint(classifier, tmp_path / "cnn.pt")
    model = build_dual_encoder("small_cnn", init=tmp_path / "cnn.pt", captions=CAPTIONS)
    tower = model.image_tower
    assert isinstance(tower.head, nn.Identity) and model.image_dim == 128
    torch.testing.assert_close(tower.backbone[0][0].weight, classifier.backbone[0][0].weight)
    with pytest.raises(ArchError, match="needs captions"):
        build_dual_encoder("small_cnn", init=tmp_path / "cnn.pt")
    with pytest.raises(ArchError, match="open_clip"):
        build_dual_encoder("small_cnn", captions=CAPTIONS, pretrained="laion2b")


def test_projection_probe_on_cached_tower_outputs_equals_the_full_model():
    model = build_dual_encoder("mlp", captions=CAPTIONS, input_shape=(3, 8, 8), embed_dim=8).eval()
    images, tokens = torch.randn(3, 3, 8, 8), model.tokenizer.encode(CAPTIONS).ids
    probe = ProjectionProbe.from_dual_encoder(model)
    assert sorted(n for n, _ in probe.named_parameters()) == [
        "image_projection.weight",
        "logit_scale",
        "text_projection.weight",
    ]
    with torch.no_grad():
        cached = model.tower_features(images, tokens)
        for a, b in zip(probe(cached), model(images, tokens)):
            torch.testing.assert_close(a, b)
    assert probe.image_projection is not model.image_projection  # copies: training the probe leaves the model alone
    with pytest.raises(ValueError, match="concatenated tower features"):
        probe(cached[:, :-1])


# --- open_clip (optional extra) ------------------------------------------------------------------

open_clip = pytest.importorskip("open_clip")

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("oc") / "mimic-tiny-clip.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)
    return "mimic-tiny-clip"


def test_open_clip_adapter_is_the_same_function_with_linear_projections(tiny_config, tmp_path):
    torch.manual_seed(0)
    native = open_clip.create_model(tiny_config, pretrained=None, pretrained_image=False, pretrained_text=False).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = open_clip.get_tokenizer(tiny_config)(["a dog", "a cat on a mat"])
    with torch.no_grad():
        want_image, want_text = native.encode_image(images), native.encode_text(tokens)
    torch.save(native.state_dict(), tmp_path / "native.pt")
    model = build_dual_encoder(f"open_clip:{tiny_config}", init=tmp_path / "native.pt").eval()
    assert isinstance(model.image_projection, nn.Linear) and isinstance(model.text_projection, nn.Linear)
    assert model.image_projection.weight.shape == (16, 32) and model.input_shape == (3, 32, 32)
    assert {"image_projection.weight", "text_projection.weight", "logit_scale"} <= dict(model.named_parameters()).keys()
    with torch.no_grad():
        out = model(images, model.tokenizer.encode(["a dog", "a cat on a mat"]).ids)
    torch.testing.assert_close(out.image, want_image)
    torch.testing.assert_close(out.text, want_text)
    torch.testing.assert_close(out.scale, native.logit_scale.exp())
    save_checkpoint(model, tmp_path / "adapted.pt")  # the adapter's own names load back too
    again = build_dual_encoder(f"open_clip:{tiny_config}", init=tmp_path / "adapted.pt").eval()
    torch.testing.assert_close(again.image_projection.weight, model.image_projection.weight)


def test_open_clip_tokenizer_counts_truncation_and_errors_name_the_cause(tiny_config, tmp_path):
    model = build_dual_encoder(f"open_clip:{tiny_config}")
    batch = model.tokenizer.encode(["a dog", "a very long caption " * 5])
    assert batch.ids.shape == (2, 12) and batch.truncated.tolist() == [False, True]
    with pytest.raises(ArchError, match="no model config"):
        build_dual_encoder("open_clip:ViT-B-33")
    torch.save({"visual.proj": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        build_dual_encoder(f"open_clip:{tiny_config}", init=tmp_path / "other.pt")
    with pytest.raises(ArchError, match="not both"):
        build_dual_encoder(f"open_clip:{tiny_config}", init=tmp_path / "other.pt", pretrained="openai")


@pytest.mark.slow
def test_open_clip_vit_b_32_adapts_with_random_weights():
    """The issue's example config: ViT-B-32 with random weights, adapted in place, same function."""
    from mimic_explorer.models.open_clip_dual import OpenClipDualEncoder, OpenClipTokenizer

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_image=False, pretrained_text=False).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    images, captions = torch.randn(1, 3, 224, 224), ["a dog runs on the grass", "two children play in the snow"]
    with torch.no_grad():
        want_image, want_text = clip.encode_image(images), clip.encode_text(tokenizer(captions))
    model = OpenClipDualEncoder(clip, OpenClipTokenizer(tokenizer, 77), "ViT-B-32")
    assert model.image_projection.weight.shape == (512, 768) and model.text_projection.weight.shape == (512, 512)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), want_image)
        torch.testing.assert_close(model.encode_text(model.tokenizer.encode(captions).ids), want_text)
