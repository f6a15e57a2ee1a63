"""Model architectures, head discovery, checkpoint loading, ``build_for_run`` (what a run calls) and
image-text dual encoders.

The names below are imported on first use: ``scoring`` imports ``models.heads`` (a torch-only leaf),
and that must not pull in torchvision, timm, the data layer and every builder (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BuiltModel": "build",
    "build_for_run": "build",
    "DualEncoder": "dual",
    "DualOutput": "dual",
    "ProjectionProbe": "dual",
    "build_dual_encoder": "dual_registry",
    "find_head": "heads",
    "MLP": "small",
    "SmallCNN": "small",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"mimic_explorer.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mimic_explorer.models' has no attribute {name!r}")
