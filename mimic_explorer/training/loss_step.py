"""One Stage-1 step of any model under any per-sample loss: plain, or Grad-Mimic on chosen mimic layers.

Why a step of its own: the classification step (``train``) relies on the head's closed form,
δ_i = softmax − onehot, which needs a loss that treats each sample alone. A dual encoder trained with
the batch-coupled InfoNCE, with one tower's projection as the mimic layer, has no such form; its
step still costs about a plain one:

- one forward of the model (training mode) gives the losses; a hook keeps the mimic layer's input H
  and output z;
- through *the loss alone* (z → ℓ, the model's other outputs held fixed), one forward-mode pass
  along T = H Vᵀ gives every pair's ⟨g_i, v⟩ (``torch.func.jvp``; O(B²C) for InfoNCE), coupling
  included. ‖g_i‖ — computed only when the Stage-1 method weighs cos (``need_cos``; otherwise the
  records carry no cos) — comes from the loss's closed form when it has one (InfoNCE on a
  projection's weight: ``scoring.contrastive.projection_grad_sqnorms``), else from the rows of the
  loss's Jacobian (``PreparedScorer.project_output``: B pullbacks through the loss);
- one backward of the mean loss gives every other parameter the ordinary mean gradient, and the
  mimic layer's gradient is replaced by Σ_i w_i g_i = (∂(wᵀℓ)/∂z)ᵀ H — one more pullback through the
  loss and one matmul.

When the mimic layers are not one Linear whose output the loss reads (parameters inside a tower, a
layer whose output is normalised inside the model), the per-sample gradients come from a batched
backward over the mimic layers (``torch.autograd.grad(..., is_grads_batched=True)``; one sample at a
time if an operation has no batching rule): exact, slower, and said once with a RuntimeWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp
from torch.utils._pytree import tree_flatten, tree_unflatten

from mimic_explorer.scoring.losses import PerSampleLoss, loss_values
from mimic_explorer.scoring.output_layer import closed_form_sqnorm, pull_back_of
from mimic_explorer.scoring.prepared import PreparedScorer
from mimic_explorer.scoring.projection import Projection, mimic_projection
from mimic_explorer.scoring.task_vector import owning_linear
from mimic_explorer.scoring.trees import as_args, input_batch_size

Weigh = Callable[[Tensor, Tensor, bool], Tensor]  # (proj, cos, weigh this epoch) → (B,) weights
Check = Callable[[Tensor, Tensor], None]  # (losses, dataset index) → raises on a non-finite loss


def predictions(loss: PerSampleLoss, outputs: Any) -> Tensor:
    """What a run records as ``pred``: the loss's own ``predict(outputs)`` when it has one (InfoNCE:
    whether the image ranks its own caption first in the batch), else the argmax of tensor outputs."""
    predict = getattr(loss, "predict", None)
    if predict is not None:
        return predict(outputs)
    if isinstance(outputs, Tensor) and outputs.dim() > 1:
        return outputs.detach().argmax(-1)
    raise TypeError(f"{type(loss).__name__} has no predict(outputs) and the model's outputs are not logits")


class _LayerIO:
    """Forward hook that keeps the mimic layer's input and output of the latest forward pass."""

    def __init__(self, layer: nn.Module):
        self.input: Tensor | None = None
        self.output: Tensor | None = None
        self.calls = 0
        self._hook = layer.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.input, self.output = args[0], output
        self.calls += 1

    def remove(self) -> None:
        """Stop capturing."""
        self._hook.remove()


