"""Every scoring path equals a brute-force per-sample autograd loop to 1e-5 relative (float64).

Models: an MLP, a CNN with BatchNorm (left in train mode: scoring must use running statistics),
torchvision resnet18 on a small input, a tiny torchvision VisionTransformer. Parameter sets: the head,
all parameters, and an explicit subset that mixes layer types. Methods: proj and cos.
"""

from __future__ import annotations

import pytest
import torch

from mimic_explorer import mimic_scores
from tests.scoring_models import assert_close, build, oracle, resolve

HEADS = {"mlp": "head", "cnn_bn": "head", "resnet18": "fc", "vit": "heads.head"}
# resnet18 takes seconds per case: it runs in the full suite, not the quick loop
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n == "resnet18" else n for n in HEADS]
PARAMS = ["head", "all", "subset"]


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    name = request.param
    model, reference, x, y, subset = build(name, batch=3 if name == "resnet18" else 4)
    model.train()  # scoring must switch to eval semantics (BatchNorm running stats) by itself
    return name, model, reference, x, y, subset


@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("params", PARAMS)
def test_every_path_matches_brute_force(case, params, method):
    name, model, reference, x, y, subset = case
    chosen = subset if params == "subset" else params
    names = resolve(model, chosen, HEADS[name])
    expected = oracle(model, reference, x, y, names, method)
    # auto picks the head path for "head" and jvp otherwise, so each path runs once per case
    paths = ["auto", "vmap", "loop"] + (["jvp"] if params == "head" else [])
    for path in paths:
        got = mimic_scores(model, reference, x, y, params=chosen, method=method, path=path)
        assert got.dtype == torch.float64
        assert_close(got, expected, what=f"{name}/{params}/{method}/{path}")
    assert model.training  # left as found


@pytest.mark.parametrize("method", ["proj", "cos"])
def test_chunked_equals_whole_batch(method):
    model, reference, x, y, _ = build("cnn_bn", batch=5)
    for params in ("head", "all"):
        whole = mimic_scores(model, reference, x, y, params=params, method=method)
        for path in ("auto", "vmap"):
            chunked = mimic_scores(model, reference, x, y, params=params, method=method, path=path, chunk_size=2)
            assert_close(chunked, whole, what=f"{params}/{path}")


def test_head_weight_only_and_bias_only():
    model, reference, x, y, _ = build("mlp")
    for names in (["head.weight"], ["head.bias"]):
        for method in ("proj", "cos"):
            expected = oracle(model, reference, x, y, names, method)
            for path in ("auto", "head", "jvp"):
                got = mimic_scores(model, reference, x, y, params=names, method=method, path=path)
                assert_close(got, expected, what=f"{names}/{method}/{path}")


def test_all_with_frozen_backbone_is_the_linear_probe_head():
    """A linear probe: only the head is trainable, so 'all' is the head (and uses the closed form)."""
    model, reference, x, y, _ = build("mlp")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    expected = oracle(model, reference, x, y, ["head.weight", "head.bias"], "proj")
    assert_close(mimic_scores(model, reference, x, y, params="all"), expected)
    assert_close(mimic_scores(model, reference, x, y, params="all", path="head"), expected)


def test_auto_dispatches_to_the_cheapest_path(monkeypatch):
    """auto = head closed form for head parameters, forward mode (+ ghost norms for cos) otherwise."""
    import mimic_explorer.scoring.prepared as api

    calls = []
    for fn in ("head_parts", "jvp_parts", "ghost_parts", "vmap_parts", "loop_parts"):
        original = getattr(api, fn)
        monkeypatch.setattr(api, fn, lambda *a, _f=original, _n=fn, **k: calls.append(_n) or _f(*a, **k))
    model, reference, x, y, _ = build("mlp")
    expected = {
        ("head", "proj"): ["head_parts"],
        ("head", "cos"): ["head_parts"],
        ("all", "proj"): ["jvp_parts"],
        ("all", "cos"): ["ghost_parts"],
    }
    for (params, method), fns in expected.items():
        calls.clear()
        mimic_scores(model, reference, x, y, params=params, method=method)
        assert calls == fns, (params, method, calls)
