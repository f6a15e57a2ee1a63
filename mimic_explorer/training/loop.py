"""Stage-1 training loop: plain training or Grad-Mimic, recording every sample at every epoch.

Why this shape: the mimic layers are a linear head, so each Grad-Mimic step needs only the head's input
and output gradient (closed form, see ``scoring.linear_head``): the backbone gets the ordinary mean
gradient from the one backward pass a plain step makes anyway, and the head's gradient is replaced by
the re-weighted sum Σ_i w_i g_i in one matmul. A Grad-Mimic step therefore costs about a plain step.
The scores themselves come from the run's ``PreparedScorer`` (``scoring.prepared``), refreshed each step
as the head moves, so training, the end-of-run signals and ``score`` compute them by one function.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimic_explorer.models.heads import find_head
from mimic_explorer.models.probe import LinearProbe
from mimic_explorer.scoring.linear_head import (
    cross_entropy_output_grad,
    cross_entropy_with_output_grad,
    linear_weighted_grad,
)
from mimic_explorer.scoring.losses import PerSampleLoss
from mimic_explorer.scoring.prepared import PreparedScorer
from mimic_explorer.scoring.stage1 import METHODS, score_basis, stage1_weights
from mimic_explorer.scoring.trees import moved
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.loss_step import LossStep
from mimic_explorer.util.choices import OPTIMIZERS, REWEIGHTS


@dataclass
class TrainConfig:
    """How ``train`` trains: the schedule, the Stage-1 weighting, the seed and the device.

    Parameters
    ----------
    epochs, batch_size, lr, weight_decay
        The schedule.
    optimizer
        ``adamw`` or ``sgd``.
    method, temperature
        The Stage-1 weighting (``proj``, ``cos``, ``normed_proj``, ``normed_cos``) and the
        softmax temperature T of the ``normed_*`` ones.
    reweight
        ``head``: only the mimic layers get the re-weighted gradient; ``all``: every trainable parameter.
    starting_epoch
        Epochs before this one train plainly (scores are still recorded).
    seed
        Seed of the shuffles and of each epoch's random numbers.
    device
        Where the model trains.
    """

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"  # or "sgd"
    method: str = "normed_proj"
    temperature: float = 1.0
    reweight: str = "head"  # "head": mimic layers only; "all": every trainable parameter
    starting_epoch: int = 0  # epochs before this train plainly (scores are still recorded)
    seed: int = 0
    device: str = "cpu"

    def validate(self, num_samples: int) -> None:
        """Raise ``ValueError`` naming the first bad setting (``num_samples``: the size of the data, which bounds the
        batch size)."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1 or self.batch_size > num_samples:
            raise ValueError(f"batch size {self.batch_size} must be between 1 and the dataset size {num_samples}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")
        if self.reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be 'head' or 'all', got {self.reweight!r}")

    def to_dict(self) -> dict:
        """The settings as JSON values."""
        return asdict(self)


@dataclass
class EpochRecord:
    """Per-sample columns for one epoch, in the order samples were seen."""

    epoch: int
    index: np.ndarray
    step: np.ndarray
    batch_size: np.ndarray
    loss: np.ndarray
    pred: np.ndarray
    proj: np.ndarray | None = None
    cos: np.ndarray | None = None
    weight: np.ndarray | None = None


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model (the one passed in), every epoch's record and the seconds the training
    took."""

    model: nn.Module
    records: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0


class _HeadInput:
    """Forward hook that keeps the head's input (the features h) of the latest forward pass."""

    def __init__(self, head: nn.Linear):
        self.value: torch.Tensor | None = None
        self._hook = head.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self.value = inputs[0]

    def remove(self) -> None:
        """Stop capturing."""
        self._hook.remove()


def head_of(model: nn.Module, head_name: str | None, example: torch.Tensor) -> str:
    """The head's name: as given (runs trace it once when they build their models), ``head`` for a
    ``LinearProbe``, else traced on ``example`` (callers such as notebooks that did not pass it)."""
    if head_name is not None:
        return head_name
    if isinstance(model, LinearProbe):
        return LinearProbe.HEAD
    return find_head(model, example)[0]


