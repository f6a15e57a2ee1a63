"""Layer shapes the fast paths must get right: heads with positions, heads called twice, heads that are
not last in ``children()``, convolutions with groups/dilation/stride/'same'/reflect padding, in-place
activations after hooked layers, weights also used functionally (ghost-norm guard), dropout,
LayerNorm/GroupNorm, autocast and half precision, the Stage-1 re-weighted gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.heads import find_head
from mimic_explorer.scoring import reweighted_grads
from mimic_explorer.scoring.ghost import ghost_layers, ghost_parts
from tests.scoring_models import assert_close, oracle, perturbed

PATHS_ALL = ("auto", "jvp", "vmap", "loop")


def _check(model, x, y, params, names, paths=PATHS_ALL, methods=("proj", "cos")):
    model = model.double()
    reference = perturbed(model)
    x = x.double()
    for method in methods:
        expected = oracle(model, reference, x, y, names, method)
        for path in paths:
            got = mimic_scores(model, reference, x, y, params=params, method=method, path=path)
            assert_close(got, expected, what=f"{method}/{path}")


class TokenHead(nn.Module):
    """Linear head applied per token, then mean-pooled: the head's output is not the logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):  # x: (B, T, 6)
        return self.head(torch.tanh(self.embed(x))).mean(1)


class TwiceHead(nn.Module):
    """The head is applied to two views and the logits averaged (multi-crop)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return 0.5 * (self.head(h) + self.head(h.flip(-1)))


class HeadFirst(nn.Module):
    """Head registered before the backbone, an unused auxiliary Linear registered last."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(8, 4)
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True))
        self.aux = nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_head_with_token_positions():
    torch.manual_seed(0)
    _check(
        TokenHead(),
        torch.randn(3, 5, 6),
        torch.tensor([0, 3, 1]),
        "head",
        ["head.weight", "head.bias"],
        paths=(*PATHS_ALL, "head"),
    )


def test_head_called_twice():
    torch.manual_seed(0)
    _check(
        TwiceHead(),
        torch.randn(3, 6),
        torch.tensor([0, 3, 1]),
        "head",
        ["head.weight", "head.bias"],
        paths=(*PATHS_ALL, "head"),
    )


def test_head_not_last_in_children():
    torch.manual_seed(0)
    model = HeadFirst()
    assert find_head(model, torch.randn(1, 6))[0] == "classifier"
    _check(
        model,
        torch.randn(3, 6),
        torch.tensor([0, 3, 1]),
        "head",
        ["classifier.weight", "classifier.bias"],
        paths=("auto", "head", "loop"),
    )


class ConvZoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=2)
        self.c = nn.Conv2d(4, 6, (3, 2), padding=1, padding_mode="reflect", bias=False)
        self.d = nn.Conv2d(6, 6, 1, groups=6)  # depthwise
        self.gn = nn.GroupNorm(2, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.a(x), inplace=True)
        x = F.relu(self.b(x))
        x = self.gn(self.d(self.c(x)))
        return self.head(x.mean((2, 3)))


def test_conv_variants_and_groupnorm_ghost_norms_are_exact():
    torch.manual_seed(0)
    model = ConvZoo().double()
    x, y = torch.randn(3, 2, 9, 9).double(), torch.tensor([0, 2, 1])
    names = [n for n, _ in model.named_parameters()]
    assert {n for attrs in ghost_layers(model, names).values() for n in attrs.values()} == set(names)
    _, covered = ghost_parts(model.eval(), names, {}, x, y, need_dot=False)
    assert covered == set(names)  # nothing left to the vmap fallback
    _check(model, x, y, "all", names)


