"""Stage 1 of a dual encoder: which of its parts train, on which inputs, plainly or with Grad-Mimic.

Three ways a dual encoder trains (``tasks.pairs`` picks one per run):

- **Frozen towers** (the analogue of a linear probe): the towers' outputs are computed once
  (``tower_features``) and only the projections and the logit scale train on them (a
  ``ProjectionProbe``, ``train_projections``), so an epoch costs a few matmuls and no text-encoder op
  ever meets forward mode.
- **Frozen image tower** (``freeze_image=True``): its outputs are computed once and a ``TextSide`` —
  the model without its image tower, sharing every other module — trains on them. A small CNN
  pretrained on another image set keeps its features (a thousand photos would overfit it) and an
  epoch costs no image convolution.
- **Both towers learn**: the whole model trains, its images decoded again every epoch
  (``training.pool_batches.StreamedPairs``) or held (``train_towers``).

A photo may carry several captions (Flickr8k and COCO list five): ``caption_sets`` holds them and
``training.batches.CaptionDraws`` draws one per photo per batch. With a reference, Grad-Mimic
re-weights the mimic layer (a tower's last linear projection: Σ wᵢ gᵢ) and every other parameter gets
the mean gradient (``training.loss_step.LossStep``); with the image tower frozen the reference runs
through its own ``TextSide`` on the model's cached image-tower outputs, so its image tower must be the
model's (``image_tower_differences``). The towers drift from the reference's while they learn, and a
projection's task vector only means something while they share a basis: runs measure the drift
(``models.distance``) and warn. Each pair's loss is its symmetric InfoNCE term within its batch
(``scoring.contrastive.InfoNCELoss``); the loop is ``training.loop.train`` with that loss, so records,
resuming and checkpoints work as elsewhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.models.dual import DualEncoder, DualOutput, ProjectionProbe, mimic_layer_params, tower_differences
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.training.batches import CaptionDraws, TensorBatches, pair_batches
from mimic_explorer.training.loop import TrainConfig, TrainResult, train


@torch.no_grad()
def tower_features(
    model: DualEncoder, batches: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu"
) -> Tensor:
    """(N, image_dim + text_dim) tower outputs of ``(images, tokens)`` batches, in eval mode, on the CPU:
    what ``train_projections`` and a ``ProjectionProbe`` take."""
    parts = []
    with preserved_modes(model):  # eval mode, restored after
        for images, tokens in batches:
            parts.append(model.tower_features(images.to(device), tokens.to(device)).cpu())
    if not parts:
        raise ValueError("no pairs to compute tower features of")
    return torch.cat(parts)


def _projection_probes(
    model: DualEncoder, reference: DualEncoder | None
) -> tuple[ProjectionProbe, ProjectionProbe | None]:
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
    probe, reference_probe = _projection_probes(model, reference)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in probe.parameters():
        p.requires_grad_(True)
    names = mimic_layer_params(probe, mimic_layer) if reference is not None else None
    batches = pair_batches(features.to(config.device), config.batch_size, config.seed, rank, world)
    return train(
        probe, batches, config, reference=reference_probe, loss=InfoNCELoss(), mimic_params=names, **train_options
    )


class TextSide(nn.Module):
    """A dual encoder without its image tower, on cached image-tower outputs: ``forward(image_features,
    tokens)`` → ``DualOutput``. It holds the model's own modules under the model's names
    (``image_projection``, ``text_tower``, ``text_projection``, ``logit_scale``), so training it
    trains the model in place and a reference's parameter names still match."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.image_projection = model.image_projection
        self.text_projection = model.text_projection
        self.text_tower = model.text_tower
        self.logit_scale = model.logit_scale

    def forward(self, image_features: Tensor, tokens: Tensor) -> DualOutput:
        """The ``DualOutput`` of cached image-tower outputs and caption tokens."""
        return DualOutput(
            self.image_projection(image_features), self.text_projection(self.text_tower(tokens)), self.logit_scale.exp()
        )


