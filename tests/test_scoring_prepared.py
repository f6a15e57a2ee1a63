"""``PreparedScorer``: prepared once per (model, reference), one forward per batch on the head path
(cos, loss and outputs included), a cheap refresh for moving weights, and the same projection — and
the same zero-task-vector behaviour — in training, end-of-run signals and ``mimic_scores``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimic_explorer import mimic_scores
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.scoring import PreparedScorer
from tests.scoring_models import assert_close, build, oracle


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
        monkeypatch.setattr(prepared, fn, lambda *a, _f=original, _n=fn, **k: counts.__setitem__(_n, counts[_n] + 1) or _f(*a, **k))
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