class _Steps:
    """What every step of a run shares, set up at its first batch (the head may be traced on it):
    the head, the step function, the head-input hook (backbone models) and, for Grad-Mimic, the scorer."""

    def __init__(self, model: nn.Module, reference: nn.Module | None, config: TrainConfig, head_name: str):
        self.model, self.reference, self.head_name = model, reference, head_name
        self.head = model.get_submodule(head_name)
        self.config = config
        self.scorer: PreparedScorer | None = None
        self.capture = None
        if isinstance(model, LinearProbe):
            self.run = _probe_step
        else:
            self.capture = _HeadInput(self.head)
            # a frozen backbone needs no backward pass at all: the head's gradient is closed form
            backbone_trains = any(
                p.requires_grad for n, p in model.named_parameters() if not n.startswith(head_name + ".")
            )
            self.run = functools.partial(_autograd_step, backbone_trains=backbone_trains)

    def prepare_scorer(self) -> PreparedScorer:
        """The head's scorer (cos included: records keep both), made by the first step once its losses
        are known to be finite, so a broken model is reported by the samples whose loss it breaks."""
        self.scorer = PreparedScorer(self.model, self.reference, params="head", method="cos", head_name=self.head_name)
        return self.scorer

    def close(self) -> None:
        """Remove the head-input hook."""
        if self.capture is not None:
            self.capture.remove()


class _LossSteps:
    """``_Steps`` for a run under a custom per-sample loss: the step is a ``LossStep``."""

    def __init__(
        self,
        model: nn.Module,
        reference: nn.Module | None,
        config: TrainConfig,
        loss: PerSampleLoss,
        mimic_params: Sequence[str] | None,
    ):

        def weigh(proj, cos, on):
            return _sample_weights(proj, cos, config, on)

        self.step = LossStep(
            model,
            reference,
            loss,
            mimic_params,
            config.reweight,
            weigh,
            lambda losses, index: _check_finite(losses, index, "loss"),
            need_cos=score_basis(config.method) == "cos",
        )
        self.scorer = self.step.scorer

    def run(self, model, steps, inputs, targets, index, weigh) -> dict[str, torch.Tensor]:
        """One step of the ``LossStep``."""
        return self.step(inputs, targets, index, weigh)

    def close(self) -> None:
        """Remove the ``LossStep``'s hook."""
        self.step.close()


def _steps_for(model, reference, config, head_name, inputs, loss, mimic_params):
    """The run's step set-up: the classifier's head path, or a ``LossStep`` under a custom loss."""
    if loss is None:
        if mimic_params is not None:
            raise ValueError("mimic_params is for a custom loss; a classifier's mimic layer is its head (head_name)")
        return _Steps(model, reference, config, head_of(model, head_name, inputs))
    return _LossSteps(model, reference, config, loss, mimic_params)


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9), fused where torch has a fused kernel for the parameters' device
    (one kernel per step instead of a Python loop over parameters: half the cost of a probe step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.AdamW
    extra = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    try:
        return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=True, **extra)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return kind(params, lr=config.lr, weight_decay=config.weight_decay, **extra)


class NonFiniteLossError(FloatingPointError):
    """A sample's loss is NaN or infinite; ``positions`` are the batch's dataset indices concerned."""

    def __init__(self, positions: list[int], what: str = "loss"):
        self.positions = positions
        super().__init__(f"non-finite {what} for samples at dataset positions {positions[:10]}")


