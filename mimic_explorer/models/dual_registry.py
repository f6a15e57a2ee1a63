"""``build_dual_encoder(ARCH, …)``: every ARCH form of an image-text model to a ``DualEncoder``.

ARCH forms: ``open_clip:NAME`` (``models.open_clip_dual``, optional extra) or any image ARCH of
``models.registry`` (``small_cnn``, ``resnet18``, ``file.py:function``…), which builds the built-in
small dual encoder around it (``models.small_dual``). ``init`` is a local checkpoint: for open_clip,
its weights (native or adapted names); for the built-in model, either a whole dual encoder saved
earlier (recognised by its vocabulary buffer; the tokenizer comes from it) or an image classifier
checkpoint that initialises the image tower only (then ``captions`` build the tokenizer).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from mimic_explorer.models.checkpoints import read_state_dict
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.open_clip_dual import PREFIX, build_open_clip_dual_encoder
from mimic_explorer.models.registry import ArchError
from mimic_explorer.models.small_dual import build_small_dual_encoder, small_dual_encoder_from_state
from mimic_explorer.models.text import WordTokenizer

DUAL_STATE_MARK = "text_tower.vocabulary"


def is_open_clip(arch: str) -> bool:
    """Whether ARCH names an open_clip model (``open_clip:NAME``, any case)."""
    return arch.strip().lower().startswith(PREFIX)


def build_dual_encoder(
    arch: str,
    *,
    init: str | os.PathLike | None = None,
    captions: Iterable[str] | None = None,
    pretrained: str | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
    context_length: int = 32,
    embed_dim: int = 64,
    trust_pickle: bool = False,
) -> DualEncoder:
    """A dual encoder for ``arch`` (see the module docstring); ``pretrained`` is open_clip only."""
    if is_open_clip(arch):
        return build_open_clip_dual_encoder(arch.strip()[len(PREFIX) :], init=init, pretrained=pretrained)
    if pretrained:
        raise ArchError(
            f"--pretrained {pretrained!r} is for open_clip:NAME models; the built-in {arch} takes a local --init file"
        )
    if init is not None:
        state = read_state_dict(init, trust_pickle=trust_pickle)
        if DUAL_STATE_MARK in state:
            return small_dual_encoder_from_state(arch, state, input_shape)
    if captions is None:
        raise ArchError(
            f"the built-in dual encoder around {arch} needs captions to build its vocabulary "
            "(or an --init checkpoint of a dual encoder, which carries one)"
        )
    tokenizer = WordTokenizer.from_captions(captions, context_length=context_length)
    return build_small_dual_encoder(arch, tokenizer, embed_dim=embed_dim, input_shape=input_shape, image_init=init)
