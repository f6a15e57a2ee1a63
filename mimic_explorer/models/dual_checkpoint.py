"""A dual encoder's checkpoint file: its weights and the few facts needed to rebuild it.

Why a format of its own: a classifier is rebuilt from ``--arch`` and the class count, but a dual
encoder also needs what its state dict does not say — which image architecture the built-in model
wraps and at what input size, or which open_clip config an adapter holds. One file carries both, so
``score --model M.pt --reference R.pt`` rebuilds exactly what was saved and refuses, naming the cause,
a file made for another architecture.

The file is ``torch.save`` of a plain dict (``weights_only=True`` reads it, no pickled code):
``{"format": FORMAT, "version": 1, "arch": "small_dual:small_cnn" | "open_clip:NAME",
"input_shape": [C, H, W], "state_dict": {...}}``. A bare state dict also loads (the built-in model's
vocabulary buffer, or a native open_clip file): the architecture then comes from ``--arch`` alone.

ARCH forms for dual encoders: ``small_dual`` (the built-in model; its image architecture is the one
the checkpoint records, else ``small_cnn``), ``small_dual:IMAGE_ARCH`` (any image ARCH of
``models.registry``) and ``open_clip:NAME``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from mimic_explorer.data.transforms import ImageTransform, default_transform
from mimic_explorer.models.checkpoints import CheckpointError, read_state_dict
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.registry import ArchError

FORMAT = "mimic_explorer.dual_encoder"
VERSION = 1
SMALL_DUAL = "small_dual"
OPEN_CLIP = "open_clip"
DEFAULT_IMAGE_ARCH = "small_cnn"
ARCH_FORMS = ("small_dual", "small_dual:IMAGE_ARCH", "open_clip:NAME")


@dataclass(frozen=True)
class DualArch:
    """A parsed dual-encoder ARCH: ``family`` small_dual or open_clip, ``name`` the image ARCH of the
    built-in model (None: take the checkpoint's) or the open_clip config."""

    family: str
    name: str | None

    def spell(self) -> str:
        return self.family if self.name is None else f"{self.family}:{self.name}"


def parse_dual_arch(arch: str) -> DualArch:
    """``small_dual[:IMAGE_ARCH]`` or ``open_clip:NAME``; anything else is an ``ArchError``."""
    text = (arch or "").strip()
    family, sep, name = text.partition(":")
    family = family.lower()
    if family == SMALL_DUAL and (not sep or name.strip()):
        return DualArch(SMALL_DUAL, name.strip() or None)
    if family == OPEN_CLIP and name.strip():
        return DualArch(OPEN_CLIP, name.strip())
    raise ArchError(f"--arch {arch!r} is not a dual encoder; an image-text pool takes one of: {', '.join(ARCH_FORMS)}")


def save_dual_encoder(model: DualEncoder, path: str | os.PathLike, arch: str, input_shape: Sequence[int]) -> Path:
    """Write ``model`` with the facts that rebuild it (see the module docstring)."""
    spelled = parse_dual_arch(arch)
    if spelled.family == SMALL_DUAL and spelled.name is None:
        spelled = DualArch(SMALL_DUAL, DEFAULT_IMAGE_ARCH)
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "version": VERSION, "arch": spelled.spell(), "input_shape": [int(s) for s in input_shape],
                "state_dict": state}, path)
    return path


@dataclass
class DualCheckpoint:
    """What a checkpoint file holds: the recorded ARCH and input shape (None for a bare state dict)."""

    path: str
    state: dict[str, torch.Tensor]
    arch: DualArch | None = None
    input_shape: tuple[int, int, int] | None = None


