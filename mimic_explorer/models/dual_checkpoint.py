"""Saving a dual encoder with what it takes to rebuild it, and loading it back with clear errors.

Why a format of its own: a plain state dict does not say which image ARCH (or open_clip config) and
input size built the model, so a reference or a trained model could be rebuilt around the wrong tower
and fail deep inside ``load_state_dict`` — or, for shape-compatible towers, not fail at all. The file
is a dict ``{"format", "version", "config", "state_dict"}`` of tensors and plain values, readable with
``torch.load(weights_only=True)``; ``config`` holds ``arch``, ``input_shape``, ``embed_dim`` and
``context_length`` (and anything the caller adds). Its ``state_dict`` key also lets
``build_dual_encoder(arch, init=path)`` and ``models.checkpoints.read_state_dict`` read the weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mimic_explorer.models.checkpoints import CheckpointError, is_pickle_refusal
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip
from mimic_explorer.models.registry import ArchError, parse_arch

DUAL_FORMAT = "mimic_explorer.dual_encoder"
DUAL_FORMAT_VERSION = 1
#: bounds on the image a checkpoint's config may ask the model to be built and traced for: the config
#: is data from a file, and 3×20000×20000 would allocate gigabytes before a single weight is compared
MAX_INPUT_CHANNELS = 4
MAX_INPUT_SIDE = 2048


def _normal_arch(arch: str) -> str:
    arch = arch.strip()
    return "open_clip:" + arch.split(":", 1)[1].strip() if is_open_clip(arch) else arch


def save_dual_encoder(
    model: DualEncoder,
    path: str | os.PathLike,
    *,
    arch: str,
    input_shape: Sequence[int] = (3, 32, 32),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (a ``DualEncoder``) and its build config to ``path``; returns the path.

    ``arch`` and ``input_shape`` are the ones it was built with (``build_dual_encoder``); ``extra``
    plain values (a run id, the data) are stored in the config alongside."""
    if not isinstance(model, DualEncoder):
        raise TypeError(f"save_dual_encoder saves a DualEncoder, got {type(model).__name__}")
    config = {
        "arch": _normal_arch(arch),
        "input_shape": [int(s) for s in input_shape],
        "embed_dim": int(model.image_projection.out_features),
        "context_length": int(model.tokenizer.context_length),
        **(extra or {}),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": DUAL_FORMAT, "version": DUAL_FORMAT_VERSION, "config": config, "state_dict": state}, path)
    return path


def read_dual_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict) of a file written by ``save_dual_encoder``, read without running pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"dual encoder checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage, pickled objects, truncated files: each a one-line refusal
        if is_pickle_refusal(exc):
            raise CheckpointError(
                f"{path} contains pickled Python objects (for example a whole model saved with torch.save(model)); "
                "loading it could run arbitrary code, so it is refused. A dual-encoder checkpoint holds tensors and "
                "plain values only: write it with train --save-model on an image-text pool"
            ) from None
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path} is not a readable dual encoder checkpoint ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != DUAL_FORMAT:
        held = (
            f"a dict with keys {', '.join(map(str, list(obj)[:6]))}"
            if isinstance(obj, dict)
            else f"a {type(obj).__name__}"
        )
        raise CheckpointError(
            f"{path} is not a dual encoder checkpoint saved by mimic-explorer (it holds {held}); pass it as the "
            "initial weights of a model built from its ARCH instead (--init)"
        )
    if int(obj.get("version", 0)) > DUAL_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was saved by a newer mimic-explorer (format version {obj['version']}); upgrade to read it"
        )
    return dict(obj["config"]), dict(obj["state_dict"])


def names_code(arch: str) -> bool:
    """Whether building ``arch`` would import a file or a module of the caller's choosing
    (``file.py:function``, ``package.module:function``, also as the image ARCH of the built-in model)
    rather than a built-in architecture or a registered family (``open_clip:``, ``timm:``,
    ``torchvision:``, a torchvision model name)."""
    if is_open_clip(arch):
        return False
    try:
        return parse_arch(arch).family == "factory"
    except ArchError:
        return False


