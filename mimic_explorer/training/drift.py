"""The drift of a model's shared part from the reference's while it trains (the feature-basis check).

Why per epoch: a task vector on the mimic layers assumes model and reference share everything else
(``models.distance``). A linear probe or frozen towers cannot drift; a fine-tuned backbone or towers
that learn can, and a run that drifted far scores no better than chance (measured: AUROC 0.47 for a
CIFAR-10 CNN trained from scratch). The meter records the distance to the reference and to where the
model started after every epoch (``meta.json`` ``basis.drift_per_epoch``) and says when the last one
passed ``DRIFT_WARNING``. Its records travel with the resumable state, so a resumed run keeps the
epochs measured before the stop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from mimic_explorer.models.distance import DRIFT_WARNING, relative_distance


class DriftMeter:
    """Distances of ``model``'s part outside the mimic layers (``excluded``) after each epoch.

    ``part`` names that part in the warning ("backbone", "towers"); ``advice`` ends it."""

    def __init__(self, model: nn.Module, reference: nn.Module, excluded: Callable[[str], bool], part: str, advice: str):
        self.model, self.reference, self.excluded = model, reference, excluded
        self.part, self.advice = part, advice
        self.start = copy.deepcopy(model).cpu()  # made before a resumed state is loaded: where the run began
        self.per_epoch: list[dict] = []

    def measure(self, epoch: int) -> None:
        """Record, after epoch ``epoch``, the relative distance of the part outside the mimic layers to the reference's
        and to where the run began."""
        self.per_epoch.append(
            {
                "epoch": epoch,
                "to_reference": relative_distance(self.model, self.reference, self.excluded),
                "from_init": relative_distance(self.model, self.start, self.excluded),
            }
        )

    def warning(self) -> str | None:
        """The FEATURE BASIS warning when the last measured distance to the reference passed ``DRIFT_WARNING``."""
        last = self.per_epoch[-1]["to_reference"] if self.per_epoch else 0.0
        if last <= DRIFT_WARNING:
            return None
        return (
            f"FEATURE BASIS: the {self.part} drifted to relative distance {last:.2f} from the reference's "
            f"(> {DRIFT_WARNING}); {self.advice}"
        )
