"""The error of an ARCH that names nothing buildable, and the names torchvision can build.

Why a leaf module: the registry (``models.registry``) reads every ARCH form and hands ``timm:`` and
``torchvision:`` names to their own builders, which raise the same error and check the same names; a
module of its own keeps those imports one-way.
"""

from __future__ import annotations


class ArchError(ValueError):
    """An ARCH string that names nothing buildable, or builds something without a linear head."""


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (not detection/segmentation/video)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))
