"""Per-sample signals at the end of a run, beside the mimic score: what users compare it with.

Labelled samples (``collect_signals``): the loss under the model and under the reference, the
reducible loss (RHO-LOSS), the head-gradient norm (GraNd), proj at the final weights and the model's
prediction. Image-text pairs (``collect_pair_signals``): the same per pair — its InfoNCE term in the
batch it was scored in, so every row carries that batch's number and size — plus the CLIP score (the
cosine of a pair's two embeddings, DataComp's standard filter) under the model and the reference.
Both run in eval mode and compute the model's part with the run's own ``PreparedScorer``, so the
scores here and those recorded during training come from one function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimic_explorer.models.dual import mimic_layer_params
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score
from mimic_explorer.scoring.losses import PerSampleLoss
from mimic_explorer.scoring.prepared import PreparedScorer
from mimic_explorer.scoring.trees import as_args, moved
from mimic_explorer.training.loop import head_of

PAIR_SIGNALS = (
    "index",
    "batch",
    "batch_size",
    "model_loss",
    "reference_loss",
    "reducible_loss",
    "grand",
    "final_proj",
    "final_cos",
    "model_pred",
    "clip_score_model",
    "clip_score_ref",
)
#: the reference's embeddings of each pair's photo and caption (vectors: run arrays, not samples columns)
PAIR_EMBEDDINGS = ("embedding_image", "embedding_text")


def _pooled(inputs: Tensor) -> Tensor:
    """A head's input as one vector per sample: token or spatial positions averaged ((B, T, F) → (B, F))."""
    if inputs.ndim <= 2:
        return inputs
    return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).mean(dim=1)


def _head_input_recorder(head: nn.Module) -> tuple[list[Tensor], Any]:
    """Record the input of each call of ``head``, one vector per sample (``_pooled``): the map's vector. Returns
    the list it fills and the hook's handle (remove it when done)."""
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: captured.append(_pooled(args[0].detach())))
    return captured, handle


