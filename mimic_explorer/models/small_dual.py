"""The built-in small dual encoder: any image ARCH without its classifier + a bag-of-words text tower.

Why: image-text scoring must be testable and teachable on a CPU in minutes, without downloading a
CLIP. The image side is an image ARCH of ``models.registry`` (``small_cnn``, ``resnet18``, a factory…)
with its head removed, optionally initialised from an image checkpoint (a CNN trained on CIFAR-10
plays the "pretrained" tower); the text side is ``models.text``. Both end in a bias-free linear
projection to a shared embedding space, as in CLIP (docs/ARCHITECTURE.md, "Image-text pairs").

A saved state dict carries everything needed to rebuild the model (vocabulary, context length, layer
sizes come from its tensors): ``small_dual_encoder_from_state`` needs only the image ARCH besides it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mimic_explorer.models.checkpoints import CheckpointError, load_checkpoint, read_state_dict
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.registry import build_model, strip_head
from mimic_explorer.models.text import BagOfWordsText, WordTokenizer
from mimic_explorer.scoring.context import preserved_modes

#: CLIP's initial logit scale, 1/0.07 (stored as its log).
INITIAL_LOG_SCALE = math.log(1 / 0.07)


class SmallDualEncoder(DualEncoder):
    """``image_tower`` (image ARCH minus head) → ``image_projection``; ``text_tower``
    (``BagOfWordsText``) → ``text_projection``; ``logit_scale`` (log)."""

    def __init__(
        self,
        image_tower: nn.Module,
        image_dim: int,
        text_tower: BagOfWordsText,
        embed_dim: int = 64,
        log_scale: float = INITIAL_LOG_SCALE,
    ):
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.image_projection = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_tower.width, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(log_scale)))

    @property
    def tokenizer(self) -> WordTokenizer:  # type: ignore[override]
        """The text tower's word tokenizer (its vocabulary is a buffer of the model, saved with it)."""
        return self.text_tower.tokenizer

    def image_features(self, images: Tensor) -> Tensor:
        """The image tower's output (B, image_dim)."""
        return self.image_tower(images)

    def text_features(self, tokens: Tensor) -> Tensor:
        """The text tower's output (B, text_dim): a masked mean of word embeddings through an MLP."""
        return self.text_tower(tokens)


def image_tower(
    arch: str, input_shape: Sequence[int] = (3, 32, 32), init: str | os.PathLike | None = None
) -> tuple[nn.Module, int]:
    """(the image ARCH without its classifier head, its feature width), loaded from an image
    classifier checkpoint ``init`` when given (its head, of any class count, is dropped)."""
    model = build_model(arch, 1, input_shape=input_shape)
    if init is not None:
        load_checkpoint(model, init)  # the 1-class head differs in shape from any real head: skipped
    with torch.no_grad(), preserved_modes(model):
        width = strip_head(model, torch.zeros(1, *input_shape))
    return model, width


def build_small_dual_encoder(
    image_arch: str,
    tokenizer: WordTokenizer,
    *,
    embed_dim: int = 64,
    input_shape: Sequence[int] = (3, 32, 32),
    image_init: str | os.PathLike | None = None,
    word_dim: int = 128,
    text_hidden: int = 256,
    text_width: int = 256,
) -> SmallDualEncoder:
    """A fresh built-in dual encoder (image side from ``image_init`` when given)."""
    tower, width = image_tower(image_arch, input_shape, image_init)
    text = BagOfWordsText(tokenizer, word_dim, text_hidden, text_width)
    return SmallDualEncoder(tower, width, text, embed_dim)


def small_dual_encoder_from_state(
    image_arch: str, state: Mapping[str, Tensor] | str | os.PathLike, input_shape: Sequence[int] = (3, 32, 32)
) -> SmallDualEncoder:
    """Rebuild a saved built-in dual encoder (a state dict, or a checkpoint file read with
    ``weights_only=True``): tokenizer and sizes come from its tensors, then every tensor is loaded."""
    if not isinstance(state, Mapping):
        state = read_state_dict(state)
    needed = (
        "text_tower.vocabulary",
        "text_tower.context_length",
        "text_tower.embedding.weight",
        "image_projection.weight",
    )
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"not a built-in dual encoder checkpoint: it lacks {', '.join(absent)}")
    tokenizer = WordTokenizer.from_buffer(state["text_tower.vocabulary"], int(state["text_tower.context_length"]))
    word_dim = state["text_tower.embedding.weight"].shape[1]
    hidden = state["text_tower.mlp.0.weight"].shape[0] if "text_tower.mlp.0.weight" in state else 0
    width = state["text_tower.mlp.2.weight"].shape[0] if hidden else word_dim
    model = build_small_dual_encoder(
        image_arch,
        tokenizer,
        embed_dim=state["image_projection.weight"].shape[0],
        input_shape=input_shape,
        word_dim=word_dim,
        text_hidden=hidden,
        text_width=width,
    )
    missing = [k for k in model.state_dict() if k not in state]
    unexpected = [k for k in state if k not in model.state_dict()]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit a {image_arch} dual encoder: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.load_state_dict(dict(state))
    return model