class SharedWeight(nn.Module):
    """fc1's weight is also used functionally elsewhere: its hook sees only part of its gradient."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = h + torch.tanh(F.linear(h, self.fc1.weight))
        return self.head(self.ln(h))


def test_ghost_guard_catches_functional_reuse():
    torch.manual_seed(0)
    model = SharedWeight().double()
    x, y = torch.randn(4, 6).double(), torch.tensor([0, 3, 1, 2])
    names = [n for n, _ in model.named_parameters()]
    _, covered = ghost_parts(model.eval(), names, {}, x, y, need_dot=False)
    assert "fc1.weight" not in covered and "head.weight" in covered and "ln.weight" in covered
    _check(model, x, y, "all", names, methods=("cos",))


def test_dropout_is_off_while_scoring():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).train()
    _check(model, torch.randn(4, 6), torch.tensor([0, 3, 1, 2]), "all", [n for n, _ in model.named_parameters()])


def test_autocast_scores_are_float32_and_match():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    reference = perturbed(model)
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 2, 2])
    for params in ("head", "all"):
        plain = mimic_scores(model, reference, x, y, params=params, method="cos")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = mimic_scores(model, reference, x, y, params=params, method="cos")
        assert auto.dtype == torch.float32
        assert_close(auto, plain, rel=1e-5, what=params)


def test_half_precision_model_scores_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    reference = perturbed(model)
    x, y = torch.randn(5, 6), torch.tensor([0, 3, 1, 2, 2])
    low, low_ref = model.to(torch.bfloat16), reference.to(torch.bfloat16)
    up, up_ref = perturbed(low, 0.0).float(), perturbed(low_ref, 0.0).float()
    expected = mimic_scores(up, up_ref, x, y, params="all", method="cos")
    for path in ("auto", "vmap"):
        got = mimic_scores(low, low_ref, x, y, params="all", method="cos", path=path)
        assert got.dtype == torch.float32
        assert_close(got, expected, rel=1e-5, what=path)
    head = mimic_scores(low, low_ref, x, y, params="head")
    assert head.dtype == torch.float32 and torch.isfinite(head).all()


def test_reweighted_grads_equal_weighted_sum_of_per_sample_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x, y = torch.randn(5, 6).double(), torch.tensor([0, 3, 1, 2, 2])
    w = torch.softmax(torch.randn(5).double(), 0)
    params = list(model.parameters())
    got = reweighted_grads(F.cross_entropy(model(x), y, reduction="none"), w, params)
    expected = [torch.zeros_like(p) for p in params]
    for i in range(5):
        gi = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        expected = [e + w[i] * g for e, g in zip(expected, gi)]
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError, match="shape"):
        reweighted_grads(torch.zeros(5), torch.zeros(4), params)


class _SignedSquare(torch.autograd.Function):
    """No jvp and no setup_context: neither forward mode nor torch.func transforms can run it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x.abs()


class CustomOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.b = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(4))  # used by a plain multiply: not a ghost layer

    def forward(self, x):
        return self.b(self.ln(_SignedSquare.apply(self.a(x))) * self.scale)


def test_auto_falls_back_when_forward_mode_and_vmap_are_unavailable():
    torch.manual_seed(0)
    model = CustomOp().double()
    reference = perturbed(model)
    x, y = torch.randn(4, 3).double(), torch.tensor([0, 1, 1, 0])
    names = [n for n, _ in model.named_parameters()]
    for method in ("proj", "cos"):
        expected = oracle(model, reference, x, y, names, method)
        with pytest.warns(RuntimeWarning, match="falling back"):
            got = mimic_scores(model, reference, x, y, params="all", method=method)
        assert_close(got, expected, what=method)
    with pytest.raises(NotImplementedError, match="jvp"):
        mimic_scores(model, reference, x, y, params="all", path="jvp")


class InPlaceTemperature(nn.Module):
    """The head's output is divided by a temperature in place: the logits object is the head's
    output, but the logits are not z, so δ_z ≠ softmax − onehot."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        logits = self.head(torch.tanh(self.body(x)))
        logits /= 3.0
        return logits


def test_head_output_modified_in_place():
    torch.manual_seed(0)
    _check(
        InPlaceTemperature(),
        torch.randn(3, 6),
        torch.tensor([0, 3, 1]),
        "head",
        ["head.weight", "head.bias"],
        paths=("auto", "head", "loop"),
    )


def test_warns_when_no_linear_produces_the_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Unflatten(1, (2, 4)), nn.Conv1d(2, 3, 4), nn.Flatten())
    reference = perturbed(model)
    with pytest.warns(UserWarning, match="no nn.Linear produces the logits"):
        mimic_scores(model, reference, torch.randn(3, 6), torch.tensor([0, 2, 1]))


def test_cross_entropy_with_output_grad_matches_autograd():
    """One log-softmax gives both the unreduced losses and δ = ∂ℓ_i/∂z_i (with and without positions)."""
    from mimic_explorer.scoring.linear_head import cross_entropy_output_grad, cross_entropy_with_output_grad

    g = torch.Generator().manual_seed(0)
    for shape in ((7, 5), (3, 4, 6)):
        logits = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
        losses, delta = cross_entropy_with_output_grad(logits.detach(), targets)
        expected = F.cross_entropy(logits.reshape(-1, shape[-1]), targets.reshape(-1), reduction="none").reshape(
            shape[:-1]
        )
        torch.testing.assert_close(losses, expected.detach(), rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(expected.sum(), logits)
        torch.testing.assert_close(delta, grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(delta, cross_entropy_output_grad(logits.detach(), targets), rtol=1e-12, atol=1e-12)
