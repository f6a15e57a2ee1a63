"""Mimic scores of a dual encoder's projections under the batch-coupled InfoNCE: the output layer's
path (one forward, then the loss alone) equals a brute-force per-pair autograd loop — each pair's own
loss inside its batch — to 1e-5 relative in float64, for both mimic layers, proj and cos, on the
frozen-tower ProjectionProbe and on the built-in small dual encoder (two inputs: images, tokens)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.dual import ProjectionProbe
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.scoring import PreparedScorer
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.output_layer import row_geometry
from tests.scoring_models import assert_close, perturbed

B = 7
LAYERS = ["image_projection.weight", "text_projection.weight"]
CAPTIONS = [
    "a dog runs on the grass",
    "two cats sleep on a sofa",
    "a red bus in the street",
    "a man rides a bike",
    "children play in the snow",
    "a bird on a branch",
    "a boat on the lake",
]


def probe_setup():
    """A probe whose image side takes the direct form (B = 7 > 5 features) and text side the Gram form
    (7 ≤ 9), with a reference 'fine-tuned' from it, and a batch of concatenated tower features."""
    torch.manual_seed(0)
    model = ProjectionProbe(nn.Linear(5, 4, bias=False), nn.Linear(9, 4, bias=False), math.log(5.0)).double()
    x = torch.randn(B, 14, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, perturbed(model, scale=0.3), x


def dual_setup():
    """The built-in dual encoder (MLP image tower: 128 features → Gram form; bag-of-words text tower:
    6 features → direct form) on images and token ids."""
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_captions(CAPTIONS, context_length=6)
    model = build_small_dual_encoder(
        "mlp", tokenizer, embed_dim=4, input_shape=(3, 4, 4), word_dim=5, text_hidden=6, text_width=6
    ).double()
    images = torch.randn(B, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = tokenizer.encode(CAPTIONS).ids
    return model, perturbed(model, scale=0.3), (images, tokens)


SETUPS = {"probe": probe_setup, "small_dual": dual_setup}


def brute_force(model, reference, inputs, layer, method):
    """For each pair i: a fresh forward of the whole batch, backward of ℓ_i alone (its InfoNCE term
    against the batch's other pairs), explicit dot product and norm. Deep copy, eval mode."""
    m = copy.deepcopy(model).eval()
    param = dict(m.named_parameters())[layer]
    v = (dict(reference.named_parameters())[layer] - param).detach().reshape(-1)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    scores = []
    for i in range(B):
        m.zero_grad(set_to_none=True)
        InfoNCELoss()(m(*args), None)[i].backward()
        g = param.grad.reshape(-1)
        s = -(g @ v) / v.norm()
        scores.append(s / g.norm() if method == "cos" else s)
    return torch.stack(scores).detach()


@pytest.fixture(scope="module", params=list(SETUPS))
def setup(request):
    return request.param, SETUPS[request.param]()


@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("layer", LAYERS, ids=["image", "text"])
def test_output_layer_path_equals_the_per_pair_loop(setup, layer, method, monkeypatch):
    import mimic_explorer.scoring.prepared as prepared

    name, (model, reference, inputs) = setup
    expected = brute_force(model, reference, inputs, layer, method)
    assert expected.abs().min() > 0
    calls = []
    original = prepared.output_parts
    monkeypatch.setattr(prepared, "output_parts", lambda *a, **k: calls.append(1) or original(*a, **k))
    forwards = [0]
    handle = model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    try:
        scores = PreparedScorer(model, reference, params=[layer], method=method, loss=InfoNCELoss())(inputs, None)
    finally:
        handle.remove()
    assert calls == [1] and forwards[0] == 1  # picked automatically; one forward of the model, cos included
    got = scores.cos if method == "cos" else scores.proj
    assert got.dtype == torch.float64
    assert_close(got, expected, what=f"{name}/{layer}/{method}")
    # the losses and outputs of that forward come along
    with torch.no_grad():
        out = model.eval()(*(inputs if isinstance(inputs, tuple) else (inputs,)))
    torch.testing.assert_close(scores.loss, InfoNCELoss()(out, None))
    torch.testing.assert_close(scores.outputs.text, out.text)
    if method == "cos":
        torch.testing.assert_close(scores.cos * scores.grad_norm, scores.proj)


@pytest.mark.parametrize("layer", LAYERS, ids=["image", "text"])
def test_every_path_agrees_on_pairs_with_tuple_inputs(layer):
    """The general paths (forward mode, Jacobian rows by vmap or one at a time) take the two inputs
    too, and the Jacobian rows may be pulled back a few at a time."""
    model, reference, inputs = dual_setup()
    targets = torch.arange(B)
    for method in ("proj", "cos"):
        expected = brute_force(model, reference, inputs, layer, method)
        for path in ("output", "jvp", "vmap", "loop"):
            got = mimic_scores(
                model, reference, inputs, targets, params=[layer], method=method, path=path, loss=InfoNCELoss()
            )
            assert_close(got, expected, what=f"{layer}/{method}/{path}")
        chunked = mimic_scores(
            model, reference, inputs, None, params=[layer], method=method, loss=InfoNCELoss(), chunk_size=3
        )
        assert_close(chunked, expected, what=f"{layer}/{method}/rows in chunks of 3")


def test_a_layer_whose_output_is_not_a_model_output_falls_back_exactly():
    """cos needs the layer's output among the model's outputs; otherwise auto moves to the general
    Jacobian (exact), and a forced path='output' says why it cannot serve."""

    class Normalised(nn.Module):
        def __init__(self, probe):
            super().__init__()
            self.probe = probe

        def forward(self, x):
            out = self.probe(x)
            return type(out)(out.image, torch.nn.functional.normalize(out.text, dim=-1), out.scale)

    model, reference, x = probe_setup()
    wrapped, wrapped_ref = Normalised(model), Normalised(reference)
    layer = "probe.text_projection.weight"
    direct = mimic_scores(
        model, reference, x, None, params=["text_projection.weight"], method="cos", loss=InfoNCELoss()
    )
    got = mimic_scores(wrapped, wrapped_ref, x, None, params=[layer], method="cos", loss=InfoNCELoss())
    assert_close(got, direct, what="normalised after the layer")  # InfoNCE normalises anyway: same scores
    proj = mimic_scores(wrapped, wrapped_ref, x, None, params=[layer], method="proj", loss=InfoNCELoss(), path="output")
    assert_close(proj, mimic_scores(model, reference, x, None, params=["text_projection.weight"], loss=InfoNCELoss()))
    with pytest.raises(
        ValueError, match="path='output' cannot be used: the mimic layer's output is not one of the model's outputs"
    ):
        mimic_scores(wrapped, wrapped_ref, x, None, params=[layer], method="cos", loss=InfoNCELoss(), path="output")
    with pytest.raises(ValueError, match="path='output' needs params to be the weight and/or bias of one nn.Linear"):
        mimic_scores(model, reference, x, None, params=["logit_scale"], loss=InfoNCELoss(), path="output")


def test_gram_and_direct_forms_agree_with_explicit_gradients():
    gen = torch.Generator().manual_seed(3)
    for positions, width in ((6, 10), (12, 4)):  # Gram, then direct
        rows = torch.randn(3, positions, 5, generator=gen, dtype=torch.float64)
        h = torch.randn(positions, width, generator=gen, dtype=torch.float64)
        tangent = torch.randn(positions, 5, generator=gen, dtype=torch.float64)
        gram = h @ h.T if positions <= width else None
        dot, sqnorm = row_geometry(rows, h, gram, tangent, True, True)
        for i in range(3):
            g_w, g_b = rows[i].T @ h, rows[i].sum(0)
            torch.testing.assert_close(sqnorm[i], g_w.pow(2).sum() + g_b.pow(2).sum())
            torch.testing.assert_close(dot[i], (rows[i] * tangent).sum())


def test_tuple_inputs_are_checked():
    model, reference, (images, tokens) = dual_setup()
    scorer = PreparedScorer(model, reference, params=[LAYERS[1]], loss=InfoNCELoss())
    with pytest.raises(ValueError, match=r"share their batch size.*\[7, 6\]"):
        scorer((images, tokens[:6]), None)
    with pytest.raises(TypeError, match="input 1 of the tuple must be a batched torch.Tensor"):
        scorer((images, "captions"), None)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        scorer((images[:1], tokens[:1]), None)


class BagOfWordsDual(nn.Module):
    """A dual encoder whose text tower is an ``nn.EmbeddingBag`` (no forward-mode rule in torch)."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 6, mode="mean")
        self.image_projection = nn.Linear(5, 4, bias=False)
        self.text_projection = nn.Linear(6, 4, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, images, tokens):
        from mimic_explorer.models.dual import DualOutput

        return DualOutput(self.image_projection(images), self.text_projection(self.bag(tokens)), self.logit_scale.exp())


def test_an_op_without_a_forward_mode_rule_falls_back_exactly_and_says_so():
    """A mimic layer inside an EmbeddingBag tower: forward mode fails, auto moves to Jacobian rows by
    vmap with a warning that the scores stay exact — and they equal the per-pair loop. The projection
    after the bag needs no fallback: the output layer's path starts its tangent after the tower."""
    torch.manual_seed(0)
    model = BagOfWordsDual().double()
    reference = perturbed(model, scale=0.3)
    inputs = (
        torch.randn(B, 5, dtype=torch.float64),
        torch.randint(0, 20, (B, 4), generator=torch.Generator().manual_seed(2)),
    )
    expected = brute_force(model, reference, inputs, "bag.weight", "proj")
    with pytest.warns(RuntimeWarning, match="(?s)forward-mode AD is not available.*Jacobian.*the scores stay exact"):
        got = mimic_scores(model, reference, inputs, None, params=["bag.weight"], loss=InfoNCELoss())
    assert_close(got, expected, what="EmbeddingBag weight, proj after the fallback")
    with pytest.raises(Exception, match="forward AD"):
        mimic_scores(model, reference, inputs, None, params=["bag.weight"], loss=InfoNCELoss(), path="jvp")
    import warnings

    for method in ("proj", "cos"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = mimic_scores(
                model, reference, inputs, None, params=["text_projection.weight"], method=method, loss=InfoNCELoss()
            )
        assert_close(
            got,
            brute_force(model, reference, inputs, "text_projection.weight", method),
            what=f"text projection/{method}",
        )


@pytest.mark.parametrize("method", ["proj", "cos"])
def test_a_hand_written_coupled_loss_is_exact_once_declared(method):
    """``loss=`` takes any callable returning the (B,) losses; wrapped with couples_batch=True, a
    hand-written InfoNCE gives the brute-force scores of both mimic layers on the frozen-tower probe."""
    from mimic_explorer.scoring import CallableLoss

    def infonce(outputs, targets):
        image, text, scale = outputs
        logits = scale * torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
        diagonal = torch.arange(len(image))
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(logits, diagonal, reduction="none") + ce(logits.T, diagonal, reduction="none"))

    model, reference, x = probe_setup()
    for layer in LAYERS:
        expected = brute_force(model, reference, x, layer, method)
        got = mimic_scores(
            model, reference, x, None, params=[layer], method=method, loss=CallableLoss(infonce, couples_batch=True)
        )
        assert_close(got, expected, what=f"declared/{layer}/{method}")