def _checked_config(config: Any, path: Path, trusted_arch: bool, trust_code: bool) -> tuple[str, tuple[int, int, int]]:
    """(arch, input shape) of a checkpoint's config, refused unless they are safe to build: an arch
    that names code only when the caller named it (``trusted_arch``) or trusts the file
    (``--trust-checkpoint``), and an input shape within ``MAX_INPUT_CHANNELS`` × ``MAX_INPUT_SIDE``²."""
    arch = config.get("arch") if isinstance(config, dict) else None
    if not isinstance(arch, str) or not arch.strip():
        raise CheckpointError(f"{path} records no architecture (config 'arch'); it was not saved by mimic-explorer")
    if names_code(arch) and not (trusted_arch or trust_code):
        raise CheckpointError(
            f"{path} records the architecture {arch!r}, which would import and run code named by the file; a "
            f"checkpoint never chooses code to run. Name it yourself (--arch small_dual:{arch}) or pass "
            "--trust-checkpoint if you trust where the file came from"
        )
    shape = config.get("input_shape")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        raise CheckpointError(
            f"{path} records input_shape {shape!r}; expected three integers (channels, height, width)"
        )
    channels, height, width = (int(s) for s in shape)
    if not (1 <= channels <= MAX_INPUT_CHANNELS and 1 <= height <= MAX_INPUT_SIDE and 1 <= width <= MAX_INPUT_SIDE):
        raise CheckpointError(
            f"{path} records input_shape {list(shape)}, outside 1–{MAX_INPUT_CHANNELS} channels and "
            f"1–{MAX_INPUT_SIDE} pixels a side; the file is damaged or not a mimic-explorer checkpoint"
        )
    return arch.strip(), (channels, height, width)


def _check_image_tower_fits(arch: str, shape: tuple[int, int, int], state: dict[str, torch.Tensor], path: Path) -> None:
    """The built-in ``mlp`` image tower's first layer must take exactly C·H·W inputs: compared with the
    tensor before the tower (whose first layer is C·H·W wide) is allocated."""
    try:
        if parse_arch(arch).family != "builtin" or parse_arch(arch).name != "mlp":
            return
    except ArchError:
        return
    first = state.get("image_tower.backbone.1.weight")
    flat = shape[0] * shape[1] * shape[2]
    if first is None or first.dim() != 2 or int(first.shape[1]) != flat:
        found = None if first is None else list(first.shape)
        raise CheckpointError(
            f"{path} records input_shape {list(shape)} ({flat} inputs), but its mlp image tower's first "
            f"layer has shape {found}; the config does not match the weights"
        )


def load_dual_encoder(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    trust_code: bool = False,
) -> tuple[DualEncoder, dict[str, Any]]:
    """Rebuild the dual encoder saved at ``path``: (model, its config).

    ``arch`` / ``input_shape``, when given (what a run asks for), must equal the saved ones; a
    mismatch is a ``CheckpointError`` naming both, never a silent reinterpretation of the weights.
    Without ``arch`` the file's own architecture is built, but never one that imports a file or a
    module (``names_code``) unless ``trust_code`` (``--trust-checkpoint``); the file's input shape is
    bounded and checked against its tensors before the model is built."""
    config, state = read_dual_checkpoint(path)
    saved_arch, saved_shape = _checked_config(config, Path(path), trusted_arch=arch is not None, trust_code=trust_code)
    _check_image_tower_fits(saved_arch, saved_shape, state, Path(path))
    if arch is not None and _normal_arch(arch) != saved_arch:
        raise CheckpointError(f"{path} holds a dual encoder built as --arch {saved_arch}, not {_normal_arch(arch)}")
    if input_shape is not None and tuple(int(s) for s in input_shape) != saved_shape:
        raise CheckpointError(f"{path} holds a dual encoder for inputs {saved_shape}, not {tuple(input_shape)}")
    if is_open_clip(saved_arch):
        model = build_dual_encoder(saved_arch, init=path)
    else:
        model = build_dual_encoder(saved_arch, init=path, input_shape=saved_shape)
    return model, config
