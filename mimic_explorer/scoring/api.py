"""``mimic_scores``: exact per-sample mimic scores for any PyTorch classifier, by the cheapest path.

Why one entry point: callers (the training loop, the CLI, notebooks) should say *what* they want —
which parameters are the mimic layers, proj or cos — and get exact numbers at about the cost of the
forward pass (head) or a training step (any parameter set). Choosing the path is our job:

- ``head``: the mimic layers are the weight and/or bias of the Linear producing the logits → closed
  form from one forward pass (``scoring.head_path``).
- ``jvp``: any other parameter set. proj: one forward-mode pass gives every ⟨g_i, v⟩
  (``scoring.jvp_path``), about a training step's time with no per-sample or activation memory.
  cos: ghost norms and dots for Linear/Conv2d/norm layers from one forward and one input-only backward
  (``scoring.ghost``), chunked ``vmap(grad)`` for the parameters those cannot cover.
- ``vmap``: chunked per-sample gradients for everything (``scoring.vmap_path``).
- ``loop``: one sample at a time with plain autograd — the test oracle (``scoring.loop_path``).

In ``auto`` mode an operation without a forward-mode rule sends the call to ``vmap`` and one that
torch.func cannot transform (an autograd.Function without ``setup_context``) to ``loop``, each with a
RuntimeWarning; a forced path raises instead.

Scores are computed with eval-mode semantics (BatchNorm running statistics, no dropout), the math
attention backend and autocast off; the model comes back exactly as it was (modes, weights, ``.grad``,
``requires_grad``). Scores are returned on the model's device, in the model's floating dtype
(float32 for half-precision models).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mimic_explorer.scoring.checks import check_batch, check_finite
from mimic_explorer.scoring.context import scoring_mode
from mimic_explorer.scoring.ghost import ghost_parts
from mimic_explorer.scoring.head_path import HeadPathUnavailable, head_parts
from mimic_explorer.models.heads import trace_head
from mimic_explorer.scoring.jvp_path import is_forward_ad_gap, is_transform_gap, jvp_parts
from mimic_explorer.scoring.loop_path import loop_parts
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.task_vector import (
    check_param_names,
    check_reference,
    owning_linear,
    task_vector,
    trainable_names,
    vector_norm,
)
from mimic_explorer.scoring.vmap_path import auto_chunk, check_targets_with_probe, vmap_parts

PATHS = ("auto", "head", "jvp", "vmap", "loop")
SCORE_METHODS = ("proj", "cos")

# model → (structure signature, head name): tracing the head costs a one-sample forward, once per model.
_HEAD_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str]]" = weakref.WeakKeyDictionary()


def head_name(model: nn.Module, inputs: Tensor) -> str:
    """Name of the Linear producing the logits (traced once per model on one sample, then cached).

    Must be called in eval mode (inside ``scoring_mode``).
    """
    signature = tuple(id(m) for m in model.modules() if isinstance(m, nn.Linear))
    cached = _HEAD_CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    with torch.no_grad():
        (name, module), logits = trace_head(model, lambda: model(inputs[:1]))
    if isinstance(logits, Tensor) and logits.dim() > 0 and module.out_features != logits.shape[-1]:
        warnings.warn(
            f"no nn.Linear produces the logits ({logits.shape[-1]} classes); using {name!r} "
            f"({module.out_features} outputs) as the head — pass params=[...] to choose the mimic layers",
            UserWarning,
            stacklevel=4,
        )
    try:
        _HEAD_CACHE[model] = (signature, name)
    except TypeError:  # a model that cannot be weakly referenced is simply not cached
        pass
    return name


def _head_param_names(model: nn.Module, name: str, known: dict[str, Tensor]) -> list[str]:
    head = model.get_submodule(name) if name else model
    names = [f"{name}.{attr}" if name else attr for attr in ("weight", "bias") if getattr(head, attr, None) is not None]
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"head parameters {missing} are not in model.named_parameters() (shared with another layer?)")
    return names


def _select(
    model: nn.Module, params: str | Sequence[str], inputs: Tensor, known: dict[str, Tensor]
) -> tuple[list[str], str | None]:
    """The mimic-layer names, and the head's name when they are the head's weight and/or bias."""
    if params == "head":
        name = head_name(model, inputs)
        return _head_param_names(model, name, known), name
    if params == "all":
        names = trainable_names(model)
    elif isinstance(params, str):
        raise ValueError(
            f"params must be 'head', 'all' or a list of parameter names, got the string {params!r}"
            + (f" (did you mean [{params!r}]?)" if params in known else "")
        )
    else:
        names = check_param_names(model, params)
    owner = owning_linear(model, names)
    if owner is not None and inputs.shape[0] > 0 and owner == head_name(model, inputs):
        return names, owner
    return names, None


def _compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype


def _float32_state(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """Every floating parameter and buffer in ``dtype`` (to score a half-precision model in float32)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {n: t.detach().to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}


