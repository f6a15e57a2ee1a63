"""``PreparedScorer``: everything about a (model, reference) pair resolved once, then one pass per batch.

Why: a pool is scored batch after batch against a reference that does not change, so which
parameters are the mimic layers, whether they are the head, the reference check and the task vector
are answered once (and a zero task vector is reported once), not per batch. Each batch then returns
proj, cos (when asked), the per-sample losses and the model's outputs from the same pass — one
forward of the model on the head path, cos included. A training loop, whose weights move, calls
``refresh()`` to recompute the task vector (for the head: two subtractions and a norm) and
``project_head`` on the head input and output gradient its own step already has.

Paths (``path="auto"`` picks the cheapest exact one):

- ``head``: the mimic layers are the weight and/or bias of the Linear producing the logits and the
  loss is per-sample with a closed-form output gradient → closed form from one forward pass
  (``scoring.head_path``).
- ``output``: the mimic layers are the weight and/or bias of one Linear whose output is one of the
  model's outputs and the loss couples the batch (a dual encoder's image or text projection under
  InfoNCE) → proj from one forward with the tangent H Vᵀ entering at the layer's output, cos from the
  Jacobian of the loss vector with respect to that output, the loss alone (``scoring.output_layer``).
  When the output turns out not to be one of the model's outputs, ``auto`` moves to ``jvp``.
- ``jvp``: proj by one forward-mode pass (``scoring.jvp_path``), exact for any loss, coupled or not.
  cos: ghost norms and dots for Linear/Conv2d/norm layers (``scoring.ghost``) plus chunked
  ``vmap(grad)`` for the parameters those cannot cover; for a loss that couples the batch, rows of the
  loss vector's Jacobian instead (``scoring.jacobian_path``), never ghost norms.
- ``vmap``: chunked per-sample gradients (``scoring.vmap_path``; the Jacobian rows for a coupled loss).
- ``loop``: one sample (one Jacobian row) at a time with plain autograd — the test oracle.

In ``auto`` mode a loss without a closed form moves the head path to ``jvp``, an operation without a
forward-mode rule sends the scorer to ``vmap`` and one that torch.func cannot transform to ``loop``,
each with a RuntimeWarning, once (the choice sticks for later batches); a forced path raises instead.

Scores are computed with eval-mode semantics (BatchNorm running statistics, no dropout), the math
attention backend and autocast off; the model comes back exactly as it was (modes, weights, ``.grad``,
``requires_grad``). Results are on the model's device, in the model's floating dtype (float32 for
half-precision models). Inputs are a tensor, or a tuple of batched tensors passed as the model's
positional arguments (a dual encoder's images and tokens); a loss that couples the batch is always
evaluated on the whole batch, never on slices. See docs/ARCHITECTURE.md for where the scorer sits.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mimic_explorer.models.heads import trace_head
from mimic_explorer.scoring.checks import check_batch, check_finite
from mimic_explorer.scoring.context import scoring_mode
from mimic_explorer.scoring.ghost import ghost_parts
from mimic_explorer.scoring.head_path import HeadPathUnavailable, head_parts
from mimic_explorer.scoring.jacobian_path import jacobian_parts
from mimic_explorer.scoring.jvp_path import is_forward_ad_gap, is_transform_gap, jvp_parts
from mimic_explorer.scoring.linear_head import linear_grad_geometry
from mimic_explorer.scoring.loop_path import loop_parts
from mimic_explorer.scoring.losses import CrossEntropyLoss, PerSampleLoss, as_per_sample_loss, has_closed_form
from mimic_explorer.scoring.output_layer import (
    OutputLayerUnavailable,
    PullBack,
    linear_output_geometry,
    output_parts,
    output_tangent,
)
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.projection import Projection, mimic_projection
from mimic_explorer.scoring.task_vector import (
    check_param_names,
    check_reference,
    owning_linear,
    task_vector,
    trainable_names,
    vector_norm,
)
from mimic_explorer.scoring.trees import as_args, cast, cat_rows, input_batch_size, moved, rows
from mimic_explorer.scoring.vmap_path import auto_chunk, check_targets_with_probe, vmap_parts

PATHS = ("auto", "head", "output", "jvp", "vmap", "loop")
SCORE_METHODS = ("proj", "cos")

# model → (structure signature, head name): tracing the head costs a one-sample forward, once per model.
_HEAD_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class BatchScores:
    """One batch's results, shape (B,) each, from one pass of the model (on the head path)."""

    proj: Tensor  # ⟨−g_i, v⟩ / ‖v‖
    cos: Tensor | None  # ⟨−g_i, v⟩ / (‖g_i‖ ‖v‖), when the scorer's method is "cos"
    loss: Tensor  # ℓ_i at the model's weights
    outputs: Any  # the model's outputs (logits: prediction = outputs.argmax(-1)), detached
    grad_norm: Tensor | None = None  # ‖g_i‖ over the mimic layers, when the method is "cos"


