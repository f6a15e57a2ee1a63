"""Pluggable per-sample losses: every path equals a brute-force loop to 1e-5 relative (float64), for a
per-sample custom loss (closed form or plain callable) and for a loss that couples the batch (a small
symmetric InfoNCE over two towers), proj and cos; bad losses fail with errors that name the cause."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.small import MLP
from mimic_explorer.scoring import PreparedScorer
from tests.scoring_models import assert_close, perturbed


def brute_force(model, reference, x, targets, names, loss, method):
    """Row i of the Jacobian of the whole batch's (B,) loss vector by one autograd call each (eval mode,
    a deep copy): exact whatever the loss couples."""
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    ref = dict(reference.named_parameters())
    v = torch.cat([(ref[n] - params[n]).detach().reshape(-1) for n in names])
    losses = loss(m(x), targets)
    scores = []
    for i in range(len(losses)):
        grads = torch.autograd.grad(losses[i], [params[n] for n in names], retain_graph=True, allow_unused=True)
        g = torch.cat([(torch.zeros_like(params[n]) if gi is None else gi).reshape(-1) for gi, n in zip(grads, names)])
        s = -(g @ v) / v.norm()
        scores.append(s / g.norm() if method == "cos" else s)
    return torch.stack(scores).detach()


class TwoTowers(nn.Module):
    """An image tower and a text tower on two parts of one input, each ending in a linear projection;
    the outputs are the L2-normalised embeddings (U, T)."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
        self.text = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))

    def forward(self, x):
        return F.normalize(self.image(x[:, :6]), dim=-1), F.normalize(self.text(x[:, 6:]), dim=-1)


class SymmetricInfoNCE:
    """ℓ_i = ½ (CE(s·U Tᵀ, arange)_i + CE(s·T Uᵀ, arange)_i): pair i against every other pair of the batch."""

    couples_batch = True

    def __init__(self, scale: float = 4.0):
        self.scale = scale

    def __call__(self, outputs, targets):
        u, t = outputs
        if targets is None:  # the positives are the diagonal
            targets = torch.arange(len(u), device=u.device)
        logits = self.scale * u @ t.T
        return 0.5 * (
            F.cross_entropy(logits, targets, reduction="none") + F.cross_entropy(logits.T, targets, reduction="none")
        )

    def output_grad(self, outputs, targets):
        return None


class SquaredError:
    """ℓ_i = ½‖z_i − onehot(y_i)‖², per sample, with its closed form δ_i = z_i − onehot(y_i)."""

    couples_batch = False

    def __call__(self, logits, targets):
        return 0.5 * self.output_grad(logits, targets).pow(2).sum(-1)

    def output_grad(self, logits, targets):
        return logits - torch.zeros_like(logits).scatter(-1, targets.unsqueeze(-1), 1.0)  # one-hot, vmap-safe


