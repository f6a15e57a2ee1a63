"""Scoring leaves model and reference exactly as they were: modes (per submodule), weights, buffers,
``.grad``, ``requires_grad`` — and the global switches it flips (grad mode, MHA fast path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimic_explorer import mimic_scores
from tests.scoring_models import build


def _snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "ids": {n: id(p) for n, p in model.named_parameters()},
    }


def _assert_same(before, after):
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert before["ids"] == after["ids"]
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    for n in before["grad"]:
        b, a = before["grad"][n], after["grad"][n]
        assert (b is None) == (a is None), n
        if b is not None:
            assert torch.equal(b, a), n


@pytest.mark.parametrize("name", ["cnn_bn", "vit"])
def test_model_and_reference_untouched_by_every_path(name):
    model, reference, x, y, subset = build(name, batch=3)
    model.train()
    next(iter(model.children())).eval()  # a mixed-mode model must keep its mix
    F.cross_entropy(model(x), y).backward()  # existing .grad must survive
    params = list(model.parameters())
    params[0].requires_grad_(False)
    params[0].grad = None
    reference.eval()
    before, before_ref = _snapshot(model), _snapshot(reference)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    for params_choice, method in (("head", "proj"), ("all", "cos"), (subset, "cos")):
        for path in ("auto", "jvp", "vmap", "loop"):
            mimic_scores(model, reference, x, y, params=params_choice, method=method, path=path)
            _assert_same(before, _snapshot(model))
            _assert_same(before_ref, _snapshot(reference))
    assert torch.is_grad_enabled()
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_state_restored_after_an_error():
    model, reference, x, y, _ = build("cnn_bn", batch=3)
    model.train()
    before = _snapshot(model)
    bad = x.clone()
    bad[1] = float("nan")
    for path in ("auto", "jvp", "vmap", "loop"):
        with pytest.raises(ValueError):
            mimic_scores(model, reference, bad, y, params="all", path=path)
        _assert_same(before, _snapshot(model))
    assert torch.is_grad_enabled()


def test_scoring_under_no_grad_and_inference_outside():
    model, reference, x, y, _ = build("mlp", batch=3)
    expected = mimic_scores(model, reference, x, y, params="all", method="cos")
    with torch.no_grad():
        got = mimic_scores(model, reference, x, y, params="all", method="cos")
        head = mimic_scores(model, reference, x, y, params="head", method="cos")
        assert not torch.is_grad_enabled()
    assert torch.equal(got, expected)
    assert torch.equal(head, mimic_scores(model, reference, x, y, method="cos"))


def test_scoring_inside_inference_mode():
    model, reference, x, y, _ = build("cnn_bn", batch=3)
    for params in ("head", "all"):
        expected = mimic_scores(model, reference, x, y, params=params, method="cos")
        for path in ("auto", "vmap", "loop"):
            with torch.inference_mode():
                xi, yi = x.clone(), y.clone()
                got = mimic_scores(model, reference, xi, yi, params=params, method="cos", path=path)
            assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12), (params, path)
