"""Which parameters are the mimic layers, and the task vector v = θ_ref[S] − θ[S] over them.

Why: every path needs the same three answers — is the reference the same architecture (otherwise the
difference of weights means nothing), which named parameters form S, and v with its norm — and they
must be answered once, with errors that name the offending parameter.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def check_reference(
    model: nn.Module, reference: nn.Module, ours: list[tuple[str, Tensor]] | None = None
) -> list[tuple[str, Tensor]]:
    """The reference must have the model's parameter names, in order, with the same shapes.

    Returns the reference's named parameters (``ours``: the model's, if already listed)."""
    ours = list(model.named_parameters()) if ours is None else ours
    theirs = list(reference.named_parameters())
    for i in range(max(len(ours), len(theirs))):
        if i >= len(ours):
            raise ValueError(f"reference has an extra parameter {theirs[i][0]!r} that the model lacks")
        if i >= len(theirs):
            raise ValueError(f"reference lacks the model's parameter {ours[i][0]!r}")
        (name, p), (ref_name, q) = ours[i], theirs[i]
        if name != ref_name:
            raise ValueError(
                f"reference parameters differ from the model's at position {i}: model has {name!r}, "
                f"reference has {ref_name!r}"
            )
        if p.shape != q.shape:
            raise ValueError(
                f"reference parameter {name!r} has shape {tuple(q.shape)}, the model's has {tuple(p.shape)}"
            )
    return theirs


def trainable_names(model: nn.Module) -> list[str]:
    """'all': the trainable parameters (requires_grad), as the paper's method uses; every parameter
    when none is trainable (a model frozen for scoring)."""
    named = list(model.named_parameters())
    trainable = [n for n, p in named if p.requires_grad]
    return trainable or [n for n, _ in named]


def check_param_names(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Validate an explicit list of parameter names; keep their order, drop duplicates."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(f"params must be 'head', 'all' or a list of parameter names, got {names!r}")
    known = dict(model.named_parameters())
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown[:3]:
            close = difflib.get_close_matches(str(n), list(known), n=1)
            if close:
                hints.append(f"{n!r} → did you mean {close[0]!r}?")
        raise ValueError(
            f"unknown parameter names in params: {unknown}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + " — use names from model.named_parameters()"
        )
    if not names:
        raise ValueError("params is an empty list; name at least one parameter")
    return list(dict.fromkeys(names))


def owning_linear(model: nn.Module, names: Sequence[str]) -> str | None:
    """The qualified name of the one nn.Linear all ``names`` belong to, or None."""
    owners = set()
    for n in names:
        module_name, _, attr = n.rpartition(".")
        if attr not in ("weight", "bias"):
            return None
        owners.add(module_name)
    if len(owners) != 1:
        return None
    (module_name,) = owners
    module = model.get_submodule(module_name) if module_name else model
    return module_name if isinstance(module, nn.Linear) else None


def task_vector(
    ours: dict[str, Tensor], theirs: dict[str, Tensor], names: Sequence[str], dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """v[n] = θ_ref[n] − θ[n] for the names in S, detached, in the compute dtype on the model's device.

    ``ours`` / ``theirs``: name → parameter of the model / the reference."""
    with torch.no_grad():
        v = {n: theirs[n].detach().to(device=device, dtype=dtype) - ours[n].detach().to(dtype=dtype) for n in names}
    if v and not bool(torch.isfinite(torch.stack([t.sum() for t in v.values()])).all()):
        for n, t in v.items():  # a NaN or inf anywhere makes its parameter's sum non-finite
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"the task vector is non-finite in parameter {n!r} (NaN or inf in model or reference)")
    return v


def vector_norm(v: dict[str, Tensor]) -> Tensor:
    """‖v‖ over all parameters in S (few ops: a training step recomputes it for the head's weight and bias)."""
    norms = [torch.linalg.vector_norm(t) for t in v.values()]
    if len(norms) == 1:
        return norms[0]
    if len(norms) == 2:
        return torch.hypot(norms[0], norms[1])
    return torch.linalg.vector_norm(torch.stack(norms))