def _check_finite(losses: torch.Tensor, index: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(losses)
    if bool(bad.any()):
        raise NonFiniteLossError(index[bad.cpu()].tolist(), what)


def train(
    model: nn.Module,
    batches: TensorBatches,
    config: TrainConfig,
    reference: nn.Module | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    start_epoch: int = 0,
    optimizer_state: dict | None = None,
    on_checkpoint: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None,
    grad_sync: Callable[[nn.Module], None] | None = None,
    steps_per_epoch: int | None = None,
    head_name: str | None = None,
    loss: PerSampleLoss | None = None,
    mimic_params: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``model`` in place. With ``reference``, Grad-Mimic re-weights the mimic layers' gradient.

    Every sample's loss and prediction are recorded at every epoch; with a reference also its proj,
    cos and Stage-1 weight, computed at the weights the step starts from. A ``LinearProbe`` (the head
    alone, on cached features) takes a path without autograd: its gradient is the closed form
    Σ_i w_i δ_i h_iᵀ, so a step is a handful of small matmuls. With ``loss`` the step is
    ``loss_step.LossStep``: the mimic layers ``mimic_params`` get the re-weighted Σ w_i g_i and every
    other parameter the mean gradient.

    Parameters
    ----------
    model
        The model to train (a classifier, a ``LinearProbe``, a ``DualEncoder`` or a part of one).
    batches
        The epochs' mini-batches: ``len(batches)`` samples, ``batches.epoch(e)`` yielding
        ``(index, inputs, targets)`` (``TensorBatches``, ``PoolBatches``, ``StreamedPairs``, …).
    config
        The schedule, the Stage-1 method, the seed and the device (``TrainConfig``).
    reference
        The better model (same architecture); None trains plainly.
    on_epoch
        Called with each epoch's ``EpochRecord`` (runs write it as a score part).
    progress
        Called as ``progress(samples_done, samples_total)``.
    start_epoch, optimizer_state
        Resume a run whose epochs before ``start_epoch`` are done, from its optimizer state.
    on_checkpoint
        Called as ``on_checkpoint(epoch, model, optimizer)`` after each epoch's ``on_epoch``, so a caller
        can persist the state.
    grad_sync
        Called with the model between the gradient computation and the optimizer step (distributed runs
        average the gradients there).
    steps_per_epoch
        How many steps an epoch counts in the ``step`` column (default: ⌈len(batches) / batch_size⌉;
        distributed runs pass their plan's batch count, which every rank shares).
    head_name
        The head's qualified name, as found when the run built its models (traced on the first batch
        when None).
    loss
        A ``scoring.losses.PerSampleLoss`` instead of the classifier's cross-entropy (e.g.
        ``scoring.contrastive.InfoNCELoss`` for a dual encoder: inputs may then be a tuple such as
        (images, tokens) and targets None).
    mimic_params
        With ``loss``: the names of the mimic layers' parameters (e.g. ``["text_projection.weight"]``).

    Returns
    -------
    TrainResult
        The trained model, every epoch's ``EpochRecord`` and the seconds the training took.

    Raises
    ------
    ValueError
        A bad ``config``, named by ``TrainConfig.validate``.
    NonFiniteLossError
        A sample's loss (or score) is NaN or infinite; names the samples.
    """
    import time

    config.validate(len(batches))
    device = torch.device(config.device)
    model.to(device)
    optimizer = _make_optimizer(model, config)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    steps: _Steps | None = None
    result = TrainResult(model)
    started = time.perf_counter()
    if steps_per_epoch is None:
        steps_per_epoch = math.ceil(len(batches) / config.batch_size)
    total_samples = len(batches) // getattr(batches, "world", 1) * (config.epochs - start_epoch)
    seen = 0
    try:
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(config.seed * 1_000 + epoch)  # per epoch, so a resumed run draws the same numbers
            model.train()
            weigh = epoch >= config.starting_epoch
            cols: dict[str, list] = {k: [] for k in ("index", "loss", "pred", "proj", "cos", "weight")}
            sizes: list[int] = []
            for index, inputs, targets in batches.epoch(epoch):
                if loss is None:
                    inputs, targets = inputs.to(device), targets.to(device)
                else:
                    inputs, targets = moved(inputs, device), moved(targets, device)
                if steps is None:
                    steps = _steps_for(model, reference, config, head_name, inputs, loss, mimic_params)
                out = steps.run(model, steps, inputs, targets, index, weigh)
                if grad_sync is not None:
                    grad_sync(model)
                optimizer.step()
                cols["index"].append(index)
                for key, value in out.items():
                    cols[key].append(value)
                sizes.append(len(index))
                seen += len(index)
                if progress is not None:
                    progress(seen, total_samples)
            cat = {k: (torch.cat(v).cpu().numpy() if v else None) for k, v in cols.items()}
            counts = np.asarray(sizes, dtype=np.int64)
            cat["step"] = np.repeat(np.arange(epoch * steps_per_epoch, epoch * steps_per_epoch + len(counts)), counts)
            cat["batch_size"] = np.repeat(counts, counts)
            record = EpochRecord(epoch=epoch, **cat)
            result.records.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if on_checkpoint is not None:
                on_checkpoint(epoch, model, optimizer)
    finally:
        if steps is not None:
            steps.close()
    result.seconds = time.perf_counter() - started
    return result


def _sample_weights(proj: torch.Tensor, cos: torch.Tensor, config: TrainConfig, weigh: bool) -> torch.Tensor:
    """Stage-1 weights, or uniform ones before ``starting_epoch``."""
    if not weigh:
        return torch.full_like(proj, 1.0 / len(proj))
    return stage1_weights(cos if score_basis(config.method) == "cos" else proj, config.method, config.temperature)


@torch.no_grad()
def _probe_step(model, steps: _Steps, features, targets, index, weigh) -> dict[str, torch.Tensor]:
    """One step of a linear probe, all closed form: no autograd and no module call, since every step
    of a probe on cached features is a handful of small tensor ops and their dispatch is its cost."""
    head = steps.head
    bias = head.bias
    logits = torch.addmm(bias, features, head.weight.t()) if bias is not None else features @ head.weight.t()
    losses, delta = cross_entropy_with_output_grad(logits, targets)
    _check_finite(losses, index, "loss")
    out = {"loss": losses, "pred": logits.argmax(-1)}
    if steps.reference is not None:
        scorer = steps.scorer or steps.prepare_scorer()
        scorer.refresh()  # the task vector at the weights this step starts from
        proj, cos, _ = scorer.project_head(features, delta)
        weights = _sample_weights(proj, cos, steps.config, weigh)
        out.update(proj=proj, cos=cos, weight=weights)
    else:
        weights = torch.full_like(losses, 1.0 / len(losses))  # plain training: the mean gradient
    head.weight.grad, grad_b = linear_weighted_grad(features, delta, weights, bias is not None)
    if bias is not None:
        bias.grad = grad_b
    return out


def _autograd_step(
    model, steps: _Steps, inputs, targets, index, weigh, *, backbone_trains: bool
) -> dict[str, torch.Tensor]:
    """One step of a model with a backbone: one forward and (when the backbone trains) one backward;
    the head's re-weighted gradient is closed form from the captured head input."""
    head, config = steps.head, steps.config
    model.zero_grad(set_to_none=True)
    logits = model(inputs)
    losses = F.cross_entropy(logits, targets, reduction="none")
    _check_finite(losses.detach(), index, "loss")
    out = {"loss": losses.detach(), "pred": logits.detach().argmax(-1)}
    if steps.reference is None:
        losses.mean().backward()
        return out
    features = steps.capture.value.detach()
    delta = cross_entropy_output_grad(logits.detach(), targets)
    scorer = steps.scorer or steps.prepare_scorer()
    scorer.refresh()
    proj, cos, _ = scorer.project_head(features, delta)
    weights = _sample_weights(proj, cos, config, weigh)
    if config.reweight == "all":
        (losses * weights).sum().backward()
    else:
        if backbone_trains:
            losses.mean().backward()
        head.weight.grad, grad_b = linear_weighted_grad(features, delta, weights, head.bias is not None)
        if head.bias is not None:
            head.bias.grad = grad_b
    out.update(proj=proj, cos=cos, weight=weights.detach())
    return out


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``inputs`` (in eval mode, which is restored afterwards)."""
    was = model.training
    model.eval()
    try:
        return float((model(inputs).argmax(-1) == targets).float().mean())
    finally:
        model.train(was)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy: references and Grad-Mimic runs start from the *same* initial weights."""
    return copy.deepcopy(model)