def smoothed_ce(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    model = TwoTowers().double()
    reference = perturbed(model, scale=0.2)
    x = torch.randn(6, 10, dtype=torch.float64)
    return model, reference, x, torch.arange(6)


IMAGE = ["image.2.weight", "image.2.bias"]
TEXT = ["text.2.weight", "text.2.bias"]


@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("names", [IMAGE, TEXT, "all"], ids=["image", "text", "all"])
def test_coupled_infonce_matches_brute_force_on_every_path(towers, names, method):
    model, reference, x, targets = towers
    loss = SymmetricInfoNCE()
    chosen = [n for n, _ in model.named_parameters()] if names == "all" else names
    expected = brute_force(model, reference, x, targets, chosen, loss, method)
    assert expected.abs().min() > 0  # every pair's gradient reaches the mimic layers
    for path in ("auto", "jvp", "vmap", "loop"):
        got = mimic_scores(model, reference, x, targets, params=names, method=method, path=path, loss=loss)
        assert got.dtype == torch.float64
        assert_close(got, expected, what=f"{names}/{method}/{path}")
    chunked = mimic_scores(model, reference, x, targets, params=names, method=method, loss=loss, chunk_size=4)
    assert_close(chunked, expected, what=f"{names}/{method}/rows in chunks")


def test_declaring_the_coupling_matters(towers):
    """The same InfoNCE passed as a plain callable is taken as per-sample: proj is still exact (forward
    mode does not care), but cos by ghost norms is not — which is why a coupled loss never uses them."""
    model, reference, x, targets = towers
    loss = SymmetricInfoNCE()
    exact = brute_force(model, reference, x, targets, TEXT, loss, "cos")
    assert_close(
        mimic_scores(model, reference, x, targets, params=TEXT, method="proj", loss=loss.__call__),
        brute_force(model, reference, x, targets, TEXT, loss, "proj"),
    )
    undeclared = mimic_scores(model, reference, x, targets, params=TEXT, method="cos", loss=loss.__call__)
    assert float((undeclared - exact).abs().max()) > 1e-3


def test_targets_are_whatever_the_loss_accepts(towers):
    model, reference, x, targets = towers
    for method in ("proj", "cos"):
        expected = mimic_scores(model, reference, x, targets, params=IMAGE, method=method, loss=SymmetricInfoNCE())
        for path in ("auto", "vmap", "loop"):
            got = mimic_scores(
                model, reference, x, None, params=IMAGE, method=method, path=path, loss=SymmetricInfoNCE()
            )
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_coupled_loss_takes_forward_mode_for_proj_and_jacobian_rows_for_cos(towers, monkeypatch):
    import mimic_explorer.scoring.prepared as prepared

    calls = []
    for fn in ("head_parts", "jvp_parts", "ghost_parts", "vmap_parts", "loop_parts", "jacobian_parts"):
        original = getattr(prepared, fn)
        monkeypatch.setattr(prepared, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
    model, reference, x, targets = towers
    for method, expected in (("proj", ["jvp_parts"]), ("cos", ["jacobian_parts"])):
        calls.clear()
        mimic_scores(model, reference, x, targets, params="all", method=method, loss=SymmetricInfoNCE())
        assert calls == expected


def test_coupled_scorer_returns_losses_and_outputs_of_its_pass(towers):
    model, reference, x, targets = towers
    scores = PreparedScorer(model, reference, params=IMAGE, method="cos", loss=SymmetricInfoNCE())(x, targets)
    u, t = model.eval()(x)
    torch.testing.assert_close(scores.outputs[0], u.detach())
    torch.testing.assert_close(scores.outputs[1], t.detach())
    torch.testing.assert_close(scores.loss, SymmetricInfoNCE()((u, t), targets).detach())
    torch.testing.assert_close(scores.cos * scores.grad_norm, scores.proj)


@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("params", ["head", "all"])
def test_per_sample_custom_losses_match_brute_force(params, method):
    torch.manual_seed(0)
    model = MLP(12, 5, hidden=(16, 8)).double()
    reference = perturbed(model, scale=0.2)
    x, y = torch.randn(5, 12, dtype=torch.float64), torch.tensor([0, 4, 2, 2, 1])
    names = ["head.weight", "head.bias"] if params == "head" else [n for n, _ in model.named_parameters()]
    for loss in (SquaredError(), smoothed_ce):
        expected = brute_force(model, reference, x, y, names, loss, method)
        paths = ("auto", "jvp", "vmap", "loop") + (("head",) if params == "head" and loss is not smoothed_ce else ())
        for path in paths:
            got = mimic_scores(model, reference, x, y, params=params, method=method, path=path, loss=loss)
            assert_close(
                got, expected, what=f"{getattr(loss, '__name__', type(loss).__name__)}/{params}/{method}/{path}"
            )


def test_auto_uses_the_head_closed_form_only_when_the_loss_gives_one(monkeypatch):
    import mimic_explorer.scoring.prepared as prepared

    calls = []
    for fn in ("head_parts", "jvp_parts", "jacobian_parts"):
        original = getattr(prepared, fn)
        monkeypatch.setattr(prepared, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
    torch.manual_seed(0)
    model = MLP(12, 5).double()
    reference = perturbed(model)
    x, y = torch.randn(4, 12, dtype=torch.float64), torch.tensor([0, 4, 2, 1])
    for loss, expected in ((SquaredError(), "head_parts"), (smoothed_ce, "jvp_parts")):
        calls.clear()
        mimic_scores(model, reference, x, y, loss=loss)
        assert calls == [expected]


def test_bad_losses_are_named():
    torch.manual_seed(0)
    model = MLP(12, 5).double()
    reference = perturbed(model)
    x, y = torch.randn(4, 12, dtype=torch.float64), torch.tensor([0, 4, 2, 1])
    with pytest.raises(ValueError, match=r"one value per sample, shape \(B,\) = \(4,\); got \(\)"):
        mimic_scores(model, reference, x, y, loss=lambda out, t: F.cross_entropy(out, t))
    with pytest.raises(ValueError, match="path='head' needs a per-sample loss with a closed-form output gradient"):
        mimic_scores(model, reference, x, y, path="head", loss=smoothed_ce)
    with pytest.raises(ValueError, match="couples the batch"):
        mimic_scores(model, reference, x, y, path="head", loss=SymmetricInfoNCE())
    with pytest.raises(TypeError, match="loss must be a PerSampleLoss or a callable"):
        mimic_scores(model, reference, x, y, loss="cross_entropy")
    # the default cross-entropy keeps its own checks on targets
    with pytest.raises(ValueError, match="integer class indices"):
        mimic_scores(model, reference, x, y.double())
