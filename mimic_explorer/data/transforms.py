"""Default image → tensor transforms per architecture, and the override hook.

Why per architecture: a torchvision model expects the resize, crop and normalisation of the weights
it would be used with (ResNet 256→224, Inception 342→299, ImageNet mean/std); the built-in small
models are made for 32×32 inputs. The transform is deterministic (no augmentation): scores compare
samples, so every sample must be seen the same way every epoch. ``describe()`` goes into meta.json
so a run can be repeated exactly. Any callable PIL image → tensor can replace it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_ARCHS = ("mlp", "small_cnn")

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize``, centre-crop ``crop``×``crop``, scale to 0..1, normalise."""

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        if min(width, height) != self.resize:
            scale = self.resize / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, _RESAMPLE[self.interpolation])
            width, height = size
        if (width, height) != (self.crop, self.crop):
            left, top = int(round((width - self.crop) / 2.0)), int(round((height - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))  # pads with black if smaller
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (tensor - mean) / std

    def describe(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def _torchvision_preset(arch: str) -> ImageTransform | None:
    try:
        from torchvision.models import get_model_weights, list_models
    except ImportError:  # pragma: no cover
        return None
    if arch not in list_models():
        return None
    try:
        preset = get_model_weights(arch).DEFAULT.transforms()
    except Exception:  # noqa: BLE001 - a model without published weights: standard ImageNet
        return ImageTransform(256, 224)
    crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
    resize = preset.resize_size[0] if isinstance(preset.resize_size, (list, tuple)) else preset.resize_size
    interpolation = getattr(preset.interpolation, "value", "bilinear")
    return ImageTransform(
        int(resize), int(crop), tuple(preset.mean), tuple(preset.std), interpolation if interpolation in _RESAMPLE else "bilinear"
    )


def default_transform(arch: str | None = None) -> ImageTransform:
    """The transform a model of ``arch`` expects: small models 32×32 with mean/std 0.5; torchvision
    models their weights' preset; anything else (``file.py:function``) ImageNet 256→224."""
    if arch is None or arch.lower() in SMALL_ARCHS:
        return ImageTransform(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    preset = _torchvision_preset(arch)
    return preset if preset is not None else ImageTransform(256, 224)


def describe_transform(transform: Callable) -> dict:
    """A JSON-able description of any transform (for meta.json)."""
    if hasattr(transform, "describe"):
        return transform.describe()
    return {"callable": f"{getattr(transform, '__module__', '?')}.{getattr(transform, '__qualname__', repr(transform))}"}
