"""The contrastive per-pair loss is exact (float64, against a direct loop and per-pair autograd), its
directional derivatives by forward mode equal autograd's on each pair's own loss for both mimic
layers, and the CLIP score / recall@k helpers count what they claim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from mimic_explorer.models.dual import DualOutput, ProjectionProbe
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score, retrieval_recall

B, IMAGE_DIM, TEXT_DIM, EMBED = 7, 5, 6, 4


def probe(seed: int = 0) -> ProjectionProbe:
    torch.manual_seed(seed)
    model = ProjectionProbe(
        torch.nn.Linear(IMAGE_DIM, EMBED, bias=False), torch.nn.Linear(TEXT_DIM, EMBED, bias=False), math.log(5.0)
    )
    return model.double()


def features(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, IMAGE_DIM + TEXT_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loop_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, i: int) -> torch.Tensor:
    """Pair i's symmetric InfoNCE term written out one pair at a time."""
    u = [image[j] / image[j].norm() for j in range(len(image))]
    t = [text[j] / text[j].norm() for j in range(len(text))]
    row = torch.stack([scale * (u[i] @ t[j]) for j in range(len(t))])
    col = torch.stack([scale * (u[j] @ t[i]) for j in range(len(u))])
    return 0.5 * (-(row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0)))


def test_per_pair_loss_equals_a_direct_loop():
    model, x = probe(), features()
    out = model(x)
    assert isinstance(out, DualOutput) and out.image.shape == (B, EMBED) and out.scale.dim() == 0
    losses = InfoNCELoss()(out, torch.arange(B))
    expected = torch.stack([loop_loss(out.image, out.text, out.scale, i) for i in range(B)])
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(InfoNCELoss()(out, None), losses)
    # The batch mean is CLIP's loss: the mean of the two cross-entropies.
    logits = out.scale * F.normalize(out.image, dim=1) @ F.normalize(out.text, dim=1).T
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(B)) + F.cross_entropy(logits.T, torch.arange(B)))
    torch.testing.assert_close(losses.mean(), clip)


@pytest.mark.parametrize("layer", ["text_projection.weight", "image_projection.weight"])
def test_forward_mode_directional_derivative_equals_autograd_on_each_pairs_own_loss(layer):
    model, x = probe(), features()
    loss = InfoNCELoss()
    params = {n: p.detach() for n, p in model.named_parameters()}
    v = torch.randn(params[layer].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def losses_at(weight: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, {**params, layer: weight}, (x,)), torch.arange(B))

    _, directional = jvp(losses_at, (params[layer],), (v,))
    for i in range(B):
        weight = params[layer].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(losses_at(weight)[i], weight)
        torch.testing.assert_close(directional[i], (grad * v).sum(), rtol=1e-5, atol=1e-10)
    assert directional.abs().max() > 1e-3  # the check compares real, non-zero numbers


def test_forward_mode_works_through_the_built_in_text_tower():
    """Embedding + masked mean has forward-mode rules (EmbeddingBag has none): a text-side layer of
    the full built-in model gets exact directional derivatives too."""
    tokenizer = WordTokenizer.from_captions(["a dog runs", "two cats sleep on a sofa", "a red bus"], context_length=4)
    model = build_small_dual_encoder(
        "mlp", tokenizer, embed_dim=4, input_shape=(3, 4, 4), word_dim=5, text_hidden=6, text_width=6
    ).double()
    model.eval()
    images = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    tokens = tokenizer.encode(["a dog runs", "two cats sleep on a sofa", "a blue bus"]).ids
    params = {n: p.detach() for n, p in model.named_parameters()}
    layer = "text_tower.embedding.weight"
    v = torch.randn(params[layer].shape, dtype=torch.float64)

    def losses_at(weight):
        return InfoNCELoss()(functional_call(model, {**params, layer: weight}, (images, tokens)))

    _, directional = jvp(losses_at, (params[layer],), (v,))
    for i in range(3):
        weight = params[layer].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(losses_at(weight)[i], weight)
        torch.testing.assert_close(directional[i], (grad * v).sum(), rtol=1e-5, atol=1e-10)


def test_loss_refuses_a_single_pair_and_sliced_targets():
    out = probe()(features())
    with pytest.raises(ValueError, match="at least 2 pairs"):
        InfoNCELoss()(DualOutput(out.image[:1], out.text[:1], out.scale))
    with pytest.raises(ValueError, match="arange"):
        InfoNCELoss()(out, torch.arange(3, 3 + B))
    with pytest.raises(TypeError, match="dual encoder"):
        InfoNCELoss()(out.image, None)
    assert InfoNCELoss.couples_batch is True and InfoNCELoss().output_grad(out, None) is None


def test_clip_score_is_the_pair_cosine():
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    text = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    torch.testing.assert_close(clip_score(image, text), torch.tensor([1.0, 0.0]))


def test_retrieval_recall_counts_hits_with_several_texts_per_image():
    image = torch.eye(3)
    # texts 0,1 describe image 0; text 2 image 1; text 3 image 2 (but looks like image 0)
    text = torch.tensor([[1.0, 0.1, 0.0], [0.9, 0.0, 0.2], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5]])
    owner = torch.tensor([0, 0, 1, 2])
    recall = retrieval_recall(image, text, owner, ks=(1, 2))
    # i2t: image 0 → best text is 0 or 3 (its own text 0 scores 1/|t0|·1 ≈ 0.995, text 3 ≈ 0.894): hit@1.
    # image 1 → text 2 hit@1. image 2 → text 3 (0.447) vs text 1 (0.217): hit@1.
    assert recall["i2t@1"] == 1.0
    # t2i: text 3's best image is 0 (wrong), its own image 2 is second.
    assert recall["t2i@1"] == 0.75 and recall["t2i@2"] == 1.0
    with pytest.raises(ValueError, match="image_of_text"):
        retrieval_recall(image, text)


@pytest.mark.parametrize("side", ["image", "text"])
def test_closed_form_projection_gradient_norms_equal_autograd_per_pair(side):
    """‖∂ℓ_i/∂W‖² of a projection in closed form (B×B Gram products) equals per-pair autograd, and the
    scorer's cos on the output layer's path uses it (no Jacobian rows are pulled back)."""
    import mimic_explorer.scoring.output_layer as output_layer
    from mimic_explorer.scoring import mimic_scores
    from mimic_explorer.scoring.contrastive import projection_grad_sqnorms
    from tests.scoring_models import perturbed

    model, x = probe(), features()
    layer = model.image_projection if side == "image" else model.text_projection
    want = []
    for i in range(B):
        model.zero_grad(set_to_none=True)
        InfoNCELoss()(model(x))[i].backward()
        want.append(layer.weight.grad.pow(2).sum())
    with torch.no_grad():
        out = model(x)
    h = x[:, :IMAGE_DIM] if side == "image" else x[:, IMAGE_DIM:]
    torch.testing.assert_close(
        projection_grad_sqnorms(out.image, out.text, out.scale, h, side), torch.stack(want), rtol=1e-10, atol=1e-12
    )
    with pytest.raises(ValueError, match="side must be"):
        projection_grad_sqnorms(out.image, out.text, out.scale, h, "audio")
    original, rows = output_layer.linear_output_geometry, []
    output_layer.linear_output_geometry = lambda *a, **k: rows.append(1) or original(*a, **k)
    try:
        mimic_scores(
            model,
            perturbed(model, 0.3),
            x,
            None,
            params=[f"{side}_projection.weight"],
            method="cos",
            loss=InfoNCELoss(),
        )
    finally:
        output_layer.linear_output_geometry = original
    assert rows == []
