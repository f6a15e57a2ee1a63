"""How far two models' shared part lies apart: the feature-basis check of every run.

Why it matters: a task vector on the mimic layers only means something when model and reference
share a feature basis (DESIGN: a linear probe on one frozen backbone, or both fine-tuned from one
checkpoint with little drift). Runs measure the distance of everything *outside* the mimic layers —
a classifier's backbone, a dual encoder's towers — before training and after every epoch, and warn
past ``DRIFT_WARNING``. One function for both, in float64, so a classifier's and a dual encoder's
numbers mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

#: relative distance between model and reference outside the mimic layers above which scores are suspect
DRIFT_WARNING = 0.5


def relative_distance(model: nn.Module, reference: nn.Module, excluded: Callable[[str], bool]) -> float:
    """‖θ − θ_ref‖ / ‖θ_ref‖ over every floating tensor of the reference's state dict that
    ``excluded(name)`` does not exclude (0 for a shared frozen part; 0 when nothing is left)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    keep = [k for k, v in theirs.items() if v.is_floating_point() and not excluded(k)]
    num = sum(float(((ours[k].double().cpu() - theirs[k].double().cpu()) ** 2).sum()) for k in keep if k in ours)
    den = sum(float((theirs[k].double() ** 2).sum()) for k in keep)
    return (num / den) ** 0.5 if den > 0 else 0.0


def outside_head(head_name: str) -> Callable[[str], bool]:
    """``excluded`` for a classifier: the head's own tensors."""
    prefix = head_name + "."
    return lambda name: name.startswith(prefix)


def outside_params(names: list[str]) -> Callable[[str], bool]:
    """``excluded`` for named mimic parameters (a dual encoder's projection)."""
    chosen = set(names)
    return lambda name: name in chosen
