"""What an ``--init`` path holds besides tensors: a model folder's ``config.json`` and the
``.meta.json`` sidecar that ``--save-model`` writes.

Why: both say how the weights were made — a timm folder's ``config.json`` carries the architecture,
its constructor arguments (``model_args``) and the preprocessing it was trained with
(``pretrained_cfg``); our sidecar carries the run's init fingerprint and, under ``preprocessing``,
the ``ImageTransform.describe()`` the run used. ``models.build`` adopts that preprocessing and warns
when an override contradicts it. The tensors themselves are read by ``models.checkpoints``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mimic_explorer.models.checkpoints import CheckpointError, folder_weights

#: the sidecar key under which a saved checkpoint records its preprocessing (``ImageTransform.describe()``)
SIDECAR_PREPROCESSING = "preprocessing"


def _read_json_file(path: Path) -> dict:
    """A JSON object from ``path``; ``CheckpointError`` naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def _read_sidecar(path: str | os.PathLike) -> dict:
    """The ``PATH.meta.json`` written beside a checkpoint by ``--save-model``; {} when absent or unreadable."""
    sidecar = Path(str(path) + ".meta.json")
    if not sidecar.is_file():
        return {}
    try:
        return _read_json_file(sidecar)
    except CheckpointError:
        return {}


@dataclass(frozen=True)
class InitSource:
    """An ``--init`` path: the weights file it resolves to and the metadata found with it."""

    path: Path
    weights: Path
    config: dict = field(default_factory=dict)  # a model folder's config.json ({} for a plain file)
    sidecar: dict = field(default_factory=dict)  # PATH.meta.json ({} when absent)

    @property
    def architecture(self) -> str | None:
        """The architecture the metadata names (config.json ``architecture``, else the sidecar's ``arch``)."""
        return self.config.get("architecture") or self.sidecar.get("arch")

    @property
    def model_args(self) -> dict:
        """Constructor arguments a timm folder's config.json records (``model_args``)."""
        args = self.config.get("model_args") or {}
        return dict(args) if isinstance(args, dict) else {}

    @property
    def pretrained_cfg(self) -> dict | None:
        """timm's ``pretrained_cfg`` from config.json: the preprocessing the weights were trained with."""
        cfg = self.config.get("pretrained_cfg")
        return dict(cfg) if isinstance(cfg, dict) and cfg.get("input_size") else None

    @property
    def recorded_preprocessing(self) -> dict | None:
        """The ``ImageTransform.describe()`` our own sidecar records, when it does."""
        value = self.sidecar.get(SIDECAR_PREPROCESSING)
        return dict(value) if isinstance(value, dict) and "crop" in value else None


def open_init(path: str | os.PathLike) -> InitSource:
    """Resolve ``--init``: a checkpoint file (``.pt``, ``.pth``, ``.safetensors``, …) or a Hugging
    Face-style model folder (``model.safetensors`` + ``config.json``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"--init {path} does not exist")
    if path.is_dir():
        config_file = path / "config.json"
        config = _read_json_file(config_file) if config_file.is_file() else {}
        return InitSource(path, folder_weights(path), config, _read_sidecar(path))
    return InitSource(path, path, {}, _read_sidecar(path))
