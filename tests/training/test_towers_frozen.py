"""The frozen-tower mode (``training/towers.train_projections``: projections trained on cached tower
outputs) equals training the full dual encoder with its towers frozen, record for record; the end-of-run
pair signals (``training/signals.collect_pair_signals``) are what they claim (losses in the recorded
batch, the scorer's exact proj/cos, CLIP scores); mimic layers are named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mimic_explorer.models.dual import mimic_layer_params, tower_differences
from mimic_explorer.models.small import MLP
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.scoring import mimic_scores
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score
from mimic_explorer.training.batches import pair_batches
from mimic_explorer.training.loop import TrainConfig, train
from mimic_explorer.training.signals import collect_pair_signals
from mimic_explorer.training.towers import tower_features, train_projections

WORDS = [
    "dog",
    "cat",
    "bus",
    "man",
    "bike",
    "snow",
    "bird",
    "boat",
    "lake",
    "girl",
    "book",
    "red",
    "sofa",
    "grass",
    "street",
]


def pairs(n=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    captions = [" ".join(WORDS[int(k)] for k in torch.randint(0, len(WORDS), (4,), generator=gen)) for _ in range(n)]
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_captions(captions, context_length=5)
    model = build_small_dual_encoder(
        "mlp", tokenizer, embed_dim=6, input_shape=(3, 4, 4), word_dim=5, text_hidden=8, text_width=7
    ).double()
    images = torch.randn(n, 3, 4, 4, generator=gen, dtype=torch.float64)
    return model, (images, tokenizer.encode(captions).ids)


def reference_of(model, seed=3):
    """Same towers, projections and scale moved: the reference a frozen-tower run assumes."""
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("image_projection.weight", "text_projection.weight"):
            p = reference.get_parameter(name)
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return reference


@pytest.mark.parametrize("layer", ["image", "text"])
def test_frozen_tower_mode_equals_training_the_full_model_with_frozen_towers(layer):
    model, inputs = pairs(n=19)
    reference = reference_of(model)
    config = TrainConfig(epochs=3, batch_size=6, lr=0.05, method="normed_proj", seed=4)
    full = copy.deepcopy(model)
    for name, p in full.named_parameters():
        p.requires_grad_(name.startswith(("image_projection", "text_projection", "logit_scale")))
    expected = train(
        full,
        pair_batches(inputs, 6, config.seed),
        config,
        reference=reference,
        loss=InfoNCELoss(),
        mimic_params=mimic_layer_params(full, layer),
    )
    features = tower_features(model, [inputs])
    assert features.shape == (19, model.image_dim + model.text_dim)
    towers_before = copy.deepcopy(model.image_tower.state_dict())
    result = train_projections(model, features, config, reference, mimic_layer=layer)
    assert [len(r.index) for r in result.records] == [19, 19, 19]
    assert [len(i) for i, _, _ in pair_batches(features, 6, 4).epoch(0)] == [6, 6, 7]  # the last pair joined
    for got, want in zip(result.records, expected.records):
        np.testing.assert_array_equal(got.index, want.index)
        assert got.cos is None and want.cos is None  # normed_proj: no Jacobian rows, no cos
        for key in ("loss", "proj", "weight"):
            np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-7, atol=1e-10, err_msg=key)
    for name, p in full.named_parameters():  # trained in place: the model now holds the trained projections
        torch.testing.assert_close(model.get_parameter(name), p, rtol=1e-7, atol=1e-10)
    for name, t in towers_before.items():
        assert torch.equal(model.image_tower.state_dict()[name], t)
    assert tower_differences(model, reference) == []


def test_a_reference_with_other_towers_is_warned_about():
    model, inputs = pairs()
    other = reference_of(model)
    with torch.no_grad():
        other.text_tower.embedding.weight.add_(0.1)
    assert tower_differences(model, other) == ["text_tower.embedding.weight"]
    with pytest.warns(UserWarning, match="towers differ from the model's in 1 tensors"):
        train_projections(model, tower_features(model, [inputs]), TrainConfig(epochs=1, batch_size=10), other)


def test_pair_signals_are_the_batch_losses_exact_scores_and_clip_scores():
    model, inputs = pairs(n=13)
    reference = reference_of(model)
    signals = collect_pair_signals(model, reference, pair_batches(inputs, 4, 1).epoch(0), mimic_params="text")
    assert sorted(signals["index"].tolist()) == list(range(13))
    assert (
        signals["batch"].tolist() == [0] * 4 + [1] * 4 + [2] * 5 and signals["batch_size"].tolist() == [4] * 8 + [5] * 5
    )
    model.eval(), reference.eval()
    for number, (index, batch, _) in enumerate(pair_batches(inputs, 4, 1).epoch(0)):
        rows = signals["batch"] == number
        np.testing.assert_array_equal(signals["index"][rows], index.numpy())
        with torch.no_grad():
            out, ref = model(*batch), reference(*batch)
        np.testing.assert_allclose(signals["model_loss"][rows], InfoNCELoss()(out).numpy(), rtol=1e-10)
        np.testing.assert_allclose(signals["reference_loss"][rows], InfoNCELoss()(ref).numpy(), rtol=1e-10)
        np.testing.assert_allclose(signals["clip_score_ref"][rows], clip_score(ref.image, ref.text).numpy(), rtol=1e-10)
        np.testing.assert_allclose(
            signals["clip_score_model"][rows], clip_score(out.image, out.text).numpy(), rtol=1e-10
        )
        for key, method in (("final_proj", "proj"), ("final_cos", "cos")):
            want = mimic_scores(
                model, reference, batch, None, params=["text_projection.weight"], method=method, loss=InfoNCELoss()
            )
            np.testing.assert_allclose(signals[key][rows], want.numpy(), rtol=1e-8)
    np.testing.assert_allclose(signals["final_proj"], signals["final_cos"] * signals["grand"], rtol=1e-10)
    np.testing.assert_allclose(signals["reducible_loss"], signals["model_loss"] - signals["reference_loss"])
    assert set(signals["model_pred"].tolist()) <= {0, 1}


def test_mimic_layers_are_named_with_clear_errors():
    model, _ = pairs()
    assert mimic_layer_params(model, "image") == ["image_projection.weight"]
    assert mimic_layer_params(model, ["text_projection.weight"]) == ["text_projection.weight"]
    with pytest.raises(ValueError, match="--mimic-layer text needs a dual encoder.*MLP has none"):
        mimic_layer_params(MLP(4, 3), "text")
    with pytest.raises(ValueError, match="must be 'image', 'text'"):
        mimic_layer_params(model, "audio")
    with pytest.raises(ValueError, match="unknown mimic-layer parameters"):
        mimic_layer_params(model, ["nope.weight"])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        pair_batches(torch.zeros(4, 3), 1, 0)
    with pytest.raises(ValueError, match="no batches"):
        collect_pair_signals(model, reference_of(model), [])
