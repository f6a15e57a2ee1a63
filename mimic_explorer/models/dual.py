"""The dual-encoder interface of image-text models, and the module a frozen-tower run trains.

Why an interface: the scorer and the training loop must treat the built-in small dual encoder and an
open_clip model alike. Both are a ``DualEncoder``: an image tower and a text tower (``image_features``
/ ``text_features``: whatever comes before the projections), each followed by a linear projection
``image_projection`` / ``text_projection`` (``nn.Linear`` without bias: the paper's two mimic
layers, P_img and P_txt, named ``image_projection.weight`` / ``text_projection.weight`` in every
implementation), and ``logit_scale``, a learnable *log* scale as in CLIP (the scale is its exp).

``forward`` returns a ``DualOutput(image, text, scale)``: the two *un-normalised* embeddings (B, D)
and the scale (0-dim). The contrastive loss (``scoring.contrastive.InfoNCELoss``) normalises them.

``ProjectionProbe`` is the analogue of ``models.probe.LinearProbe`` for pairs: the towers are frozen,
their outputs cached once, and only the projections (+ logit scale) train on the cache. It takes ONE
tensor, the image features and text features concatenated along dim 1, so the scoring paths (which
slice a tensor batch) work on it unchanged. See docs/ARCHITECTURE.md ("Image-text pairs").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.util.choices import MIMIC_LAYERS as TOWERS


class DualOutput(NamedTuple):
    """What a dual encoder returns: un-normalised image and text embeddings (B, D) and the scale s."""

    image: Tensor
    text: Tensor
    scale: Tensor


class TokenBatch(NamedTuple):
    """Token ids (N, context_length; 0 pads) and, per caption, whether it was cut to fit."""

    ids: Tensor
    truncated: np.ndarray


class Tokenizer(Protocol):
    """Captions to token ids for a dual encoder's text tower (``WordTokenizer``, open_clip's). A protocol, so every
    model family brings its own and the pipeline only calls ``encode``."""

    context_length: int

    def encode(self, captions: Sequence[str]) -> TokenBatch:
        """Token ids for ``captions`` and, per caption, whether it was cut to fit the context."""


class DualEncoder(nn.Module):
    """Base of every image-text model: towers, linear projections, log logit scale, tokenizer.

    Subclasses set ``image_projection``, ``text_projection`` (``nn.Linear``, no bias),
    ``logit_scale`` (``nn.Parameter``, 0-dim, log of the scale) and ``tokenizer``, and implement
    ``image_features`` / ``text_features``.
    """

    image_projection: nn.Linear
    text_projection: nn.Linear
    logit_scale: nn.Parameter
    tokenizer: Tokenizer

    def image_features(self, images: Tensor) -> Tensor:
        """The image tower's output (B, image_dim): what ``image_projection`` maps."""
        raise NotImplementedError

    def text_features(self, tokens: Tensor) -> Tensor:
        """The text tower's output (B, text_dim): what ``text_projection`` maps."""
        raise NotImplementedError

    @property
    def image_dim(self) -> int:
        """The width of the image tower's output (the image projection's input)."""
        return self.image_projection.in_features

    @property
    def text_dim(self) -> int:
        """The width of the text tower's output (the text projection's input)."""
        return self.text_projection.in_features

    def encode_image(self, images: Tensor) -> Tensor:
        """Image embeddings (B, D): the tower's output through the image projection (not normalised)."""
        return self.image_projection(self.image_features(images))

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Text embeddings (B, D): the tower's output through the text projection (not normalised)."""
        return self.text_projection(self.text_features(tokens))

    def tower_features(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Image and text tower outputs concatenated (B, image_dim + text_dim): a ``ProjectionProbe`` input."""
        return torch.cat([self.image_features(images), self.text_features(tokens)], dim=1)

    def forward(self, images: Tensor, tokens: Tensor) -> DualOutput:
        """Both embeddings and the logit scale s = exp(``logit_scale``): what InfoNCE takes."""
        return DualOutput(self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp())


#: each tower's last linear projection: the mimic layer ``--mimic-layer TOWER`` names
MIMIC_LAYERS = {tower: f"{tower}_projection" for tower in TOWERS}


def mimic_layer_params(model: nn.Module, layer: str | Sequence[str]) -> list[str]:
    """Parameter names of a mimic layer: ``"image"`` / ``"text"`` (the last linear projection of that
    tower: the weight, and the bias when there is one) or a list of names of ``model``'s parameters.

    Raises ValueError naming the cause: a tower name for a model that is no dual encoder (a
    classifier has no text projection), or unknown parameter names."""
    named = dict(model.named_parameters())
    if isinstance(layer, str):
        if layer not in MIMIC_LAYERS:
            raise ValueError(f"mimic layer must be 'image', 'text' or a list of parameter names, got {layer!r}")
        module = getattr(model, MIMIC_LAYERS[layer], None)
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"--mimic-layer {layer} needs a dual encoder (image-text model) with a linear "
                f"{MIMIC_LAYERS[layer]}; {type(model).__name__} has none (a classifier's mimic layer is its head)"
            )
        return [
            f"{MIMIC_LAYERS[layer]}.{attr}" for attr in ("weight", "bias") if f"{MIMIC_LAYERS[layer]}.{attr}" in named
        ]
    names = list(layer)
    unknown = [n for n in names if n not in named]
    if unknown or not names:
        raise ValueError(f"unknown mimic-layer parameters {unknown[:4]}; choose names from model.named_parameters()")
    return names


#: the seed offset of each tower's projection in ``reset_projections`` (text keeps the run's seed)
PROJECTION_SEED_OFFSETS = {"text": 0, "image": 1}


def reset_projections(model: nn.Module, layers: Sequence[str], seed: int) -> nn.Module:
    """``model`` with the projections of ``layers`` ("image", "text") re-initialised in place, each
    from its own seed (``seed`` + ``PROJECTION_SEED_OFFSETS[layer]``), the global generator untouched.

    Why seeded per tower: a run that trains a dual encoder from fresh projections and a later run that
    asks for fresh projections with the same seed then start from the very same values — the "same
    init" a projection-layer mimic score needs (as a linear probe shares its head's initial weights
    with its reference) — whichever towers each run resets."""
    state = torch.random.get_rng_state()
    try:
        for layer in layers:
            torch.manual_seed(seed + PROJECTION_SEED_OFFSETS[layer])
            getattr(model, MIMIC_LAYERS[layer]).reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return model


def tower_differences(model: nn.Module, reference: nn.Module) -> list[str]:
    """Names of the tensors outside the projections and logit scale where ``reference`` differs from
    ``model``: empty when the two share their towers (the feature basis a frozen-tower run assumes)."""
    skip = (*MIMIC_LAYERS.values(), "logit_scale")
    theirs = dict(reference.state_dict())
    different = []
    for name, tensor in model.state_dict().items():
        if name.startswith(skip):
            continue
        other = theirs.get(name)
        if other is None or other.shape != tensor.shape or not torch.equal(other.to(tensor.device), tensor):
            different.append(name)
    return different


class ProjectionProbe(nn.Module):
    """The projections and logit scale of a dual encoder, applied to cached tower outputs.

    Input: ONE tensor ``(B, image_dim + text_dim)`` = ``DualEncoder.tower_features``. Output: a
    ``DualOutput``. Parameter names are the dual encoder's own (``image_projection.weight``,
    ``text_projection.weight``, ``logit_scale``), so a probe and the full model it came from share a
    reference checkpoint's names.
    """

    def __init__(self, image_projection: nn.Linear, text_projection: nn.Linear, logit_scale: Tensor | float):
        super().__init__()
        self.image_projection = image_projection
        self.text_projection = text_projection
        value = logit_scale.detach().clone() if isinstance(logit_scale, Tensor) else torch.tensor(float(logit_scale))
        self.logit_scale = nn.Parameter(value.reshape(()).to(image_projection.weight.dtype))

    @classmethod
    def from_dual_encoder(cls, model: DualEncoder) -> ProjectionProbe:
        """A probe holding copies of ``model``'s projections and logit scale (the model is untouched)."""
        return cls(copy.deepcopy(model.image_projection), copy.deepcopy(model.text_projection), model.logit_scale)

    @classmethod
    def sharing(cls, model: DualEncoder) -> ProjectionProbe:
        """A probe that *is* ``model``'s projections and logit scale (the same modules and Parameter):
        training it trains the model in place, as ``LinearProbe(head)`` does for a classifier."""
        probe = cls(model.image_projection, model.text_projection, 0.0)
        probe.logit_scale = model.logit_scale
        return probe

    @property
    def image_dim(self) -> int:
        """The width of the image tower's output: the first ``image_dim`` columns of the input."""
        return self.image_projection.in_features

    def forward(self, features: Tensor) -> DualOutput:
        """The ``DualOutput`` of cached tower outputs (B, image_dim + text_dim). Raises ``ValueError`` for an input of
        another shape, naming the expected one."""
        expected = self.image_projection.in_features + self.text_projection.in_features
        if features.dim() != 2 or features.shape[1] != expected:
            raise ValueError(
                f"ProjectionProbe expects (B, {expected}) concatenated tower features "
                f"({self.image_dim} image + {self.text_projection.in_features} text), got {tuple(features.shape)}"
            )
        image, text = features[:, : self.image_dim], features[:, self.image_dim :]
        return DualOutput(self.image_projection(image), self.text_projection(text), self.logit_scale.exp())
