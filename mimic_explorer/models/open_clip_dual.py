"""``open_clip:NAME`` — any open_clip_torch model config as a ``DualEncoder`` (optional extra ``clip``).

Why an adapter: open_clip keeps its two projections as plain matrices used as ``x @ proj``
(``visual.proj`` of shape (width, embed), ``text_projection`` likewise), while the scorer names its
mimic layers by module (``image_projection.weight`` / ``text_projection.weight``) and its closed forms
expect ``nn.Linear``. The adapter moves each matrix into a bias-free ``nn.Linear`` whose weight is the
matrix transposed (``Linear(x) = x @ proj``, the same function and the same gradient up to the
transpose), sets open_clip's own attribute to None so its encoders return the pooled tower output, and
moves the log logit scale to the top as ``logit_scale``. The open_clip model itself is ``self.clip``.

Weights: random by default; ``init`` = a local file, either a native open_clip state dict (as saved
by open_clip or the released checkpoints) or this adapter's own state dict — both load exactly.
``pretrained=TAG`` calls open_clip's own loader (``open_clip.create_model(NAME, pretrained=TAG)``),
which downloads; it is for machines that reach the internet, and without network the error says to
pass a local file instead. Models whose image tower ends in something else than a projection matrix
(e.g. the ResNet towers, whose projection sits inside attention pooling) and sigmoid-loss models
(SigLIP's ``logit_bias``) are refused with the reason. See docs/ARCHITECTURE.md ("Image-text pairs").
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.models.checkpoints import CheckpointError, read_state_dict
from mimic_explorer.models.dual import DualEncoder, TokenBatch
from mimic_explorer.models.registry import ArchError

PREFIX = "open_clip:"


def _import_open_clip():
    """The ``open_clip`` module, or an ``ArchError`` saying how to install it."""
    try:
        import open_clip
    except ImportError as exc:
        raise ArchError(
            f"ARCH open_clip:NAME needs the optional package open_clip_torch ({exc}); install it with "
            'pip install -e ".[clip]" (or pip install open_clip_torch)'
        ) from exc
    return open_clip


class OpenClipTokenizer:
    """open_clip's tokenizer behind the ``Tokenizer`` protocol, counting captions it truncates."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def encode(self, captions: Sequence[str]) -> TokenBatch:
        """Token ids for ``captions`` and, per caption, whether it was longer than the context and was cut (counted so a
        run can say how many captions it truncated)."""
        captions = list(captions)
        ids = self.tokenizer(captions, context_length=self.context_length)
        if hasattr(self.tokenizer, "encode") and hasattr(self.tokenizer, "sot_token_id"):
            lengths = np.asarray([len(self.tokenizer.encode(c)) + 2 for c in captions])  # + start/end tokens
            truncated = lengths > self.context_length
        else:  # other tokenizers: a caption that fills every position was (probably) cut
            truncated = (ids[:, -1] != 0).numpy()
        return TokenBatch(ids.to(torch.long), truncated)


def _as_linear(projection: nn.Parameter | nn.Linear) -> nn.Linear:
    if isinstance(projection, nn.Linear):
        return projection
    width, embed = projection.shape
    linear = nn.Linear(width, embed, bias=False).to(dtype=projection.dtype, device=projection.device)
    with torch.no_grad():
        linear.weight.copy_(projection.detach().T)
    return linear


def _text_owner(clip: nn.Module) -> tuple[nn.Module, str]:
    """The module holding ``text_projection`` and its name prefix (CLIP: the model; CustomTextCLIP: ``text``)."""
    if getattr(clip, "text_projection", None) is not None:
        return clip, ""
    text = getattr(clip, "text", None)
    if text is not None and getattr(text, "text_projection", None) is not None:
        return text, "text."
    raise ArchError(f"{type(clip).__name__} has no text_projection to use as the text-side mimic layer")