class LossStep:
    """A training step of ``model`` under ``loss`` (see the module): plain without a reference, else
    Grad-Mimic with ``mimic_params`` (parameter names) as the mimic layers.

    ``reweight``: "head" — the mimic layers get Σ w_i g_i, every other parameter the mean gradient;
    "all" — every parameter gets the re-weighted gradient (one backward of Σ w_i ℓ_i).
    ``weigh(proj, cos, weigh)`` turns scores into Stage-1 weights (``cos`` is None unless
    ``need_cos``); ``check(losses, index)`` raises on a non-finite loss before anything is scored.
    """

    def __init__(
        self,
        model: nn.Module,
        reference: nn.Module | None,
        loss: PerSampleLoss,
        mimic_params: Sequence[str] | None,
        reweight: str,
        weigh: Weigh,
        check: Check,
        need_cos: bool = True,
    ):
        self.model, self.reference, self.loss = model, reference, loss
        self.reweight, self.weigh, self.check, self.need_cos = reweight, weigh, check, need_cos
        self.scorer: PreparedScorer | None = None
        self.io: _LayerIO | None = None
        self._warned = False
        if reference is None:
            return
        if not mimic_params:
            raise ValueError(
                "Grad-Mimic under a custom loss needs mimic_params: the names of the mimic-layer parameters"
            )
        self.scorer = PreparedScorer(model, reference, params=list(mimic_params), method="cos", loss=loss)
        named = dict(model.named_parameters())
        self.params = [named[n] for n in self.scorer.names]
        layer = owning_linear(model, self.scorer.names)
        self._weight_only = layer is not None and self.scorer.names == [f"{layer}.weight" if layer else "weight"]
        if layer is not None:
            self.layer = model.get_submodule(layer) if layer else model
            self.io = _LayerIO(self.layer)

    def close(self) -> None:
        """Remove the mimic layer's hook."""
        if self.io is not None:
            self.io.remove()

    def __call__(self, inputs: Any, targets: Any, index: Tensor, weigh: bool) -> dict[str, Tensor]:
        model = self.model
        model.zero_grad(set_to_none=True)
        if self.io is not None:
            self.io.calls = 0
        outputs = model(*as_args(inputs))
        batch = input_batch_size(inputs)
        losses = loss_values(self.loss, outputs, targets, batch)
        self.check(losses.detach(), index)
        out = {"loss": losses.detach(), "pred": predictions(self.loss, outputs)}
        if self.scorer is None:
            losses.mean().backward()
            return out
        self.scorer.refresh()  # the task vector at the weights this step starts from
        through_loss = self._through_loss(outputs, targets, batch)
        pull_back = None
        if through_loss is not None:
            features = self.io.input.detach()
            z, losses_of = through_loss
            closed = None
            if self.need_cos:
                position, plain_outputs = self._position
                closed = closed_form_sqnorm(self.loss, plain_outputs, position, features, self._weight_only)
            if self.need_cos and closed is None:
                with torch.no_grad():
                    _, pull_back = vjp(losses_of, z)
                pull_back = pull_back_of(pull_back)
                projection = self.scorer.project_output(features, pull_back, batch)
            else:
                with torch.no_grad():
                    _, dot = jvp(losses_of, (z,), (self.scorer.layer_tangent(features).to(z.dtype),))
                projection = mimic_projection(dot, self.scorer.v_norm, closed)
                pull_back = self._graph_pull_back(losses)
        else:
            projection, grads = self._per_sample(losses)
        proj, cos = projection.proj, projection.cos
        weights = self.weigh(proj, cos, weigh).detach()
        if self.reweight == "all":
            (losses * weights).sum().backward()
        else:
            if pull_back is not None:
                reweighted = self._layer_grads(pull_back(weights.to(features.dtype)), features)
            else:
                reweighted = [torch.einsum("b,b...->...", weights.to(g.dtype), g) for g in grads]
            if any(p.requires_grad for p in model.parameters() if all(p is not q for q in self.params)):
                losses.mean().backward()
            for param, grad in zip(self.params, reweighted, strict=True):
                param.grad = grad.to(param.dtype)
        out.update(proj=proj, weight=weights)
        if cos is not None:
            out["cos"] = cos
        return out

    def _through_loss(self, outputs: Any, targets: Any, batch: int) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
        """(z, z ↦ ℓ with the model's other outputs held fixed) when the mimic layer's output z is one
        of the model's outputs, called once; else None (the general path)."""
        if self.io is None or self.io.calls != 1:
            return None
        leaves, spec = tree_flatten(outputs)
        position = next((k for k, leaf in enumerate(leaves) if leaf is self.io.output), None)
        if position is None:
            return None
        plain = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        self._position = (position, tree_unflatten(plain, spec))

        def losses_of(z: Tensor) -> Tensor:
            return loss_values(
                self.loss, tree_unflatten([*plain[:position], z, *plain[position + 1 :]], spec), targets, batch
            )

        return plain[position], losses_of

    def _graph_pull_back(self, losses: Tensor) -> Callable[[Tensor], Tensor]:
        """c ↦ ∂(cᵀℓ)/∂z on the step's own graph (no second forward of the loss). z requires grad
        whenever the mimic layer (or anything before it) trains; a frozen mimic layer is an error."""
        z = self.io.output
        if z.requires_grad:
            return lambda c: torch.autograd.grad(losses, z, c, retain_graph=True)[0]
        raise RuntimeError("the mimic layer's output does not require grad: is the mimic layer frozen?")

    def _layer_grads(self, cotangent: Tensor, features: Tensor) -> list[Tensor]:
        """The mimic layer's weight (and bias) gradient for output cotangent ``cotangent`` (B, …, C)."""
        names = self.scorer.names
        flat_out = cotangent.reshape(-1, cotangent.shape[-1])
        grads = {
            "weight": flat_out.T @ features.reshape(-1, features.shape[-1]).to(flat_out.dtype),
            "bias": flat_out.sum(0),
        }
        return [grads[n.rsplit(".", 1)[-1]] for n in names]

    def _per_sample(self, losses: Tensor) -> tuple[Projection, list[Tensor]]:
        """Exact per-sample gradients over the mimic layers by a batched backward (one sample at a
        time when an operation has no batching rule), reduced to proj and cos."""
        if not self._warned:
            self._warned = True
            warnings.warn(
                "the mimic layers are not one Linear whose output the loss reads: per-sample gradients come "
                "from a batched backward (exact, slower than the output layer's path)",
                RuntimeWarning,
                stacklevel=4,
            )
        batch = losses.shape[0]
        eye = torch.eye(batch, dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(
                losses, self.params, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        except RuntimeError:
            rows = [
                torch.autograd.grad(losses[i], self.params, retain_graph=True, allow_unused=True) for i in range(batch)
            ]
            grads = [
                torch.stack([r[k] if r[k] is not None else torch.zeros_like(p) for r in rows])
                for k, p in enumerate(self.params)
            ]
        grads = [
            torch.zeros(batch, *p.shape, dtype=p.dtype, device=p.device) if g is None else g.detach()
            for g, p in zip(grads, self.params, strict=True)
        ]
        v = [self.scorer.v[n] for n in self.scorer.names]
        dot = sum(g.flatten(1) @ t.reshape(-1).to(g.dtype) for g, t in zip(grads, v, strict=True))
        sqnorm = sum(g.flatten(1).pow(2).sum(1) for g in grads)
        return mimic_projection(dot, self.scorer.v_norm, sqnorm), grads
