"""Per-sample losses the mimic score can be taken of: the protocol, cross-entropy, and plain callables.

Why pluggable: g_i is the gradient of sample i's loss, and which loss that is depends on the task —
cross-entropy with a class label for a classifier, a symmetric InfoNCE term for an image–text pair.
The scoring paths need only three things from a loss: the (B,) vector of per-sample losses of the
model's outputs, whether a sample's loss depends on the *other* samples' outputs (``couples_batch``:
then per-sample gradients cannot come from single-sample passes or ghost norms), and, when it does not,
optionally a closed form for ∂ℓ_i/∂z_i (what makes the head path one forward pass).
See docs/ARCHITECTURE.md (where a new loss goes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from mimic_explorer.scoring.checks import per_sample_losses
from mimic_explorer.scoring.linear_head import cross_entropy_output_grad


@runtime_checkable
class PerSampleLoss(Protocol):
    """A loss over a batch that returns one value per sample."""

    couples_batch: bool  # True when ℓ_i depends on other samples' outputs (contrastive InfoNCE)

    def __call__(self, outputs: Any, targets: Any) -> Tensor:
        """(B,) per-sample losses of ``model(inputs)``."""
        ...

    def output_grad(self, outputs: Tensor, targets: Any) -> Tensor | None:
        """∂ℓ_i/∂outputs_i when ``couples_batch`` is False and a closed form exists, else None."""
        ...


class CrossEntropyLoss:
    """Unreduced cross-entropy with integer class labels (the default); δ_i = softmax(z_i) − onehot(y_i)."""

    couples_batch = False

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return per_sample_losses(outputs, targets)

    def output_grad(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """δ_i = softmax(z_i) − onehot(y_i), the closed form that lets the head path score without a backward pass."""
        return cross_entropy_output_grad(outputs, targets)


class CallableLoss:
    """A plain ``(outputs, targets) -> (B,)`` function as a loss, with no closed-form output gradient
    (it never uses the head path).

    A bare callable passed as ``loss=`` is taken to be per-sample. A function whose ℓ_i reads other
    samples' outputs (a contrastive loss written by hand) must say so — ``CallableLoss(fn,
    couples_batch=True)`` — or cos would come from ghost norms and per-sample slices, which assume
    independence; proj by forward mode is exact either way.
    """

    def __init__(self, fn: Callable[[Any, Any], Tensor], couples_batch: bool = False):
        if not callable(fn):
            raise TypeError(f"CallableLoss needs a callable (outputs, targets) -> (B,), got {type(fn).__name__}")
        self.fn = fn
        self.couples_batch = bool(couples_batch)

    def __call__(self, outputs: Any, targets: Any) -> Tensor:
        return self.fn(outputs, targets)

    def output_grad(self, outputs: Tensor, targets: Any) -> None:
        """None: a hand-written loss has no known closed form, so it is scored by the jvp or vmap path."""
        return None


def as_per_sample_loss(loss: PerSampleLoss | Callable[[Any, Any], Tensor] | None) -> PerSampleLoss:
    """None → ``CrossEntropyLoss()``; a ``PerSampleLoss`` as it is; any other callable wrapped."""
    if loss is None:
        return CrossEntropyLoss()
    if isinstance(loss, PerSampleLoss):
        return loss
    if callable(loss):
        return CallableLoss(loss)
    raise TypeError(
        f"loss must be a PerSampleLoss or a callable (outputs, targets) -> (B,) losses, got {type(loss).__name__}"
    )


def has_closed_form(loss: PerSampleLoss) -> bool:
    """Whether the head path may serve this loss: per-sample, and not a plain callable (which has no
    ``output_grad``). A loss object whose ``output_grad`` returns None is refused when that is found."""
    return not loss.couples_batch and not isinstance(loss, CallableLoss)


def loss_values(
    loss: PerSampleLoss, outputs: Any, targets: Any, batch: int, offset: int = 0, check: bool = True
) -> Tensor:
    """The (B,) losses, with errors that name the cause: cross-entropy checks its logits and labels
    (bad labels by position, counting from ``offset``; ``check=False`` inside vmap, where nothing may
    branch on data), any other loss must return shape (B,)."""
    if isinstance(loss, CrossEntropyLoss):
        return per_sample_losses(outputs, targets, offset, check)
    values = loss(outputs, targets)
    if not isinstance(values, Tensor) or tuple(values.shape) != (batch,):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"the loss must return one value per sample, shape (B,) = ({batch},); got {got}")
    return values