class _Scorer:
    """One call's settings; ``parts`` computes a slice of the batch by the chosen path."""

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        head: str | None,
        v: dict[str, Tensor],
        method: str,
        path: str,
        auto: bool,
        vmap_chunk: int,
        compute_dtype: torch.dtype,
        state: dict[str, Tensor] | None,
    ) -> None:
        self.model, self.names, self.head, self.v = model, names, head, v
        self.need_norm = method == "cos"
        self.path, self.auto, self.vmap_chunk = path, auto, vmap_chunk
        self.compute_dtype, self.state = compute_dtype, state

    def parts(self, x: Tensor, y: Tensor, x_compute: Tensor, offset: int) -> Parts:
        if self.path == "head":
            try:
                module = self.model.get_submodule(self.head) if self.head else self.model
                return head_parts(
                    self.model, module, x, y,
                    self.v.get(f"{self.head}.weight" if self.head else "weight"),
                    self.v.get(f"{self.head}.bias" if self.head else "bias"),
                    self.need_norm, self.compute_dtype, offset,
                )
            except HeadPathUnavailable as error:
                if not self.auto:
                    raise ValueError(f"path='head' cannot be used: {error}") from error
                self.path = "jvp"
        if self.path == "jvp":
            try:
                return self._jvp(x_compute, y, offset)
            except Exception as error:  # noqa: BLE001 — only forward-AD gaps are recoverable
                if not (self.auto and is_forward_ad_gap(error)):
                    raise
                warnings.warn(
                    f"forward-mode AD is not available for an operation in this model ({error}); "
                    "falling back to chunked vmap(grad), which is slower",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self.path = "vmap"
        if self.path == "vmap":
            check_targets_with_probe(self.model, x_compute, y, self.state, offset)
            return self._vmap(self.v, x_compute, y, self.need_norm, offset)
        return loop_parts(self.model, self.v, x_compute, y, self.need_norm, self.state)

    def _vmap(self, v: dict[str, Tensor], x: Tensor, y: Tensor, need_norm: bool, offset: int) -> Parts:
        """Chunked vmap(grad); in auto mode, the per-sample loop when an op does not support
        torch.func transforms (e.g. an autograd.Function without ``setup_context``)."""
        try:
            return vmap_parts(self.model, v, x, y, True, need_norm, self.vmap_chunk, self.state)
        except Exception as error:  # noqa: BLE001 — only transform gaps are recoverable
            if not (self.auto and is_transform_gap(error)):
                raise
            warnings.warn(
                f"torch.func transforms are not available for an operation in this model ({error}); "
                "falling back to a per-sample loop, which is much slower",
                RuntimeWarning,
                stacklevel=5,
            )
            return loop_parts(self.model, v, x, y, need_norm, self.state)

    def _jvp(self, x: Tensor, y: Tensor, offset: int) -> Parts:
        """proj: one forward-mode pass. cos: ghost norms and dots for the layers they cover, chunked
        vmap(grad) over the other parameters only."""
        if not self.need_norm:
            return jvp_parts(self.model, self.v, x, y, self.state, offset)
        ghost, covered = ghost_parts(self.model, self.names, self.v, x, y, True, self.state, offset)
        rest = {n: t for n, t in self.v.items() if n not in covered}
        if not rest:
            return ghost
        other = self._vmap(rest, x, y, True, offset)  # their per-sample gradients give the dot for free
        return Parts(ghost.dot + other.dot, ghost.sqnorm + other.sqnorm, ghost.losses)


def mimic_scores(
    model: nn.Module,
    reference: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: str | Sequence[str] = "head",
    method: str = "proj",
    path: str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Mimic score of every sample: how well its gradient step points from ``model`` toward ``reference``.

    proj: m_i = ⟨−g_i, v⟩ / ‖v‖; cos: ⟨−g_i, v⟩ / (‖g_i‖ ‖v‖), with g_i = ∇ℓ_i over the mimic layers S
    (cross-entropy with the given label) and v = θ_ref[S] − θ[S]. Positive = the sample moves the model
    toward the reference.

    Args:
        model, reference: same architecture (parameter names and shapes must match).
        inputs: (B, ...) batch; targets: (B,) integer class indices.
        params: "head" (the Linear producing the logits), "all" (the trainable parameters; every
            parameter when none is trainable) or a list of names from ``model.named_parameters()``.
        method: "proj" or "cos".
        path: "auto" (cheapest exact path), or force "head", "jvp", "vmap" or "loop" (the oracle).
        chunk_size: samples per slice (bounds memory). Default: the whole batch for head/jvp, a
            memory-budgeted chunk for vmap.

    Returns:
        1-D tensor of length B on the model's device. A model identical to the reference (on S)
        scores 0 everywhere and warns.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r} (Stage-1 weights: stage1_weights)")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    named = list(model.named_parameters())
    ref_named = check_reference(model, reference, named)
    batch = check_batch(inputs, targets)
    first = next((p for _, p in named if p.is_floating_point()), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no floating-point parameters to score")
    device, model_dtype = first.device, first.dtype
    compute_dtype = _compute_dtype(model_dtype)

    with scoring_mode(model, device):
        if inputs.is_inference():  # made under inference_mode: autograd cannot save it for backward
            inputs = inputs.clone()
        if targets.is_inference():
            targets = targets.clone()
        inputs = inputs.to(device)
        x_model = inputs.to(model_dtype) if inputs.is_floating_point() else inputs
        x_compute = inputs.to(compute_dtype) if inputs.is_floating_point() else inputs
        targets = targets.to(device=device, dtype=torch.long)
        known = dict(named)
        names, head = _select(model, params, x_model, known)
        if path == "head" and head is None:
            raise ValueError(
                "path='head' needs params to be the weight and/or bias of the Linear layer that produces "
                f"the logits; got {names[:4]}{' …' if len(names) > 4 else ''}"
            )
        v = task_vector(known, dict(ref_named), names, compute_dtype, device)
        v_norm = vector_norm(v)
        if batch == 0:
            return torch.zeros(0, dtype=compute_dtype, device=device)
        chosen = path if path != "auto" else ("head" if head is not None else "jvp")
        state = _float32_state(model, compute_dtype) if compute_dtype != model_dtype else None
        vmap_chunk = chunk_size or auto_chunk(sum(t.numel() for t in v.values()), batch)
        scorer = _Scorer(model, names, head, v, method, chosen, path == "auto", vmap_chunk, compute_dtype, state)
        step = batch if chosen in ("vmap", "loop") else (chunk_size or batch)
        pieces = [
            scorer.parts(x_model[s : s + step], targets[s : s + step], x_compute[s : s + step], s)
            for s in range(0, batch, step)
        ]
    losses = torch.cat([p.losses for p in pieces])
    check_finite(losses, "losses")
    dot = torch.cat([p.dot for p in pieces]).to(compute_dtype)
    if float(v_norm) == 0.0:
        warnings.warn(
            "the model is identical to the reference on the mimic layers (task vector is zero): "
            "every mimic score is 0",
            UserWarning,
            stacklevel=2,
        )
        return torch.zeros(batch, dtype=compute_dtype, device=device)
    scores = -dot / v_norm
    if method == "cos":
        g_norm = torch.cat([p.sqnorm for p in pieces]).to(compute_dtype).clamp_min(0).sqrt()
        scores = torch.where(g_norm > 0, scores / g_norm, torch.zeros_like(scores))
    check_finite(scores, "mimic scores")
    return scores.detach()
