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
from pathlib import Path
from typing import Any, Sequence

import torch

from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip

DUAL_FORMAT = "mimic_explorer.dual_encoder"
DUAL_FORMAT_VERSION = 1


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
    except Exception as exc:  # noqa: BLE001 - garbage, pickled objects, truncated files
        raise CheckpointError(f"{path} is not a readable dual encoder checkpoint: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict) or obj.get("format") != DUAL_FORMAT:
        held = f"a dict with keys {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(
            f"{path} is not a dual encoder checkpoint saved by mimic-explorer (it holds {held}); pass it as the "
            "initial weights of a model built from its ARCH instead (--init)"
        )
    if int(obj.get("version", 0)) > DUAL_FORMAT_VERSION:
        raise CheckpointError(f"{path} was saved by a newer mimic-explorer (format version {obj['version']}); upgrade to read it")
    return dict(obj["config"]), dict(obj["state_dict"])


def load_dual_encoder(
    path: str | os.PathLike, *, arch: str | None = None, input_shape: Sequence[int] | None = None
) -> tuple[DualEncoder, dict[str, Any]]:
    """Rebuild the dual encoder saved at ``path``: (model, its config).

    ``arch`` / ``input_shape``, when given (what a run asks for), must equal the saved ones; a
    mismatch is a ``CheckpointError`` naming both, never a silent reinterpretation of the weights."""
    config, state = read_dual_checkpoint(path)
    saved_arch, saved_shape = config["arch"], tuple(config["input_shape"])
    if arch is not None and _normal_arch(arch) != saved_arch:
        raise CheckpointError(f"{path} holds a dual encoder built as --arch {saved_arch}, not {_normal_arch(arch)}")
    if input_shape is not None and tuple(int(s) for s in input_shape) != saved_shape:
        raise CheckpointError(f"{path} holds a dual encoder for inputs {saved_shape}, not {tuple(input_shape)}")
    if is_open_clip(saved_arch):
        model = build_dual_encoder(saved_arch, init=path)
    else:
        model = build_dual_encoder(saved_arch, init=path, input_shape=saved_shape)
    return model, config