def caption_sets(tokenizer, captions: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
    """Every photo's captions as token ids ``(N, K, L)`` (K = the most captions of one photo; missing
    ones are copies of the first) and how many each photo has ``(N,)``."""
    if not captions or any(len(c) == 0 for c in captions):
        raise ValueError("every photo needs at least one caption")
    width = max(len(c) for c in captions)
    padded = [list(c) + [c[0]] * (width - len(c)) for c in captions]
    flat = tokenizer.encode([t for row in padded for t in row]).ids
    return flat.reshape(len(captions), width, -1), torch.tensor([len(c) for c in captions], dtype=torch.long)


def trainable_part(model: DualEncoder, freeze_image: bool) -> nn.Module:
    """What the optimiser sees: the whole model, or its ``TextSide`` with the image tower frozen."""
    if not freeze_image:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.image_tower.parameters():
        p.requires_grad_(False)
    part = TextSide(model)
    for p in part.parameters():
        p.requires_grad_(True)
    return part


@torch.no_grad()
def image_inputs(
    model: DualEncoder, images: Tensor, freeze_image: bool, device: str | torch.device = "cpu", batch_size: int = 256
) -> Tensor:
    """What ``CaptionDraws`` batches: the image-tower outputs (eval mode, on the CPU) when the image
    tower is frozen, else the preprocessed images themselves."""
    if not freeze_image:
        return images
    with preserved_modes(model):
        return torch.cat(
            [
                model.eval().image_features(images[s : s + batch_size].to(device)).cpu()
                for s in range(0, len(images), batch_size)
            ]
        )


def image_tower_differences(model: DualEncoder, reference: DualEncoder) -> list[str]:
    """Names of the image tower's tensors where ``reference`` differs from ``model`` (``tower_differences``
    restricted to it): with the image tower frozen the reference scores the model's cached image-tower
    outputs, valid only when empty."""
    return [name for name in tower_differences(model, reference) if name.startswith("image_tower.")]


def reference_part(reference: DualEncoder, freeze_image: bool) -> nn.Module:
    """The reference as the trained part sees its inputs: whole, or its ``TextSide`` on cached
    image-tower outputs (eval mode; its parameters never train)."""
    for p in reference.parameters():
        p.requires_grad_(False)
    return (TextSide(reference) if freeze_image else reference).eval()


def train_towers(
    model: DualEncoder,
    images: Tensor,
    token_sets: Tensor,
    counts: Tensor,
    config: TrainConfig,
    *,
    freeze_image: bool = False,
    reference: DualEncoder | None = None,
    mimic_layer: str | Sequence[str] = "text",
    rank: int = 0,
    world: int = 1,
    **train_options: Any,
) -> TrainResult:
    """Train ``model`` in place under InfoNCE on pairs held in memory: ``images`` as ``image_inputs``
    returns them, ``token_sets`` / ``counts`` as ``caption_sets`` does; records' ``index`` are their
    rows. The rest as ``train_tower_batches``."""
    batches = CaptionDraws(
        images.to(config.device),
        token_sets.to(config.device),
        counts.to(config.device),
        config.batch_size,
        config.seed,
        rank,
        world,
    )
    return train_tower_batches(
        model, batches, config, freeze_image=freeze_image, reference=reference, mimic_layer=mimic_layer, **train_options
    )


def train_tower_batches(
    model: DualEncoder,
    batches: TensorBatches,
    config: TrainConfig,
    *,
    freeze_image: bool = False,
    reference: DualEncoder | None = None,
    mimic_layer: str | Sequence[str] = "text",
    **train_options: Any,
) -> TrainResult:
    """Train ``model`` in place under InfoNCE on ``batches`` (anything with ``TensorBatches``'
    interface yielding (index, (image inputs, tokens), None), e.g. ``CaptionDraws`` or pairs decoded
    per epoch): the text tower, both projections and the logit scale, and the image tower unless
    ``freeze_image``; plainly, or with a ``reference`` Grad-Mimic on ``mimic_layer`` ("image", "text"
    or parameter names of the trained part). ``train_options`` go to ``train`` as they are (resuming,
    checkpoints, progress, gradient sync)."""
    if reference is not None and freeze_image:
        differing = image_tower_differences(model, reference)
        if differing:
            raise ValueError(
                f"with the image tower frozen the reference scores the model's cached image-tower outputs, "
                f"but the reference's image tower differs from the model's ({len(differing)} tensor(s), e.g. "
                f"{differing[0]}); train both towers or use a reference with the model's image tower"
            )
    part = trainable_part(model, freeze_image)
    ref_part = reference_part(reference, freeze_image) if reference is not None else None
    names = mimic_layer_params(part, mimic_layer) if reference is not None else None
    return train(part, batches, config, reference=ref_part, loss=InfoNCELoss(), mimic_params=names, **train_options)


def draw_counts(counts: Tensor) -> dict[str, float]:
    """How many captions the photos carry: a run's summary line."""
    values = np.asarray(counts.cpu().numpy(), dtype=np.int64)
    return {"photos": len(values), "captions": int(values.sum()), "max_per_photo": int(values.max(initial=0))}
