"""``training/drift.DriftMeter``: the distance of the weights outside the mimic layers from the
reference and from the start, per epoch, and the feature-basis warning past its threshold."""

from __future__ import annotations

import copy

import torch

from mimic_explorer.models.distance import outside_params
from mimic_explorer.models.dual import mimic_layer_params
from mimic_explorer.tasks.pairs import TOWERS_ADVICE
from mimic_explorer.training.drift import DriftMeter
from tests.pairs_helpers import tiny_dual


def test_tower_drift_is_measured_outside_the_mimic_layer_and_warns_past_the_threshold():
    model = tiny_dual(["a dog runs", "a cat sits"])
    reference = copy.deepcopy(model)
    drift = DriftMeter(model, reference, outside_params(mimic_layer_params(model, "text")), "towers", TOWERS_ADVICE)
    with torch.no_grad():
        model.text_projection.weight.mul_(5.0)  # the mimic layer: not drift
    drift.measure(0)
    assert drift.per_epoch[0]["to_reference"] == 0 and drift.warning() is None
    with torch.no_grad():
        for p in model.text_tower.parameters():
            p.mul_(3.0)
    drift.measure(1)
    assert (
        drift.per_epoch[1]["to_reference"] > 0.5
        and drift.per_epoch[1]["from_init"] == drift.per_epoch[1]["to_reference"]
    )
    assert "FEATURE BASIS: the towers drifted" in drift.warning()