def traced_head_name(model: nn.Module, inputs: Any) -> str:
    """Name of the Linear producing the logits, traced on one sample (cached per model), for callers
    that were not given it. Must be called in eval mode (inside ``scoring_mode``)."""
    signature = tuple(id(m) for m in model.modules() if isinstance(m, nn.Linear))
    cached = _HEAD_CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    first = as_args(rows(inputs, 0, 1, input_batch_size(inputs)))
    with torch.no_grad():
        (name, module), logits = trace_head(model, lambda: model(*first))
    if isinstance(logits, Tensor) and logits.dim() > 0 and module.out_features != logits.shape[-1]:
        warnings.warn(
            f"no nn.Linear produces the logits ({logits.shape[-1]} classes); using {name!r} "
            f"({module.out_features} outputs) as the head — pass params=[...] to choose the mimic layers",
            UserWarning,
            stacklevel=5,
        )
    with contextlib.suppress(TypeError):  # a model that cannot be weakly referenced is simply not cached
        _HEAD_CACHE[model] = (signature, name)
    return name


def _head_param_names(model: nn.Module, name: str, known: dict[str, Tensor]) -> list[str]:
    head = model.get_submodule(name) if name else model
    names = [f"{name}.{attr}" if name else attr for attr in ("weight", "bias") if getattr(head, attr, None) is not None]
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"head parameters {missing} are not in model.named_parameters() (shared with another layer?)")
    return names


def _auto_path(head: str | None, layer: str | None, closed_form: bool, couples_batch: bool) -> str:
    """The cheapest exact path: the head's closed form, the output layer's loss Jacobian, or forward mode."""
    if head is not None and closed_form:
        return "head"
    if layer is not None and couples_batch:
        return "output"
    return "jvp"


