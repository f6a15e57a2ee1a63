"""Stage 1 on image–text pairs: the frozen-tower mode and the end-of-run per-pair signals.

Why a module of its own: ``train`` already runs any per-sample loss (``loss_step``); what pairs add is
(1) the frozen-tower mode, the analogue of a linear probe — the towers' outputs are computed once
(``tower_features``; a run may cache them), and only the projections and the logit scale train on
them (``train_projections``), so an epoch costs a few matmuls and no text-encoder op ever meets
forward mode — and (2) the signals a DataComp user compares the mimic score with: the CLIP score
(cosine of a pair's two embeddings) under the reference and under the model, and the per-pair losses
(``collect_pair_signals``). Each pair's InfoNCE term depends on its batch, so every signal row carries
the number of the batch it was scored in and that batch's size (``scoring.contrastive``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.models.dual import DualEncoder, ProjectionProbe, mimic_layer_params, tower_differences
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.scoring.losses import PerSampleLoss
from mimic_explorer.scoring.prepared import PreparedScorer
from mimic_explorer.scoring.trees import as_args, moved
from mimic_explorer.training.loop import TensorBatches, TrainConfig, TrainResult, train

PAIR_SIGNALS = (
    "index", "batch", "batch_size", "model_loss", "reference_loss", "reducible_loss", "grand",
    "final_proj", "final_cos", "model_pred", "clip_score_model", "clip_score_ref",
)


@torch.no_grad()
def tower_features(model: DualEncoder, batches: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu") -> Tensor:
    """(N, image_dim + text_dim) tower outputs of ``(images, tokens)`` batches, in eval mode, on the CPU:
    what ``train_projections`` and a ``ProjectionProbe`` take."""
    parts = []
    with preserved_modes(model):  # eval mode, restored after
        for images, tokens in batches:
            parts.append(model.tower_features(images.to(device), tokens.to(device)).cpu())
    if not parts:
        raise ValueError("no pairs to compute tower features of")
    return torch.cat(parts)


def pair_batches(inputs: Tensor | tuple[Tensor, ...], batch_size: int, seed: int, rank: int = 0, world: int = 1) -> TensorBatches:
    """Seeded shuffled batches of pairs (no targets: pair i's caption is text i); a last batch of one
    pair joins the one before, since InfoNCE needs negatives."""
    if batch_size < 2:
        raise ValueError(f"a batch of image-text pairs needs at least 2 pairs (InfoNCE's negatives), got batch size {batch_size}")
    return TensorBatches(inputs, None, batch_size, seed, rank, world, min_batch=2)


def projection_probes(model: DualEncoder, reference: DualEncoder | None) -> tuple[ProjectionProbe, ProjectionProbe | None]:
    """The probes a frozen-tower run trains and scores against: ``model``'s own projections (shared,
    so training them trains the model) and the reference's. Warns when the reference's towers differ
    from the model's: its projections then act on features it was not trained on (no shared basis)."""
    if reference is not None:
        different = tower_differences(model, reference)
        if different:
            warnings.warn(
                f"the reference's towers differ from the model's in {len(different)} tensors (e.g. {different[0]}): "
                "frozen-tower scores assume one shared feature basis; use a reference fine-tuned from the "
                "model's towers with them frozen",
                UserWarning,
                stacklevel=3,
            )
    return ProjectionProbe.sharing(model), (ProjectionProbe.sharing(reference) if reference is not None else None)


def train_projections(
    model: DualEncoder,
    features: Tensor,
    config: TrainConfig,
    reference: DualEncoder | None = None,
    *,
    mimic_layer: str | Sequence[str] = "text",
    rank: int = 0,
    world: int = 1,
    **train_options: Any,
) -> TrainResult:
    """The frozen-tower mode: train ``model``'s projections and logit scale in place on cached tower
    outputs ``features`` (rows = pairs, as ``tower_features`` returns them) under InfoNCE; with a
    reference, Grad-Mimic on ``mimic_layer`` ("image", "text" or parameter names of the probe).

    Records' ``index`` are rows of ``features``. ``result.model`` is the ``ProjectionProbe`` (whose
    parameters are the model's). ``rank``/``world`` split the batches as ``TensorBatches`` does;
    ``train_options`` (``on_epoch``, ``progress``, ``start_epoch``, ``optimizer_state``,
    ``on_checkpoint``, ``grad_sync``, ``steps_per_epoch``) go to ``train`` as they are.
    """
    probe, reference_probe = projection_probes(model, reference)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in probe.parameters():
        p.requires_grad_(True)
    names = mimic_layer_params(probe, mimic_layer) if reference is not None else None
    batches = pair_batches(features.to(config.device), config.batch_size, config.seed, rank, world)
    return train(probe, batches, config, reference=reference_probe, loss=InfoNCELoss(), mimic_params=names, **train_options)