def _reference_class_outputs(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """A classifier reference's per-sample loss (on ``logits`` as given), suggested label and its probability,
    and class probabilities (computed in float32)."""
    probs = torch.softmax(logits.float(), dim=-1)
    best = probs.max(dim=-1)
    return {
        "reference_loss": F.cross_entropy(logits, targets, reduction="none"),
        "ref_pred": best.indices,
        "ref_prob": best.values,
        "reference_probs": probs,
    }


def unit_embeddings(image: Tensor, text: Tensor) -> dict[str, Tensor]:
    """A dual encoder's image and caption embeddings at unit length, float16 (``PAIR_EMBEDDINGS``: the map's
    vectors)."""
    return {
        "embedding_image": F.normalize(image.float(), dim=-1).to(torch.float16),
        "embedding_text": F.normalize(text.float(), dim=-1).to(torch.float16),
    }


@torch.no_grad()
def collect_signals(
    model: nn.Module,
    reference: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
    *,
    head_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample end-of-training signals (eval mode) over ``(index, inputs, targets)`` batches:
    losses under model and reference, the reducible loss (RHO-LOSS), the head-gradient norm (GraNd),
    proj at the final weights and the model's prediction; ``index`` says which sample each row is.
    The model's part comes from one pass of the head scorer per batch; ``head_name`` as for ``train``.

    The same pass gives the suggested label and the map's vectors: the reference's predicted class
    and its probability (``ref_pred``, ``ref_prob``), its class probabilities (``reference_probs``,
    (B, classes) float32: cleanlab's ``pred_probs``) and the model's head inputs (``embedding_image``,
    float16: a linear probe's cached backbone features, a fine-tuned network's penultimate features
    at the end of the run)."""
    scorer: PreparedScorer | None = None
    was = reference.training
    reference.eval()
    keys = ("index", "model_loss", "reference_loss", "grand", "final_proj", "model_pred", "ref_pred", "ref_prob")
    out: dict[str, list] = {k: [] for k in (*keys, "reference_probs", "embedding_image")}
    hook = None
    try:
        for index, x, y in batches:
            x, y = x.to(device), y.to(device)
            if scorer is None:
                name = head_of(model, head_name, x)
                scorer = PreparedScorer(model, reference, params="head", method="cos", head_name=name)
                captured, hook = _head_input_recorder(model.get_submodule(name))
            captured.clear()
            scores = scorer(x, y)
            out["index"].append(torch.as_tensor(index))
            out["model_loss"].append(scores.loss)
            out["grand"].append(scores.grad_norm)
            out["final_proj"].append(scores.proj)
            out["model_pred"].append(scores.outputs.argmax(-1))
            for key, values in _reference_class_outputs(reference(x), y).items():
                out[key].append(values)
            if captured:
                out["embedding_image"].append(captured[-1].reshape(len(y), -1).to(torch.float16))
    finally:
        reference.train(was)
        if hook is not None:
            hook.remove()
    if not out["index"]:
        return {"index": np.zeros(0, dtype=np.int64)}
    signals = {k: torch.cat(v).cpu().numpy() for k, v in out.items() if v}
    signals["reducible_loss"] = signals["model_loss"] - signals["reference_loss"]
    return signals


@torch.no_grad()
def reference_class_signals(
    reference: nn.Module, inputs: Tensor, targets: Tensor, head_name: str | None = None
) -> dict[str, np.ndarray]:
    """One batch's signals under a classifier's reference alone (eval mode): its loss, its suggested label
    (``ref_pred``, ``ref_prob``), its class probabilities (``reference_probs``, float32: cleanlab's
    ``pred_probs``) and its head input (``embedding_image``, float16: the map's vector).

    What a ``score`` run keeps per sample: scoring a fixed checkpoint has no end-of-run pass, so the
    reference's pass over each scoring batch gives these. The vector is the *reference's* head input —
    for a linear probe, the shared backbone's features (as a train run's); for a whole network, the
    reference's penultimate features, as a pairs run maps the reference's embeddings."""
    captured, hook = _head_input_recorder(reference.get_submodule(head_of(reference, head_name, inputs)))
    try:
        with preserved_modes(reference):
            logits = reference(inputs).float()
    finally:
        hook.remove()
    found = _reference_class_outputs(logits, targets.long())
    if captured and captured[-1].shape[0] == len(targets):
        found["embedding_image"] = captured[-1].reshape(len(targets), -1).to(torch.float16)
    return {key: value.cpu().numpy() for key, value in found.items()}


def evaluate_signals(
    model: nn.Module,
    reference: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int = 1024,
    *,
    head_name: str | None = None,
) -> dict[str, np.ndarray]:
    """``collect_signals`` over in-memory tensors, rows in tensor order."""
    batches = (
        (torch.arange(s, min(s + batch_size, len(targets))), inputs[s : s + batch_size], targets[s : s + batch_size])
        for s in range(0, len(targets), batch_size)
    )
    return collect_signals(model, reference, batches, inputs.device, head_name=head_name)


@torch.no_grad()
def collect_pair_signals(
    model: nn.Module,
    reference: nn.Module,
    batches: Iterable[tuple[Tensor, Any, Any]],
    device: str | torch.device = "cpu",
    *,
    mimic_params: str | Sequence[str] = "text",
    loss: PerSampleLoss | None = None,
    vectors: Callable[[np.ndarray, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Per-pair end-of-run signals (eval mode) over ``(index, inputs, targets)`` batches of a dual
    encoder (inputs (images, tokens)) or a ``ProjectionProbe`` (inputs: cached tower features).

    Keys (``PAIR_SIGNALS``), one row per pair: ``index``; ``batch`` (0, 1, … in the order given) and
    ``batch_size`` — the batch each pair was scored in; ``model_loss`` / ``reference_loss`` (its
    InfoNCE term in that batch) and ``reducible_loss``; ``final_proj`` / ``final_cos`` / ``grand``
    (‖g_i‖) on the mimic layer at the final weights; ``model_pred`` (in-batch top-1); and
    ``clip_score_model`` / ``clip_score_ref`` (the cosine of the pair's two embeddings: DataComp's
    CLIP score, which does not depend on the batch); and ``PAIR_EMBEDDINGS``, (pairs, dim) float16: the
    pair's image and caption embeddings under the reference, unit length (the map's vectors) — or, with
    ``vectors``, handed to ``vectors(index, {name: values})`` batch by batch and not returned (a pool of
    millions of pairs keeps its embeddings on disk, not in memory).
    """
    loss = loss if loss is not None else InfoNCELoss()
    names = mimic_layer_params(model, mimic_params)
    scorer = PreparedScorer(model, reference, params=names, method="cos", loss=loss)
    out: dict[str, list] = {k: [] for k in (*PAIR_SIGNALS, *PAIR_EMBEDDINGS) if k != "reducible_loss"}
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
            out["model_pred"].append(
                loss.predict(scores.outputs) if hasattr(loss, "predict") else torch.full((size,), -1)
            )
            out["clip_score_model"].append(clip_score(scores.outputs[0], scores.outputs[1]))
            out["clip_score_ref"].append(clip_score(ref_out[0], ref_out[1]))
            embedded = unit_embeddings(ref_out[0], ref_out[1])
            if vectors is None:
                for name, values in embedded.items():
                    out[name].append(values)
            else:
                vectors(np.asarray(index), {name: v.cpu().numpy() for name, v in embedded.items()})
    if not out["index"]:
        raise ValueError("no batches of pairs to collect signals from")
    signals = {k: torch.cat([t.detach().cpu() for t in v]).numpy() for k, v in out.items() if v}
    signals["reducible_loss"] = signals["model_loss"] - signals["reference_loss"]
    return signals