def read_dual_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> DualCheckpoint:
    """Our format, or any state dict ``models.checkpoints.read_state_dict`` accepts."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix != ".safetensors":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not ours: read_state_dict below names the cause
            obj = None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            if obj.get("version") != VERSION or not isinstance(obj.get("state_dict"), dict):
                raise CheckpointError(f"{path}: dual-encoder checkpoint version {obj.get('version')!r} is not {VERSION}")
            shape = obj.get("input_shape")
            return DualCheckpoint(str(path), dict(obj["state_dict"]), parse_dual_arch(str(obj.get("arch"))),
                                  tuple(int(s) for s in shape) if shape else None)
    return DualCheckpoint(str(path), read_state_dict(path, trust_pickle=trust_pickle))


def _resolve(arch: DualArch, checkpoint: DualCheckpoint, flag: str) -> DualArch:
    """``arch`` with the checkpoint's image ARCH filled in; a contradiction is an error."""
    recorded = checkpoint.arch
    if recorded is not None:
        if recorded.family != arch.family or (arch.name is not None and arch.name != recorded.name):
            raise CheckpointError(
                f"{flag} {checkpoint.path} holds a {recorded.spell()} dual encoder, not {arch.spell()}; "
                f"pass --arch {recorded.spell()} or the checkpoint of a {arch.spell()} model"
            )
        return recorded
    if arch.family == SMALL_DUAL and arch.name is None:
        return DualArch(SMALL_DUAL, DEFAULT_IMAGE_ARCH)
    return arch


def load_dual_encoder(path: str | os.PathLike, arch: str | DualArch, *, flag: str = "--model",
                      trust_pickle: bool = False) -> tuple[DualEncoder, DualArch, tuple[int, int, int]]:
    """(the rebuilt model, its full ARCH, its input shape) from a checkpoint file, strictly: every
    tensor must fit, or a ``CheckpointError`` names ``flag``, the file and the first misfit."""
    from mimic_explorer.models.dual_registry import DUAL_STATE_MARK
    from mimic_explorer.models.open_clip_dual import build_open_clip_dual_encoder
    from mimic_explorer.models.small_dual import small_dual_encoder_from_state

    wanted = parse_dual_arch(arch) if isinstance(arch, str) else arch
    checkpoint = read_dual_checkpoint(path, trust_pickle)
    resolved = _resolve(wanted, checkpoint, flag)
    if resolved.family == OPEN_CLIP:
        model = build_open_clip_dual_encoder(resolved.name)
        try:
            model.load_weights(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{flag}: {exc}") from None
        return model, resolved, model.input_shape
    if DUAL_STATE_MARK not in checkpoint.state:
        raise CheckpointError(
            f"{flag} {path} is not a built-in dual encoder checkpoint (it has no {DUAL_STATE_MARK} buffer); "
            "save one with models.dual_checkpoint.save_dual_encoder"
        )
    shape = checkpoint.input_shape or (3, default_transform(resolved.name).crop, default_transform(resolved.name).crop)
    try:
        model = small_dual_encoder_from_state(resolved.name, checkpoint.state, shape)
    except RuntimeError as exc:  # a tensor of another shape (another image tower or input size)
        raise CheckpointError(f"{flag} {path} does not fit {resolved.spell()} at input {tuple(shape)}: {str(exc).splitlines()[0]}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{flag} {path}: {exc}") from None
    return model, resolved, tuple(shape)


def dual_transform(model: DualEncoder, arch: DualArch, input_shape: Sequence[int]) -> ImageTransform:
    """The preprocessing the model expects: open_clip's own (its ``preprocess_cfg``, else OpenAI CLIP's
    mean/std, bicubic), the image ARCH's default for the built-in model, at ``input_shape``'s size."""
    size = int(input_shape[-1])
    if arch.family == OPEN_CLIP:
        cfg = getattr(getattr(getattr(model, "clip", None), "visual", None), "preprocess_cfg", None) or {}
        return ImageTransform(size, size, tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                              tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                              interpolation=str(cfg.get("interpolation", "bicubic")))
    base = default_transform(arch.name)
    return base if base.crop == size else replace(base, resize=size, crop=size)
