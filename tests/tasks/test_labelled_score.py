"""``score --method cos`` (head parameters): one forward pass of the model per batch gives proj, cos,
the loss and the prediction — the scorer is prepared once, not per batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mimic_explorer import open_run
from mimic_explorer.commands import score as score_command
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.tasks import labelled as labelled_task


@pytest.mark.slow
def test_score_cos_makes_one_forward_per_batch(digits_reference, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    forwards = [0]
    build_models = labelled_task.build_models

    def counted(*args, **kwargs):
        models = build_models(*args, **kwargs)
        models.model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
        return models

    monkeypatch.setattr(labelled_task, "build_models", counted)
    options = ScoreOptions(
        "digits",
        "mlp",
        str(tmp_path / "s"),
        model=str(digits_reference),
        reference=str(digits_reference),
        reference_noise=0.05,
        score_method="cos",
        batch_size=256,
        chunk_size=1000,
        device="cpu",
        quiet=True,
    )
    score_command.run_score(options, log=lambda text: None)
    scores = open_run(tmp_path / "s").scores
    batches = math.ceil(1000 / 256) + math.ceil(797 / 256)  # two chunks of the 1,797 digits
    assert forwards[0] == batches
    assert len(scores) == 1797 and scores["sample_id"].is_unique
    assert (scores["proj"] != 0).all() and (scores["cos"] != 0).all()  # a perturbed reference: real scores
    assert np.isfinite(scores["cos"]).all() and scores["cos"].abs().max() <= 1 + 1e-6
    assert np.isfinite(scores["loss"]).all() and scores["pred"].between(0, 9).all()
