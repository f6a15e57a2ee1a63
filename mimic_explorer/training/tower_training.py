"""Stage 1 on image–text pairs with trainable towers: contrastive training of the built-in dual
encoder, plainly (the way a small "pretrained" checkpoint is made) or with Grad-Mimic.

Why a module of its own: the frozen-tower mode (``pair_training``) trains only the projections on
cached tower outputs; making the checkpoint that plays the public CLIP needs the text tower (and,
when asked, the image tower) to learn too, and the paper's CLIP runs re-weight a projection while
the towers learn. Three choices shape it:

- **The image tower may stay frozen** (``freeze_image=True``): its outputs are computed once and a
  ``TextSide`` module — the model without its image tower, sharing every other module — trains on
  them. A small CNN pretrained on another image set keeps its features (a thousand photos would
  overfit it) and an epoch costs no image convolution. Without it, the preprocessed images are held in
  memory and the whole model trains (no augmentation).
- **A photo may carry several captions** (Flickr8k and COCO list five): ``CaptionDraws`` pairs each
  photo, each time it is drawn into a batch, with one of its captions chosen at random (seeded by the
  run's seed and the epoch, so a resumed run draws the same), which uses every caption without putting
  two captions of one photo into one batch as each other's false negatives.
- **Grad-Mimic** (``reference=``): the mimic layer (a tower's last linear projection) gets Σ wᵢ gᵢ,
  every other parameter the mean gradient (``loss_step.LossStep``); the reference runs on the same
  inputs — with the image tower frozen, on the cached image-tower outputs, so the reference's image
  tower must be the model's (``image_tower_differences``). The towers drift from the reference's
  while they learn, and a projection's task vector only means something while they share a basis:
  callers measure the drift (``pairs_setup.tower_distance``) and warn.

Each pair's loss is its symmetric InfoNCE term within its batch (``scoring.contrastive.InfoNCELoss``);
the loop is ``train.train`` with that loss, so records, resuming and checkpoints work as elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.models.dual import DualEncoder, DualOutput, mimic_layer_params, tower_differences
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.scoring.context import preserved_modes
from mimic_explorer.training.loop import TensorBatches, TrainConfig, TrainResult, train


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
        return DualOutput(self.image_projection(image_features), self.text_projection(self.text_tower(tokens)),
                          self.logit_scale.exp())


def caption_sets(tokenizer, captions: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
    """Every photo's captions as token ids ``(N, K, L)`` (K = the most captions of one photo; missing
    ones are copies of the first) and how many each photo has ``(N,)``."""
    if not captions or any(len(c) == 0 for c in captions):
        raise ValueError("every photo needs at least one caption")
    width = max(len(c) for c in captions)
    padded = [list(c) + [c[0]] * (width - len(c)) for c in captions]
    flat = tokenizer.encode([t for row in padded for t in row]).ids
    return flat.reshape(len(captions), width, -1), torch.tensor([len(c) for c in captions], dtype=torch.long)


class CaptionDraws(TensorBatches):
    """``TensorBatches`` of (image inputs, caption tokens) where each photo's caption is drawn at random
    from its ``counts[i]`` captions each time the photo is drawn into a batch (see the module).

    ``images``: (N, …) preprocessed images or image-tower outputs; ``token_sets``: (N, K, L) from
    ``caption_sets``. With K = 1 every photo keeps its one caption."""

    def __init__(self, images: Tensor, token_sets: Tensor, counts: Tensor, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        if batch_size < 2:
            raise ValueError(f"a batch of image-text pairs needs at least 2 pairs (InfoNCE's negatives), got batch size {batch_size}")
        super().__init__((images, token_sets, counts), None, batch_size, seed, rank, world, min_batch=2)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Any, None]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7)
        for index, (images, sets, counts), _ in super().epoch(epoch):
            draw = (torch.rand(len(index), generator=generator) * counts.cpu()).long().to(sets.device)
            yield index, (images, sets[torch.arange(len(index), device=sets.device), draw]), None


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
def image_inputs(model: DualEncoder, images: Tensor, freeze_image: bool, device: str | torch.device = "cpu",
                 batch_size: int = 256) -> Tensor:
    """What ``CaptionDraws`` batches: the image-tower outputs (eval mode, on the CPU) when the image
    tower is frozen, else the preprocessed images themselves."""
    if not freeze_image:
        return images
    with preserved_modes(model):
        return torch.cat([model.eval().image_features(images[s : s + batch_size].to(device)).cpu()
                          for s in range(0, len(images), batch_size)])


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


def train_towers(model: DualEncoder, images: Tensor, token_sets: Tensor, counts: Tensor, config: TrainConfig, *,
                 freeze_image: bool = False, reference: DualEncoder | None = None,
                 mimic_layer: str | Sequence[str] = "text", rank: int = 0, world: int = 1,
                 **train_options: Any) -> TrainResult:
    """Train ``model`` in place under InfoNCE on pairs held in memory: ``images`` as ``image_inputs``
    returns them, ``token_sets`` / ``counts`` as ``caption_sets`` does; records' ``index`` are their
    rows. The rest as ``train_tower_batches``."""
    batches = CaptionDraws(images.to(config.device), token_sets.to(config.device), counts.to(config.device),
                           config.batch_size, config.seed, rank, world)
    return train_tower_batches(model, batches, config, freeze_image=freeze_image, reference=reference,
                               mimic_layer=mimic_layer, **train_options)


def train_tower_batches(model: DualEncoder, batches: TensorBatches, config: TrainConfig, *, freeze_image: bool = False,
                        reference: DualEncoder | None = None, mimic_layer: str | Sequence[str] = "text",
                        **train_options: Any) -> TrainResult:
    """Train ``model`` in place under InfoNCE on ``batches`` (anything with ``TensorBatches``'
    interface yielding (index, (image inputs, tokens), None), e.g. ``CaptionDraws`` or pairs decoded
    per epoch): the text tower, both projections and the logit scale, and the image tower unless
    ``freeze_image``; plainly, or with a ``reference`` Grad-Mimic on ``mimic_layer`` ("image", "text"
    or parameter names of the trained part). ``train_options`` go to ``train`` as they are (resuming,
    checkpoints, progress, gradient sync)."""
    if reference is not None and freeze_image:
        differing = image_tower_differences(model, reference)
        if differing:
            raise ValueError(f"with the image tower frozen the reference scores the model's cached image-tower outputs, "
                             f"but the reference's image tower differs from the model's ({len(differing)} tensor(s), e.g. "
                             f"{differing[0]}); train both towers or use a reference with the model's image tower")
    part = trainable_part(model, freeze_image)
    ref_part = reference_part(reference, freeze_image) if reference is not None else None
    names = mimic_layer_params(part, mimic_layer) if reference is not None else None
    return train(part, batches, config, reference=ref_part, loss=InfoNCELoss(), mimic_params=names, **train_options)


def draw_counts(counts: Tensor) -> dict[str, float]:
    """How many captions the photos carry: a run's summary line."""
    values = np.asarray(counts.cpu().numpy(), dtype=np.int64)
    return {"photos": int(len(values)), "captions": int(values.sum()), "max_per_photo": int(values.max(initial=0))}
