"""The Stage-1 loop (``training/loop.train``) on a classifier: the re-weighted head gradient is exact, runs are
deterministic, records complete, the linear probe's closed-form step equals autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimic_explorer.models.small import MLP
from mimic_explorer.scoring.stage1 import stage1_weights
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.loop import TrainConfig, clone_model, train


def _data(n=96, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return x, y


def _brute_force_scores(model, reference, x, y):
    """Per-sample head gradients by autograd, one sample at a time."""
    head, ref_head = model.head, reference.head
    v = torch.cat([(ref_head.weight - head.weight).flatten(), (ref_head.bias - head.bias)]).detach()
    grads = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        grads.append(torch.cat([gw.flatten(), gb]))
    grads = torch.stack(grads)
    return grads, -(grads @ v) / v.norm()


@pytest.mark.parametrize("method", ["proj", "cos", "normed_proj", "normed_cos"])
def test_grad_mimic_step_applies_exact_reweighted_head_gradient(method):
    torch.manual_seed(0)
    x, y = _data()
    model = MLP(12, 4, (16,)).double()
    reference = clone_model(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * torch.randn_like(p))
    before = clone_model(model)
    grads, proj = _brute_force_scores(before, reference, x, y)
    cos = proj / grads.norm(dim=1)
    weights = stage1_weights(cos if method.endswith("cos") else proj, method, 1.0)
    expected_head_grad = (weights[:, None] * grads).sum(0)

    seen = {}

    class OneBatch(TensorBatches):
        def epoch(self, epoch):
            yield torch.arange(len(y)), x, y

    config = TrainConfig(epochs=1, batch_size=len(y), lr=0.0, weight_decay=0.0, optimizer="sgd", method=method)

    def capture(record):
        seen["record"] = record

    # lr=0: weights do not move, so the gradients left on the head are exactly what the step applied
    train(model, OneBatch(x, y, len(y), 0), config, reference=reference, on_epoch=capture)
    got = torch.cat([model.head.weight.grad.flatten(), model.head.bias.grad])
    torch.testing.assert_close(got, expected_head_grad, rtol=1e-9, atol=1e-12)
    record = seen["record"]
    np.testing.assert_allclose(record.proj, proj.numpy(), rtol=1e-9)
    np.testing.assert_allclose(record.cos, cos.numpy(), rtol=1e-9)
    np.testing.assert_allclose(record.weight, weights.numpy(), rtol=1e-9)
    # the backbone still gets the plain mean gradient
    plain = clone_model(before)
    F.cross_entropy(plain(x), y).backward()
    torch.testing.assert_close(model.backbone[1].weight.grad, plain.backbone[1].weight.grad)


def test_training_is_deterministic_and_records_every_sample_each_epoch():
    x, y = _data(n=70)
    x = x.float()
    torch.manual_seed(1)
    init = MLP(12, 4, (16,))
    reference = clone_model(init)
    runs = []
    for _ in range(2):
        model = clone_model(init)
        result = train(
            model, TensorBatches(x, y, 16, 7), TrainConfig(epochs=3, batch_size=16, seed=7), reference=reference
        )
        runs.append((model, result))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    for record in runs[0][1].records:
        assert sorted(record.index.tolist()) == list(range(70))
        np.testing.assert_allclose(np.bincount(record.step, weights=record.weight)[record.step.min() :], 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "changes, message",
    [({"temperature": 0.0}, "temperature"), ({"batch_size": 1000}, "batch size"), ({"method": "x"}, "method")],
)
def test_bad_training_options_are_refused(changes, message):
    x, y = _data(n=20)
    with pytest.raises(ValueError, match=message):
        train(MLP(12, 4).double(), TensorBatches(x, y, 8, 0), TrainConfig(**{"batch_size": 8, **changes}))


def test_nan_loss_names_the_samples():
    x, y = _data(n=16)
    x[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="5"):
        train(MLP(12, 4).double(), TensorBatches(x, y, 16, 0), TrainConfig(epochs=1, batch_size=16))


class _HeadOnly(torch.nn.Module):
    """The head alone but not a ``LinearProbe``: ``train`` gives it the autograd path."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, x):
        return self.head(x)


@pytest.mark.parametrize(
    "method, optimizer, starting_epoch, with_reference",
    [
        ("normed_proj", "adamw", 0, True),
        ("normed_cos", "sgd", 0, True),
        ("proj", "adamw", 1, True),
        ("cos", "sgd", 0, True),
        ("normed_proj", "adamw", 0, False),
    ],
)
def test_linear_probe_closed_form_path_equals_autograd(method, optimizer, starting_epoch, with_reference):
    """The probe's no-autograd step (logits, δ, scores from reference logits, Σ w_i g_i) must train
    exactly like the autograd step on the same head, and record the same numbers."""
    from mimic_explorer.models.probe import LinearProbe

    x, y = _data(n=90, d=12, c=4, seed=3)
    torch.manual_seed(0)
    init = torch.nn.Linear(12, 4).double()
    reference = clone_model(init)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.5 * torch.randn_like(p))
    config = TrainConfig(
        epochs=3, batch_size=32, lr=0.05, optimizer=optimizer, method=method, starting_epoch=starting_epoch
    )
    runs = []
    for wrap in (LinearProbe, _HeadOnly):
        model = wrap(clone_model(init))
        ref = wrap(clone_model(reference)) if with_reference else None
        runs.append((model, train(model, TensorBatches(x, y, 32, 5), config, reference=ref)))
    (probe, fast), (plain, slow) = runs
    torch.testing.assert_close(probe.head.weight, plain.head.weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(probe.head.bias, plain.head.bias, rtol=1e-9, atol=1e-12)
    assert not torch.equal(probe.head.weight, init.weight)  # it trained
    for a, b in zip(fast.records, slow.records):
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_array_equal(a.pred, b.pred)
        np.testing.assert_array_equal(a.step, b.step)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-9)
        for name in ("proj", "cos", "weight"):
            if with_reference:
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-8, atol=1e-12)
            else:
                assert getattr(a, name) is None and getattr(b, name) is None


def test_linear_probe_nan_loss_names_the_samples():
    from mimic_explorer.models.probe import LinearProbe

    x, y = _data(n=16)
    x[9, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="9"):
        train(
            LinearProbe(torch.nn.Linear(12, 4).double()),
            TensorBatches(x, y, 16, 0),
            TrainConfig(epochs=1, batch_size=16),
        )