@torch.no_grad()
def collect_pair_signals(
    model: nn.Module,
    reference: nn.Module,
    batches: Iterable[tuple[Tensor, Any, Any]],
    device: str | torch.device = "cpu",
    *,
    mimic_params: str | Sequence[str] = "text",
    loss: PerSampleLoss | None = None,
) -> dict[str, np.ndarray]:
    """Per-pair end-of-run signals (eval mode) over ``(index, inputs, targets)`` batches of a dual
    encoder (inputs (images, tokens)) or a ``ProjectionProbe`` (inputs: cached tower features).

    Keys (``PAIR_SIGNALS``), one row per pair: ``index``; ``batch`` (0, 1, … in the order given) and
    ``batch_size`` — the batch each pair was scored in; ``model_loss`` / ``reference_loss`` (its
    InfoNCE term in that batch) and ``reducible_loss``; ``final_proj`` / ``final_cos`` / ``grand``
    (‖g_i‖) on the mimic layer at the final weights; ``model_pred`` (in-batch top-1); and
    ``clip_score_model`` / ``clip_score_ref`` (the cosine of the pair's two embeddings: DataComp's
    CLIP score, which does not depend on the batch).
    """
    loss = loss if loss is not None else InfoNCELoss()
    names = mimic_layer_params(model, mimic_params)
    scorer = PreparedScorer(model, reference, params=names, method="cos", loss=loss)
    out: dict[str, list] = {k: [] for k in PAIR_SIGNALS if k != "reducible_loss"}
    with preserved_modes(reference):  # eval mode, restored after
        for number, (index, inputs, targets) in enumerate(batches):
            inputs, targets = moved(inputs, device), moved(targets, device)
            scores = scorer(inputs, targets)
            ref_out = reference(*as_args(inputs))
            size = len(scores.loss)
            out["index"].append(torch.as_tensor(index))
            out["batch"].append(torch.full((size,), number, dtype=torch.long))
            out["batch_size"].append(torch.full((size,), size, dtype=torch.long))
            out["model_loss"].append(scores.loss)
            out["reference_loss"].append(loss(ref_out, targets))
            out["grand"].append(scores.grad_norm)
            out["final_proj"].append(scores.proj)
            out["final_cos"].append(scores.cos)
            out["model_pred"].append(loss.predict(scores.outputs) if hasattr(loss, "predict") else torch.full((size,), -1))
            out["clip_score_model"].append(clip_score(scores.outputs[0], scores.outputs[1]))
            out["clip_score_ref"].append(clip_score(ref_out[0], ref_out[1]))
    if not out["index"]:
        raise ValueError("no batches of pairs to collect signals from")
    signals = {k: torch.cat([t.detach().cpu() for t in v]).numpy() for k, v in out.items()}
    signals["reducible_loss"] = signals["model_loss"] - signals["reference_loss"]
    return signals


def evaluate_pair_signals(
    model: nn.Module,
    reference: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    batch_size: int = 256,
    *,
    mimic_params: str | Sequence[str] = "text",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``collect_pair_signals`` over in-memory pairs (cached tower features for a probe, or
    (images, tokens)), in seeded random batches (``pair_batches(…).epoch(0)``): a pair is scored
    against random negatives, not its neighbours in the pool's order. Rows follow the batches; use
    ``index`` to place them."""
    batches = pair_batches(inputs, batch_size, seed)
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return collect_pair_signals(model, reference, batches.epoch(0), first.device, mimic_params=mimic_params)