class OpenClipDualEncoder(DualEncoder):
    """An open_clip model with its projections as ``nn.Linear`` (see the module docstring)."""

    def __init__(self, clip: nn.Module, tokenizer: OpenClipTokenizer, name: str = ""):
        super().__init__()
        if getattr(clip, "logit_bias", None) is not None:
            raise ArchError(
                f"open_clip:{name} has a logit_bias (a sigmoid-loss model such as SigLIP); only CLIP's softmax InfoNCE "
                "is supported"
            )
        visual_proj = getattr(clip.visual, "proj", None)
        if not isinstance(visual_proj, (nn.Parameter, nn.Linear)):
            raise ArchError(
                f"open_clip:{name}: its image tower ({type(clip.visual).__name__}) does not end in a projection matrix "
                "(visual.proj), so it has no P_img to score; use a ViT-based config"
            )
        owner, self._text_prefix = _text_owner(clip)
        self.image_projection = _as_linear(visual_proj)
        self.text_projection = _as_linear(owner.text_projection)
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone().reshape(()))
        clip.visual.proj = None
        owner.text_projection = None
        clip.logit_scale = None
        self.clip = clip
        self._tokenizer = tokenizer
        self.name = name

    @property
    def tokenizer(self) -> OpenClipTokenizer:  # type: ignore[override]
        """open_clip's tokenizer behind the ``Tokenizer`` protocol."""
        return self._tokenizer

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (channels, height, width) of the images the visual tower expects."""
        size = self.clip.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (3, int(size[0]), int(size[1]))

    def image_features(self, images: Tensor) -> Tensor:
        """The visual tower's output with open_clip's own projection left out (``image_projection`` applies it)."""
        return self.clip.encode_image(images)

    def text_features(self, tokens: Tensor) -> Tensor:
        """The text tower's output with open_clip's own projection left out (``text_projection`` applies it)."""
        return self.clip.encode_text(tokens)

    def adapt_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A native open_clip state dict in this adapter's names (an adapted one passes unchanged)."""
        if "image_projection.weight" in state:
            return dict(state)
        native = dict(state)
        text_key = f"{self._text_prefix}text_projection"
        text_linear = f"{text_key}.weight" in native  # some configs already use an nn.Linear there
        missing = [
            k
            for k in ("visual.proj", f"{text_key}.weight" if text_linear else text_key, "logit_scale")
            if k not in native
        ]
        if missing:
            raise CheckpointError(
                f"not an open_clip state dict for open_clip:{self.name}: it lacks {', '.join(missing)}"
            )
        out = {
            "image_projection.weight": native.pop("visual.proj").T,
            "logit_scale": native.pop("logit_scale").reshape(()),
        }
        if text_linear:
            out.update(
                {
                    f"text_projection.{k}": native.pop(f"{text_key}.{k}")
                    for k in ("weight", "bias")
                    if f"{text_key}.{k}" in native
                }
            )
        else:
            out["text_projection.weight"] = native.pop(text_key).T
        out.update({f"clip.{k}": v for k, v in native.items()})
        return out

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a local checkpoint (native open_clip or adapted names), strictly: every tensor must fit."""
        state = self.adapt_state(read_state_dict(path))
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {path} does not fit open_clip:{self.name}: {len(missing)} tensor(s) missing (e.g. "
                f"{missing[:3]}), {len(unexpected)} unused (e.g. {unexpected[:3]})"
            )
        wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if wrong:
            k = wrong[0]
            raise CheckpointError(
                f"checkpoint {path} does not fit open_clip:{self.name}: {k} is {tuple(state[k].shape)}, the model's "
                f"{tuple(own[k].shape)}"
            )
        self.load_state_dict(state)


def build_open_clip_dual_encoder(
    name: str, *, init: str | os.PathLike | None = None, pretrained: str | None = None, cache_dir: str | None = None
) -> OpenClipDualEncoder:
    """``open_clip:NAME`` (NAME with or without the prefix): random weights, a local ``init`` file, or
    open_clip's own ``pretrained`` loader (needs network; never used by the tests)."""
    open_clip = _import_open_clip()
    name = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        raise ArchError(
            f"open_clip has no model config {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    if pretrained and init:
        raise ArchError("give either a local --init file or --pretrained TAG for an open_clip model, not both")
    try:
        if pretrained:
            clip = open_clip.create_model(name, pretrained=pretrained, cache_dir=cache_dir)
        else:
            clip = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # a download or hub failure: say what to do instead
        what = f"pretrained weights {pretrained!r}" if pretrained else "the model or its tokenizer"
        raise ArchError(
            f"open_clip could not load {what} for {name} ({type(exc).__name__}: {str(exc)[:200]}); without network "
            "access, download the weights on a machine that has it and pass the local file with --init"
        ) from exc
    context = int(getattr(clip, "context_length", 0) or getattr(tokenizer, "context_length", 77))
    model = OpenClipDualEncoder(clip, OpenClipTokenizer(tokenizer, context), name)
    if init is not None:
        model.load_weights(init)
    return model
