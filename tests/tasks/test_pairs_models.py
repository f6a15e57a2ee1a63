"""Preparing a pairs ``score`` run: which checkpoints load for which --arch (errors name the flag), the
mimic layers --mimic-layer / --params select, the preprocessing, and the feature-basis warning."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual_checkpoint import save_dual_encoder
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.tasks.dual_models import (
    build_pair_models,
    dual_transform,
    load_pair_model,
    pair_mimic_params,
    saved_arch,
)

CAPTIONS = ["a dog runs on the grass", "two cats sleep on a sofa", "a red bus in the street"]
SHAPE = (3, 8, 8)


def tiny(captions=CAPTIONS, seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_captions(captions, context_length=5)
    return build_small_dual_encoder(
        "mlp", tokenizer, embed_dim=4, input_shape=SHAPE, word_dim=5, text_hidden=6, text_width=6
    )


def saved(tmp_path, name: str, model) -> str:
    return str(save_dual_encoder(model, tmp_path / name, arch="mlp", input_shape=SHAPE))


def score_options(tmp_path, model: str, reference: str, **kw) -> ScoreOptions:
    return ScoreOptions(
        data="unused", arch="small_dual", out=str(tmp_path / "run"), model=model, reference=reference, **kw
    )


def test_saved_arch_reads_every_dual_form():
    assert saved_arch("small_dual") is None and saved_arch("small_dual:mlp") == "mlp"
    assert saved_arch("open_clip:ViT-B-32") == "open_clip:ViT-B-32" and saved_arch("small_cnn") == "small_cnn"


def test_checkpoint_of_another_arch_is_refused_naming_the_flag(tmp_path):
    path = saved(tmp_path, "m.pt", tiny())
    _model, config = load_pair_model(path, "small_dual", "--model")
    assert config["arch"] == "mlp" and tuple(config["input_shape"]) == SHAPE
    with pytest.raises(
        CheckpointError, match="--reference .*m.pt holds a dual encoder built as --arch mlp, not small_cnn"
    ):
        load_pair_model(path, "small_dual:small_cnn", "--reference")
    torch.save({"fc.weight": torch.zeros(2, 3)}, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="--model .*classifier.pt is not a dual encoder checkpoint"):
        load_pair_model(str(tmp_path / "classifier.pt"), "small_dual", "--model")


def test_preprocessing_follows_the_image_arch_at_the_saved_size(tmp_path):
    model, config = load_pair_model(saved(tmp_path, "m.pt", tiny()), "small_dual", "--model")
    transform = dual_transform(model, config)
    assert transform.crop == 8 and transform.mean == (0.5, 0.5, 0.5)


def test_mimic_layers_from_mimic_layer_params_or_the_default_text_projection():
    model = tiny()

    def pick(**kw):
        return pair_mimic_params(
            SimpleNamespace(**{"mimic_layer": None, "params": "head", **kw}, mimic_params=lambda: kw.get("params")),
            model,
        )

    assert pick() == ["text_projection.weight"]
    assert pick(mimic_layer="image") == ["image_projection.weight"]
    assert pick(params="all") == "all"
    with pytest.raises(ValueError, match="unknown mimic-layer parameters"):
        pair_mimic_params(
            SimpleNamespace(mimic_layer=None, params="fc.weight", mimic_params=lambda: ["fc.weight"]), model
        )


def test_reference_with_other_vocabulary_is_refused_and_drifted_towers_warned(tmp_path):
    model = tiny()
    other_words = tiny(["completely different words here", "and more of them now", "yet another caption"])
    with pytest.raises(CheckpointError, match="different vocabularies"):
        build_pair_models(
            score_options(tmp_path, saved(tmp_path, "m.pt", model), saved(tmp_path, "o.pt", other_words)), "cpu"
        )
    shared = copy.deepcopy(model)
    with torch.no_grad():
        shared.text_projection.weight.add_(1.0)  # only the projection moved: the valid protocol
    models = build_pair_models(
        score_options(tmp_path, saved(tmp_path, "m.pt", model), saved(tmp_path, "s.pt", shared)), "cpu"
    )
    assert models.warnings == [] and models.basis["tower_distance"] == 0.0
    drifted = tiny(seed=5)  # same vocabulary, other random towers
    models = build_pair_models(
        score_options(tmp_path, saved(tmp_path, "m.pt", model), saved(tmp_path, "d.pt", drifted)), "cpu"
    )
    assert len(models.warnings) == 1 and models.warnings[0].startswith(
        "FEATURE BASIS: model and reference towers differ"
    )
