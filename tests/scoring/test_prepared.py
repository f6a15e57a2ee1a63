"""``PreparedScorer``: prepared once per (model, reference), one forward per batch on the head path
(cos, loss and outputs included), a cheap refresh for moving weights, and the same projection — and
the same zero-task-vector behaviour — in training, end-of-run signals and ``mimic_scores``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.models.small import MLP
from mimic_explorer.scoring import PreparedScorer
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.loop import TrainConfig, clone_model, train
from mimic_explorer.training.signals import evaluate_signals
from tests.scoring_models import assert_close, build, oracle, perturbed


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _identical_warnings(caught) -> int:
    return sum("identical to the reference" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_head_path_gives_proj_cos_loss_and_outputs_from_one_forward(name):
    model, reference, x, y, _ = build(name, batch=5)
    scorer = PreparedScorer(model, reference, params="head", method="cos", head_name="head")
    calls = _count_forwards(model)
    scores = scorer(x, y)
    assert calls[0] == 1
    names = ["head.weight", "head.bias"]
    assert_close(scores.proj, oracle(model, reference, x, y, names, "proj"))
    assert_close(scores.cos, oracle(model, reference, x, y, names, "cos"))
    with torch.no_grad():
        logits = model.eval()(x)
    torch.testing.assert_close(scores.outputs, logits)
    torch.testing.assert_close(scores.loss, F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(scores.grad_norm * scores.cos, scores.proj)


def test_reference_checked_and_task_vector_made_once_for_many_batches(monkeypatch):
    import mimic_explorer.scoring.prepared as prepared

    counts = {"check_reference": 0, "task_vector": 0, "traced_head_name": 0}
    for fn in counts:
        original = getattr(prepared, fn)
        monkeypatch.setattr(
            prepared, fn, lambda *a, _f=original, _n=fn, **k: counts.__setitem__(_n, counts[_n] + 1) or _f(*a, **k)
        )
    model, reference, x, y, _ = build("mlp", batch=6)
    for params, traced in (("head", 1), ("all", 0), (["head.bias"], 1)):  # "all" is not one Linear: nothing to trace
        counts.update(dict.fromkeys(counts, 0))
        scorer = PreparedScorer(model, reference, params=params, method="cos")
        for start in range(0, 6, 2):
            scorer(x[start : start + 2], y[start : start + 2])
        assert counts == {"check_reference": 1, "task_vector": 1, "traced_head_name": traced}, (params, counts)


def test_refresh_follows_the_weights():
    model, reference, x, y, _ = build("mlp")
    scorer = PreparedScorer(model, reference, params="head", method="cos", head_name="head")
    before = scorer(x, y)
    with torch.no_grad():
        model.head.weight.add_(0.1)
    stale = scorer(x, y)
    scorer.refresh()
    fresh = scorer(x, y)
    expected = mimic_scores(model, reference, x, y, method="cos")
    torch.testing.assert_close(fresh.cos, expected)
    assert not torch.allclose(stale.cos, expected) and not torch.allclose(before.cos, expected)


def test_project_head_equals_a_scored_batch_of_features():
    """The training steps' entry point (head input and output gradient in hand) and a scored batch of
    a probe agree: one projection serves both."""
    torch.manual_seed(0)
    head, ref_head = nn.Linear(7, 4).double(), nn.Linear(7, 4).double()
    probe, reference = LinearProbe(head), LinearProbe(ref_head)
    h, y = torch.randn(9, 7, dtype=torch.float64), torch.randint(0, 4, (9,))
    scorer = PreparedScorer(probe, reference, params="head", method="cos", head_name=LinearProbe.HEAD)
    scores = scorer(h, y)
    delta = torch.softmax(head(h), -1).detach() - F.one_hot(y, 4).double()
    projection = scorer.project_head(h, delta)
    torch.testing.assert_close(projection.proj, scores.proj)
    torch.testing.assert_close(projection.cos, scores.cos)


def test_zero_task_vector_is_zero_and_warned_once_everywhere():
    torch.manual_seed(0)
    model = MLP(12, 4, (16,)).double()
    twin = clone_model(model)
    x, y = torch.randn(40, 12, dtype=torch.float64), torch.randint(0, 4, (40,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = PreparedScorer(model, twin, params="head", method="cos")
        for start in range(0, 40, 8):
            scores = scorer(x[start : start + 8], y[start : start + 8])
            assert torch.equal(scores.proj, torch.zeros(8, dtype=torch.float64))
            assert torch.equal(scores.cos, torch.zeros(8, dtype=torch.float64))
    assert _identical_warnings(caught) == 1
    # training that never moves (lr 0) records proj = cos = 0 at every step, with one warning
    config = TrainConfig(epochs=2, batch_size=8, lr=0.0, weight_decay=0.0, optimizer="sgd")
    probe = LinearProbe(nn.Linear(12, 4).double())
    for start, same in ((model, twin), (probe, clone_model(probe))):  # the autograd step and the probe step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(clone_model(start), TensorBatches(x, y, 8, 0), config, reference=same)
        assert _identical_warnings(caught) == 1
        for record in result.records:
            assert np.array_equal(record.proj, np.zeros(40)) and np.array_equal(record.cos, np.zeros(40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signals = evaluate_signals(model, twin, x, y, batch_size=16)
    assert _identical_warnings(caught) == 1
    assert np.array_equal(signals["final_proj"], np.zeros(40))


def test_end_of_run_signals_come_from_the_scorer():
    torch.manual_seed(0)
    model = MLP(12, 4, (16,)).double()
    reference = perturbed(model, scale=0.3)
    x, y = torch.randn(30, 12, dtype=torch.float64), torch.randint(0, 4, (30,))
    calls = _count_forwards(model)
    signals = evaluate_signals(model, reference, x, y, batch_size=10)
    assert calls[0] == 1 + 3  # the head traced on one sample, then one pass per batch
    names = ["head.weight", "head.bias"]
    np.testing.assert_allclose(signals["final_proj"], oracle(model, reference, x, y, names, "proj").numpy(), rtol=1e-9)
    grand = oracle(model, reference, x, y, names, "proj") / oracle(model, reference, x, y, names, "cos")
    np.testing.assert_allclose(signals["grand"], grand.numpy(), rtol=1e-9)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(signals["model_loss"], F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-12)
    np.testing.assert_array_equal(signals["model_pred"], logits.argmax(-1).numpy())


class HeadFirst(nn.Module):
    """The head registered before the backbone and an unused auxiliary Linear registered last: the
    last ``nn.Linear`` is not the head."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(8, 4)
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.aux = nn.Linear(8, 4)

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("head_name", [None, "classifier"])
def test_training_reweights_the_traced_head_not_the_last_linear(head_name):
    torch.manual_seed(0)
    model = HeadFirst().double()
    reference = perturbed(model, scale=0.3)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 4, (16,))
    names = ["classifier.weight", "classifier.bias"]
    expected_proj = oracle(model, reference, x, y, names, "proj")

    class OneBatch(TensorBatches):
        def epoch(self, epoch):
            yield torch.arange(len(y)), x, y

    config = TrainConfig(epochs=1, batch_size=16, lr=0.0, weight_decay=0.0, optimizer="sgd", method="proj")
    result = train(model, OneBatch(x, y, 16, 0), config, reference=reference, head_name=head_name)
    np.testing.assert_allclose(result.records[0].proj, expected_proj.numpy(), rtol=1e-9)
    assert model.aux.weight.grad is None  # the auxiliary layer is not treated as the head
