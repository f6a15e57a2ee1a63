"""Bad input: each a clear error naming the cause, nothing silently wrong."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.small import MLP
from tests.scoring_models import build, perturbed

ALL_PATHS = ("auto", "jvp", "vmap", "loop")


@pytest.fixture()
def mlp():
    model, reference, x, y, _ = build("mlp", batch=4)
    return model, reference, x, y


def test_reference_with_different_names(mlp):
    model, _, x, y = mlp
    other = MLP(12, 5, hidden=(16,)).double()
    with pytest.raises(ValueError, match=r"'backbone\.3\.weight'"):
        mimic_scores(model, other, x, y)


def test_reference_with_different_shapes(mlp):
    model, _, x, y = mlp
    other = MLP(12, 5, hidden=(16, 9)).double()
    with pytest.raises(ValueError, match=r"backbone\.3\.weight.*shape \(9, 16\).*\(8, 16\)"):
        mimic_scores(model, other, x, y)


def test_unknown_param_names(mlp):
    model, reference, x, y = mlp
    with pytest.raises(ValueError, match=r"unknown parameter names.*'head\.weigth'.*did you mean 'head\.weight'"):
        mimic_scores(model, reference, x, y, params=["head.weigth", "backbone.1.bias"])
    with pytest.raises(ValueError, match="empty"):
        mimic_scores(model, reference, x, y, params=[])
    with pytest.raises(ValueError, match=r"did you mean \['head\.bias'\]"):
        mimic_scores(model, reference, x, y, params="head.bias")


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("params", ["head", "all"])
def test_targets_out_of_range(mlp, path, params):
    model, reference, x, y = mlp
    y = y.clone()
    y[2] = 5
    with pytest.raises(ValueError, match=r"targets out of range for 5 classes.*values \[5\] at positions 2"):
        mimic_scores(model, reference, x, y, params=params, path=path)
    y[2], y[0] = 0, -1
    with pytest.raises(ValueError, match=r"out of range.*positions 0"):
        mimic_scores(model, reference, x, y, params=params, path=path)


def test_targets_wrong_shape_or_type(mlp):
    model, reference, x, y = mlp
    with pytest.raises(ValueError, match=r"1-D tensor of class indices.*\(4, 1\)"):
        mimic_scores(model, reference, x, y[:, None])
    with pytest.raises(ValueError, match="one-hot"):
        mimic_scores(model, reference, x, torch.nn.functional.one_hot(y, 5))
    with pytest.raises(ValueError, match="integer class indices.*float"):
        mimic_scores(model, reference, x, y.double())
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        mimic_scores(model, reference, x, y.tolist())


def test_inputs_and_targets_of_different_lengths(mlp):
    model, reference, x, y = mlp
    with pytest.raises(ValueError, match="different lengths: 4 inputs, 3 targets"):
        mimic_scores(model, reference, x, y[:3])


@pytest.mark.parametrize("path", ALL_PATHS)
def test_non_finite_losses_name_positions(mlp, path):
    model, reference, x, y = mlp
    x = x.clone()
    x[1, 0] = float("nan")
    x[3, 2] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite losses at sample positions 1, 3"):
        mimic_scores(model, reference, x, y, params="all", path=path)


def test_non_finite_scores_name_positions():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    reference = perturbed(model, scale=1e3)
    x = torch.randn(3, 3)
    x[2] = 1e37  # logits and loss stay finite in float32; ⟨g, v⟩ overflows
    with torch.no_grad():
        y = model(x).argmin(1)  # the wrong class, so the sample's gradient is not zero
    assert torch.isfinite(torch.nn.functional.cross_entropy(model(x), y, reduction="none")).all()
    for path in ("auto", "jvp", "loop"):
        with pytest.raises(ValueError, match=r"non-finite mimic scores at sample positions 2"):
            mimic_scores(model, reference, x, y, params="all", path=path)


def test_non_finite_reference_names_the_parameter(mlp):
    model, reference, x, y = mlp
    with torch.no_grad():
        reference.backbone[3].bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"task vector is non-finite in parameter 'backbone\.3\.bias'"):
        mimic_scores(model, reference, x, y, params="all")


def test_identical_model_scores_zero_and_warns_once(mlp):
    model, _, x, y = mlp
    twin = perturbed(model, 0.0)
    for method in ("proj", "cos"):
        for path in ("auto", "vmap"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                scores = mimic_scores(model, twin, x, y, params="all", method=method, path=path)
            assert torch.equal(scores, torch.zeros(4, dtype=torch.float64))
            identical = [w for w in caught if "identical to the reference" in str(w.message)]
            assert len(identical) == 1


def test_bad_method_path_and_chunk(mlp):
    model, reference, x, y = mlp
    with pytest.raises(ValueError, match="method must be one of"):
        mimic_scores(model, reference, x, y, method="normed_proj")
    with pytest.raises(ValueError, match="path must be one of"):
        mimic_scores(model, reference, x, y, path="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        mimic_scores(model, reference, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="path='head' needs params"):
        mimic_scores(model, reference, x, y, params="all", path="head")


def test_empty_batch(mlp):
    model, reference, x, y = mlp
    assert mimic_scores(model, reference, x[:0], y[:0]).shape == (0,)
