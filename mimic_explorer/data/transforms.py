"""Default image → tensor transforms per architecture, and the override hook.

Why per architecture: a torchvision model expects the resize, crop and normalisation of the weights
it would be used with (ResNet 256→224, Inception 342→299, ImageNet mean/std); the built-in small
models are made for 32×32 inputs. The transform is deterministic (no augmentation): scores compare
samples, so every sample must be seen the same way every epoch. ``describe()`` goes into meta.json
so a run can be repeated exactly. Any callable PIL image → tensor can replace it.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_ARCHS = ("mlp", "small_cnn")

_RESAMPLE = {
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}
INTERPOLATIONS = tuple(_RESAMPLE)
#: "center" keeps the aspect ratio (shorter side to ``resize``); "squash" resizes both sides to ``resize``
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize``, centre-crop ``crop``×``crop``, scale to 0..1, normalise.

    ``crop_mode="squash"`` (timm's) resizes both sides to ``resize`` instead, ignoring the aspect ratio.
    Invalid values raise ``ValueError`` naming the field, so a bad ``--transform`` fails before any run.
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            value = getattr(self, name)
            try:
                pixels = operator.index(value)
            except TypeError:
                pixels = 0
            if isinstance(value, bool) or pixels < 1:
                raise ValueError(f"preprocessing {name} must be a positive whole number of pixels, got {value!r}")
            object.__setattr__(self, name, int(pixels))
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise ValueError(
                    f"preprocessing {name} needs 3 values (one per RGB channel), got {len(values)}: {list(values)}"
                )
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if any(v <= 0 for v in self.std):
            raise ValueError(f"preprocessing std values must be > 0, got {list(self.std)}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"preprocessing interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"preprocessing crop_mode {self.crop_mode!r} is not one of {', '.join(CROP_MODES)}")

    @classmethod
    def from_description(cls, description: dict) -> ImageTransform:
        """The transform a ``describe()`` dict (meta.json, a checkpoint's sidecar) stands for."""
        known = {
            k: description[k]
            for k in ("resize", "crop", "mean", "std", "interpolation", "crop_mode")
            if k in description
        }
        return cls(**known)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        if self.crop_mode == "squash" and (width, height) != (self.resize, self.resize):
            image = image.resize((self.resize, self.resize), _RESAMPLE[self.interpolation])
            width, height = image.size
        elif min(width, height) != self.resize:
            scale = self.resize / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, _RESAMPLE[self.interpolation])
            width, height = size
        if (width, height) != (self.crop, self.crop):
            left, top = round((width - self.crop) / 2.0), round((height - self.crop) / 2.0)
            image = image.crop((left, top, left + self.crop, top + self.crop))  # pads with black if smaller
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (tensor - mean) / std

    def describe(self) -> dict:
        """JSON-able fields (meta.json, the feature-cache key). ``crop_mode`` appears only when it is
        not the default, so descriptions (and cache keys) of earlier runs stay what they were."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        if self.crop_mode == "center":
            del out["crop_mode"]
        return out


def image_transform_from_preset(preset) -> ImageTransform:
    """The ``ImageTransform`` equal to a torchvision weights preset (``Weights.transforms()``, an
    ``ImageClassification``): its resize, crop, mean, std and interpolation."""

    def first(size) -> int:
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    interpolation = getattr(preset.interpolation, "value", "bilinear")
    return ImageTransform(
        first(preset.resize_size),
        first(preset.crop_size),
        tuple(preset.mean),
        tuple(preset.std),
        interpolation if interpolation in _RESAMPLE else "bilinear",
    )


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
    return image_transform_from_preset(preset)


def default_transform(arch: str | None = None) -> ImageTransform:
    """The transform a model of ``arch`` expects: small models 32×32 with mean/std 0.5; torchvision
    models their weights' preset; anything else (``file.py:function``) ImageNet 256→224."""
    if arch is None or arch.lower() in SMALL_ARCHS:
        return ImageTransform(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    preset = _torchvision_preset(arch)
    return preset if preset is not None else ImageTransform(256, 224)