def _compute_dtype(model_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if model_dtype in (torch.float16, torch.bfloat16) else model_dtype


def _float32_state(model: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    """Every floating parameter and buffer in ``dtype`` (to score a half-precision model in float32)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {n: t.detach().to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}


def _check_options(method: str, path: str, chunk_size: int | None) -> None:
    if method not in SCORE_METHODS:
        raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r} (Stage-1 weights: stage1_weights)")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _as_dtype(inputs: Any, dtype: torch.dtype) -> Any:
    """Floating inputs in ``dtype`` (a tuple's floating tensors; integer tokens stay as they are)."""
    if isinstance(inputs, Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    return cast(inputs, dtype)


_FALLBACKS = {
    "vmap": ("forward-mode AD is not available for an operation in this model", "chunked vmap(grad)", "slower"),
    "loop": (
        "torch.func transforms are not available for an operation in this model",
        "a per-sample loop",
        "much slower",
    ),
}
# the same fallbacks for a loss that couples the batch, whose per-sample gradients are Jacobian rows
_COUPLED_FALLBACKS = {
    "vmap": ("rows of the loss vector's Jacobian pulled back under vmap",),
    "loop": ("rows of the loss vector's Jacobian pulled back one at a time",),
}


class PreparedScorer:
    """Mimic scores of ``model`` against ``reference`` on the mimic layers ``params``, batch by batch.

    Everything about the pair is resolved once (the mimic layers, the path, the reference check, the
    task vector), then ``scorer(inputs, targets)`` scores one batch in one pass. The task vector is
    read when the scorer is prepared; call ``refresh()`` after the model's weights move (the
    reference is taken as fixed).

    Parameters
    ----------
    model, reference
        The same architecture (parameter names and shapes must match; checked here, once).
    params
        ``"head"`` (the Linear producing the logits), ``"all"`` (the trainable parameters; every
        parameter when none is trainable) or a list of names from ``model.named_parameters()``.
    method
        ``"proj"``, or ``"cos"`` (then proj, cos and ‖g_i‖ come from the same pass).
    head_name
        The head's qualified name when the caller knows it (``tasks.classifier_models`` traces it once
        per run); otherwise it is traced on the first batch.
    loss
        A ``scoring.losses.PerSampleLoss`` or a plain callable ``(outputs, targets) -> (B,)`` (default:
        cross-entropy with integer labels). Targets are whatever the loss accepts.
    path
        ``"auto"`` (the cheapest exact path), or force ``"head"``, ``"output"``, ``"jvp"``, ``"vmap"`` or
        ``"loop"`` (see the module).
    chunk_size
        Samples per slice (bounds memory). Default: the whole batch for head/jvp, a memory-budgeted
        chunk for vmap. A loss that couples the batch is always evaluated on the whole batch; there
        ``chunk_size`` bounds the Jacobian rows computed at once.

    Raises
    ------
    ValueError
        An unknown ``method`` or ``path``, ``params`` the model lacks, a reference that does not match
        the model, or a forced path that cannot be used with these mimic layers or this loss.
    """

    def __init__(
        self,
        model: nn.Module,
        reference: nn.Module,
        *,
        params: str | Sequence[str] = "head",
        method: str = "proj",
        head_name: str | None = None,
        loss: PerSampleLoss | Callable[[Any, Any], Tensor] | None = None,
        path: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        _check_options(method, path, chunk_size)
        self.model, self.reference, self.params = model, reference, params
        self.method, self.path, self.chunk_size = method, path, chunk_size
        self.loss = as_per_sample_loss(loss)
        self._named = list(model.named_parameters())
        self._reference_named = dict(check_reference(model, reference, self._named))
        first = next((p for _, p in self._named if p.is_floating_point()), None)
        if first is None:
            raise ValueError(f"{type(model).__name__} has no floating-point parameters to score")
        self.device, self.model_dtype = first.device, first.dtype
        self.compute_dtype = _compute_dtype(self.model_dtype)
        if head_name is not None and not isinstance(model.get_submodule(head_name) if head_name else model, nn.Linear):
            raise ValueError(f"head_name {head_name!r} is not an nn.Linear of {type(model).__name__}")
        self.head_name = head_name
        self.names: list[str] | None = None  # the mimic layers, once resolved
        self.head: str | None = None  # set (to the head's name) when the mimic layers are the head's weight/bias
        self.v: dict[str, Tensor] = {}
        self.v_norm: Tensor | None = None
        self._need_norm = method == "cos"
        selected = self._select(None)
        if selected is not None:
            self._prepare(*selected)

    # ------------------------------------------------------------------ preparation (once)
    def _select(self, inputs: Any) -> tuple[list[str], str | None] | None:
        """The mimic-layer names and the head's name when they are its parameters; None while the head
        still has to be traced and no batch is at hand."""
        known = dict(self._named)
        params = self.params
        if params == "head":
            name = self.head_name
            if name is None:
                if inputs is None:
                    return None
                name = traced_head_name(self.model, inputs)
            return _head_param_names(self.model, name, known), name
        if params == "all":
            names = trainable_names(self.model)
        elif isinstance(params, str):
            raise ValueError(
                f"params must be 'head', 'all' or a list of parameter names, got the string {params!r}"
                + (f" (did you mean [{params!r}]?)" if params in known else "")
            )
        else:
            names = check_param_names(self.model, params)
        owner = owning_linear(self.model, names)
        if owner is None or not has_closed_form(self.loss):  # no head path: nothing to trace for
            return names, None
        if self.head_name is not None:
            return names, owner if owner == self.head_name else None
        if inputs is None:
            return None
        return names, owner if input_batch_size(inputs) > 0 and owner == traced_head_name(self.model, inputs) else None

    def _prepare(self, names: list[str], head: str | None) -> None:
        closed_form = has_closed_form(self.loss)
        if self.path == "head" and head is None:
            raise ValueError(
                "path='head' needs params to be the weight and/or bias of the Linear layer that produces "
                f"the logits; got {names[:4]}{' …' if len(names) > 4 else ''}"
            )
        if self.path == "head" and not closed_form:
            raise ValueError(
                "path='head' needs a per-sample loss with a closed-form output gradient (output_grad); "
                + ("this loss couples the batch" if self.loss.couples_batch else "a plain callable has none")
            )
        # the one Linear the mimic layers belong to, if any (the head, or a dual encoder's projection)
        layer = head if head is not None else owning_linear(self.model, names)
        if self.path == "output" and layer is None:
            raise ValueError(
                "path='output' needs params to be the weight and/or bias of one nn.Linear; "
                f"got {names[:4]}{' …' if len(names) > 4 else ''}"
            )
        self.names, self.head = names, head
        self._chosen = (
            self.path if self.path != "auto" else _auto_path(head, layer, closed_form, self.loss.couples_batch)
        )
        if layer is not None:
            self._layer_module = self.model.get_submodule(layer) if layer else self.model
        self._weight_name, self._bias_name = (f"{layer}.weight", f"{layer}.bias") if layer else ("weight", "bias")
        ours = dict(self._named)
        # (name, reference tensor in the compute dtype, the model's live parameter): what refresh() reads
        self._pairs = [
            (n, self._reference_named[n].detach().to(self.device, self.compute_dtype), ours[n]) for n in names
        ]
        # the training case — one Linear's weight (and bias), already in the compute dtype — refreshes
        # without loops or conversions, since a probe step is a handful of small ops
        self._head_pairs = None
        if [n for n, _, _ in self._pairs] in ([self._weight_name, self._bias_name], [self._weight_name]) and all(
            p.dtype == self.compute_dtype for _, _, p in self._pairs
        ):
            self._head_pairs = (*(t for _, ref, p in self._pairs for t in (ref, p)), None, None)
        self.v = task_vector(ours, self._reference_named, names, self.compute_dtype, self.device)
        self._set_v(self.v)
        self._state = _float32_state(self.model, self.compute_dtype) if self.compute_dtype != self.model_dtype else None
        self._num_params = sum(t.numel() for t in self.v.values())
        if float(self.v_norm) == 0.0:
            warnings.warn(
                "the model is identical to the reference on the mimic layers (task vector is zero): "
                "every mimic score is 0",
                UserWarning,
                stacklevel=4,
            )

    def _set_v(self, v: dict[str, Tensor]) -> None:
        self.v = v
        self.v_norm = vector_norm(v)
        self._v_weight, self._v_bias = v.get(self._weight_name), v.get(self._bias_name)

    def refresh(self) -> None:
        """Recompute the task vector from the model's current weights (after an optimizer step).

        Cheap by design — one subtraction per mimic-layer tensor and a norm, no checks — since a
        training loop calls it every step."""
        if self._head_pairs is not None:
            ref_w, w, ref_b, b = self._head_pairs[:4]
            self._v_weight = v_w = ref_w - w.detach()
            if b is None:  # a bias-free layer (a dual encoder's projection)
                self.v, self._v_bias, self.v_norm = {self._weight_name: v_w}, None, torch.linalg.vector_norm(v_w)
                return
            self._v_bias = v_b = ref_b - b.detach()
            self.v = {self._weight_name: v_w, self._bias_name: v_b}
            self.v_norm = torch.hypot(torch.linalg.vector_norm(v_w), torch.linalg.vector_norm(v_b))
            return
        if self.names is None:
            raise RuntimeError("the scorer is not prepared yet: score a first batch or pass head_name")
        dtype = self.compute_dtype
        self._set_v({n: ref - (p.detach() if p.dtype == dtype else p.detach().to(dtype)) for n, ref, p in self._pairs})
        if self._state is not None:
            self._state = _float32_state(self.model, dtype)

    # ------------------------------------------------------------------ the head's closed form
    def project_head(self, features: Tensor, output_grad: Tensor) -> Projection:
        """proj (and, for method "cos", cos and ‖g_i‖) of the head's per-sample gradients from the head's
        input ``features`` (B, D) or (B, ..., D) and the loss gradient at its output ``output_grad``.

        For callers that already ran the forward pass (a training step, in training mode)."""
        if self.head is None:
            raise ValueError("project_head needs the mimic layers to be the head's weight and/or bias")
        dot, sqnorm = linear_grad_geometry(features, output_grad, self._v_weight, self._v_bias, self._need_norm)
        return mimic_projection(dot, self.v_norm, sqnorm)

    def layer_tangent(self, features: Tensor) -> Tensor:
        """T = H Vᵀ + v_b: how a Linear mimic layer's output moves along the task vector, from its
        input ``features`` (B, …, D). The directional derivative of the loss vector along T is every
        ⟨g_i, v⟩ at once (one forward-mode pass through what follows the layer), for callers that
        need proj without the Jacobian rows that cos takes."""
        if not hasattr(self, "_layer_module"):
            raise ValueError("layer_tangent needs the mimic layers to be the weight and/or bias of one nn.Linear")
        return output_tangent(
            features.to(self.compute_dtype), self._v_weight, self._v_bias, self._layer_module.out_features
        )

    def project_output(self, features: Tensor, pull_back: PullBack, batch: int) -> Projection:
        """proj, cos and ‖g_i‖ of a Linear mimic layer whose output the loss reads directly, from the
        layer's input ``features`` (B, …, D) and ``pull_back``: a cotangent of the (B,) loss vector →
        its pullback to the layer's output (rows of the loss's Jacobian; ``scoring.output_layer``).

        For callers that already ran the forward pass (a training step of a dual encoder, in training
        mode); exact whether or not the loss couples the batch."""
        if not hasattr(self, "_layer_module"):
            raise ValueError("project_output needs the mimic layers to be the weight and/or bias of one nn.Linear")
        features = features.to(self.compute_dtype)
        layer = self._layer_module
        tangent = output_tangent(features, self._v_weight, self._v_bias, layer.out_features)
        dot, sqnorm = linear_output_geometry(
            pull_back,
            batch,
            features,
            layer.out_features,
            tangent,
            self._v_weight is not None,
            self._v_bias is not None,
            self.chunk_size,
        )
        return mimic_projection(dot, self.v_norm, sqnorm)

    # ------------------------------------------------------------------ one batch
    def __call__(self, inputs: Any, targets: Any) -> BatchScores:
        """Scores, losses and outputs for one batch, from one pass of the model on the head path.

        Parameters
        ----------
        inputs
            A tensor, or a tuple of batched tensors passed as the model's positional arguments.
        targets
            Whatever the loss takes: (B,) class indices for cross-entropy, None for InfoNCE.

        Returns
        -------
        BatchScores
            ``proj``, ``cos`` (with ``method="cos"``), ``loss`` and the detached ``outputs``, (B,) each.

        Raises
        ------
        ValueError
            A batch that does not fit the model or the loss, or a non-finite loss or score (naming the
            sample positions).
        """
        default_loss = isinstance(self.loss, CrossEntropyLoss)
        batch = check_batch(inputs, targets) if default_loss else input_batch_size(inputs)
        with scoring_mode(self.model, self.device):
            inputs = moved(inputs, self.device)
            x_model = _as_dtype(inputs, self.model_dtype)
            x_compute = _as_dtype(inputs, self.compute_dtype)
            targets = moved(targets, self.device)
            if default_loss:
                targets = targets.to(dtype=torch.long)
            if self.names is None:
                self._prepare(*self._select(x_model))
            if batch == 0:
                empty = torch.zeros(0, dtype=self.compute_dtype, device=self.device)
                return BatchScores(
                    empty, empty if self._need_norm else None, empty, None, empty if self._need_norm else None
                )
            if self.loss.couples_batch:
                pieces = [self._coupled_parts(x_compute, targets, batch)]
            else:
                step = batch if self._chosen in ("vmap", "loop") else (self.chunk_size or batch)
                vmap_chunk = self.chunk_size or auto_chunk(self._num_params, batch)
                pieces = [
                    self._parts(
                        rows(x_model, s, s + step, batch),
                        rows(targets, s, s + step, batch),
                        rows(x_compute, s, s + step, batch),
                        s,
                        vmap_chunk,
                    )
                    for s in range(0, batch, step)
                ]
        losses = torch.cat([p.losses for p in pieces])
        check_finite(losses, "losses")
        dot = torch.cat([p.dot for p in pieces]).to(self.compute_dtype)
        sqnorm = torch.cat([p.sqnorm for p in pieces]).to(self.compute_dtype) if self._need_norm else None
        projection = mimic_projection(dot, self.v_norm, sqnorm)
        check_finite(projection.proj, "mimic scores")
        if projection.cos is not None:
            check_finite(projection.cos, "mimic scores")
        outputs = cat_rows([p.outputs for p in pieces])
        return BatchScores(projection.proj.detach(), projection.cos, losses.detach(), outputs, projection.grad_norm)

    def _fall_back(self, error: Exception, to: str) -> bool:
        """In auto mode, for a gap in PyTorch's transforms: warn once and move to a slower exact path."""
        gap = is_forward_ad_gap if to == "vmap" else is_transform_gap
        if self.path != "auto" or not gap(error):
            return False
        what, how, cost = _FALLBACKS[to]
        if self.loss.couples_batch:
            (how,) = _COUPLED_FALLBACKS[to]
        warnings.warn(
            f"{what} ({error}); falling back to {how}: the scores stay exact, the path is {cost}",
            RuntimeWarning,
            stacklevel=5,
        )
        self._chosen = to
        return True

    def _parts(self, x: Any, y: Any, x_compute: Any, offset: int, vmap_chunk: int) -> Parts:
        """A slice of the batch by the chosen path (per-sample losses)."""
        if self._chosen == "output":
            return self._output(x_compute, y)
        if self._chosen == "head":
            try:
                return head_parts(
                    self.model,
                    self._layer_module,
                    x,
                    y,
                    self._v_weight,
                    self._v_bias,
                    self._need_norm,
                    self.compute_dtype,
                    offset,
                    self.loss,
                )
            except HeadPathUnavailable as error:
                if self.path != "auto":
                    raise ValueError(f"path='head' cannot be used: {error}") from error
                self._chosen = "jvp"
        if self._chosen == "jvp":
            try:
                return self._jvp(x_compute, y, offset, vmap_chunk)
            except Exception as error:  # only forward-AD gaps are recoverable
                if not self._fall_back(error, "vmap"):
                    raise
        if self._chosen == "vmap":
            if isinstance(self.loss, CrossEntropyLoss):
                check_targets_with_probe(self.model, x_compute, y, self._state, offset)
            return self._vmap(self.v, x_compute, y, self._need_norm, vmap_chunk)
        return loop_parts(self.model, self.v, x_compute, y, self._need_norm, self._state, self.loss)

    def _vmap(self, v: dict[str, Tensor], x: Any, y: Any, need_norm: bool, chunk: int) -> Parts:
        """Chunked vmap(grad); in auto mode, the per-sample loop when an op does not support
        torch.func transforms (e.g. an autograd.Function without ``setup_context``)."""
        try:
            return vmap_parts(self.model, v, x, y, True, need_norm, chunk, self._state, self.loss)
        except Exception as error:  # only transform gaps are recoverable
            if not self._fall_back(error, "loop"):
                raise
            return loop_parts(self.model, v, x, y, need_norm, self._state, self.loss)

    def _jvp(self, x: Any, y: Any, offset: int, vmap_chunk: int) -> Parts:
        """proj: one forward-mode pass. cos: ghost norms and dots for the layers they cover, chunked
        vmap(grad) over the other parameters only."""
        if not self._need_norm:
            return jvp_parts(self.model, self.v, x, y, self._state, offset, self.loss)
        ghost, covered = ghost_parts(self.model, self.names, self.v, x, y, True, self._state, offset, self.loss)
        rest = {n: t for n, t in self.v.items() if n not in covered}
        if not rest:
            return ghost
        other = self._vmap(rest, x, y, True, vmap_chunk)  # their per-sample gradients give the dot for free
        return Parts(ghost.dot + other.dot, ghost.sqnorm + other.sqnorm, ghost.losses, ghost.outputs)

    def _output(self, x: Any, y: Any) -> Parts:
        """The output layer's path; forced, it names why it cannot serve this model."""
        try:
            return output_parts(
                self.model,
                self._layer_module,
                x,
                y,
                self._v_weight,
                self._v_bias,
                self._need_norm,
                self.loss,
                self._state,
                self.chunk_size,
            )
        except OutputLayerUnavailable as error:
            if self.path == "output":
                raise ValueError(f"path='output' cannot be used: {error}") from error
            raise

    def _coupled_parts(self, x: Any, y: Any, batch: int) -> Parts:
        """A loss that couples the batch, on the whole batch: a Linear mimic layer whose output is one
        of the model's outputs by the output layer's path; otherwise proj by forward mode (exact
        whatever the coupling) and cos, or a forced vmap/loop path, by rows of the loss vector's
        Jacobian over the mimic layers."""
        if self._chosen == "output":
            try:
                return self._output(x, y)
            except OutputLayerUnavailable:
                self._chosen = "jvp"  # the general paths below are exact for any placement of the layer
            except Exception as error:  # only forward-AD gaps are recoverable
                if not self._fall_back(error, "vmap"):
                    raise
        if self._chosen == "jvp" and not self._need_norm:
            try:
                return jvp_parts(self.model, self.v, x, y, self._state, 0, self.loss)
            except Exception as error:  # only forward-AD gaps are recoverable
                if not self._fall_back(error, "vmap"):
                    raise
        chunk = self.chunk_size or auto_chunk(self._num_params, batch)
        if self._chosen in ("jvp", "vmap"):
            try:
                return jacobian_parts(self.model, self.v, x, y, self._need_norm, chunk, self._state, self.loss)
            except Exception as error:  # only transform gaps are recoverable
                if not self._fall_back(error, "loop"):
                    raise
        return jacobian_parts(
            self.model, self.v, x, y, self._need_norm, chunk, self._state, self.loss, vectorized=False
        )
