"""Stage-1 training under a custom loss (``training/loss_step.LossStep``, InfoNCE on image–text pairs):
the Grad-Mimic step gives the mimic layer exactly Σ w_i g_i (g_i = ∇ of pair i's own loss in its batch,
by brute-force autograd) and every other parameter the mean gradient, for both mimic layers, on the
frozen-tower probe and on the built-in dual encoder; plain training lowers the loss; classification
keeps its own path."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from mimic_explorer.models.dual import ProjectionProbe
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.loop import TrainConfig, train
from tests.scoring_models import perturbed

LAYERS = ["image_projection.weight", "text_projection.weight"]
CAPTIONS = [
    "a dog runs on the grass",
    "two cats sleep on a sofa",
    "a red bus in the street",
    "a man rides a bike",
    "children play in the snow",
    "a bird on a branch",
    "a boat on the lake",
    "a girl reads a book",
]


def probe_data(n=8):
    torch.manual_seed(0)
    model = ProjectionProbe(nn.Linear(5, 4, bias=False), nn.Linear(9, 4, bias=False), math.log(5.0)).double()
    x = torch.randn(n, 14, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, perturbed(model, scale=0.3), x


def dual_data():
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_captions(CAPTIONS, context_length=6)
    model = build_small_dual_encoder(
        "mlp", tokenizer, embed_dim=4, input_shape=(3, 4, 4), word_dim=5, text_hidden=6, text_width=6
    ).double()
    images = torch.randn(len(CAPTIONS), 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, perturbed(model, scale=0.3), (images, tokenizer.encode(CAPTIONS).ids)


def expected_step(model, reference, inputs, layer, method):
    """Brute force: per-pair gradients of every parameter by autograd, one pair at a time, the weights
    from them, then Σ w_i g_i on the mimic layer and the mean gradient elsewhere."""
    m = copy.deepcopy(model).train()
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    params = dict(m.named_parameters())
    batch = len(args[0])
    per_pair = []
    for i in range(batch):
        m.zero_grad(set_to_none=True)
        InfoNCELoss()(m(*args), None)[i].backward()
        per_pair.append({n: p.grad.clone() for n, p in params.items() if p.grad is not None})
    v = (dict(reference.named_parameters())[layer] - params[layer]).detach().reshape(-1)
    g = torch.stack([row[layer].reshape(-1) for row in per_pair])
    proj = -(g @ v) / v.norm()
    cos = proj / g.norm(dim=1)
    weights = stage1_weights(cos if method.endswith("cos") else proj, method)
    grads = {n: sum(row[n] for row in per_pair) / batch for n in per_pair[0]}
    grads[layer] = sum(w * row[layer] for w, row in zip(weights, per_pair))
    return proj, cos, weights, grads


@pytest.mark.parametrize("setup", [probe_data, dual_data], ids=["probe", "small_dual"])
@pytest.mark.parametrize("layer", LAYERS, ids=["image", "text"])
@pytest.mark.parametrize("method", ["normed_cos", "normed_proj"])
def test_grad_mimic_step_gives_the_mimic_layer_the_reweighted_sum_and_the_rest_the_mean(
    setup, layer, method, monkeypatch
):
    """normed_cos takes the Jacobian rows (records carry cos); normed_proj one forward-mode pass
    through the loss (no cos recorded: it would cost B pullbacks)."""
    model, reference, inputs = setup()
    proj, cos, weights, grads = expected_step(model, reference, inputs, layer, method)
    trained = copy.deepcopy(model)
    seen = {}
    # SGD without momentum or decay, lr 1: the step is θ − g, so the gradient is read off the weights
    config = TrainConfig(epochs=1, batch_size=len(proj), lr=1.0, weight_decay=0.0, optimizer="sgd", method=method)
    before = {n: p.detach().clone() for n, p in trained.named_parameters()}
    sgd = torch.optim.SGD
    monkeypatch.setattr(torch.optim, "SGD", lambda params, **kw: sgd(params, lr=kw["lr"]))  # no momentum
    result = train(
        trained,
        TensorBatches(inputs, None, len(proj), seed=0),
        config,
        reference=reference,
        loss=InfoNCELoss(),
        mimic_params=[layer],
        on_epoch=lambda r: seen.update(r=r),
    )
    record = seen["r"]
    order = torch.as_tensor(record.index)
    torch.testing.assert_close(torch.as_tensor(record.proj), proj[order].detach(), rtol=1e-5, atol=1e-8)
    if method == "normed_cos":
        torch.testing.assert_close(torch.as_tensor(record.cos), cos[order].detach(), rtol=1e-5, atol=1e-8)
    else:
        assert record.cos is None
    torch.testing.assert_close(torch.as_tensor(record.weight), weights[order].detach(), rtol=1e-5, atol=1e-8)
    assert set(record.pred.tolist()) <= {0, 1} and record.step.tolist() == [0] * len(proj)
    for name, p in result.model.named_parameters():
        step = before[name] - p.detach()
        torch.testing.assert_close(step, grads.get(name, torch.zeros_like(step)), rtol=1e-5, atol=1e-9, msg=name)


def test_plain_training_of_pairs_lowers_the_loss_and_batches_of_one_join_the_one_before():
    model, _, x = probe_data(n=41)
    batches = TensorBatches(x, None, 8, seed=0, min_batch=2)
    assert [len(i) for i, _, _ in batches.epoch(0)] == [8, 8, 8, 8, 9]
    result = train(model, batches, TrainConfig(epochs=30, batch_size=8, lr=0.05), loss=InfoNCELoss())
    first, last = result.records[0], result.records[-1]
    assert last.loss.mean() < 0.8 * first.loss.mean()
    assert last.proj is None and sorted(last.index.tolist()) == list(range(41))


def test_a_mimic_layer_inside_a_tower_takes_the_exact_batched_backward_and_says_so():
    model, reference, inputs = dual_data()
    layer = "text_tower.mlp.2.weight"
    proj, cos, _weights, _ = expected_step(model, reference, inputs, layer, "normed_cos")
    seen = {}
    with pytest.warns(RuntimeWarning, match="batched backward \\(exact"):
        train(
            copy.deepcopy(model),
            TensorBatches(inputs, None, 8, seed=0),
            TrainConfig(epochs=1, batch_size=8, method="normed_cos"),
            reference=reference,
            loss=InfoNCELoss(),
            mimic_params=[layer],
            on_epoch=lambda r: seen.update(r=r),
        )
    order = torch.as_tensor(seen["r"].index)
    torch.testing.assert_close(torch.as_tensor(seen["r"].proj), proj[order].detach(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(torch.as_tensor(seen["r"].cos), cos[order].detach(), rtol=1e-5, atol=1e-8)


def test_custom_loss_options_are_checked():
    model, reference, x = probe_data()
    config = TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="needs mimic_params"):
        train(model, TensorBatches(x, None, 8, seed=0), config, reference=reference, loss=InfoNCELoss())
    with pytest.raises(ValueError, match="mimic_params is for a custom loss"):
        train(model, TensorBatches(x, torch.zeros(8, dtype=torch.long), 8, seed=0), config, mimic_params=["x"])
