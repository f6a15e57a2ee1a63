"""The preprocessing a model is fed: where it comes from, how the command line overrides it, and
when it contradicts the preprocessing a checkpoint was trained with.

Why it matters: a pretrained backbone fed another resize, crop or normalisation than it was trained
with gives silently worse features, hence worse mimic scores. So the preprocessing comes from the
model (timm's data config, the torchvision weights' ``transforms()``), or from what the checkpoint
records, and what was chosen is recorded (``ImageTransform.describe()``) in meta.json and in the
feature-cache key. Each later step replaces the earlier (docs/ARCHITECTURE.md, "where a new model
family goes"):

1. the model's own: timm's resolved data config, the torchvision weights' preset, an ``input_size``
   a ``file.py:function`` architecture declares (on the function or the module it returns), else the
   family default (``data.transforms.default_transform``);
2. what the init checkpoint records (a model folder's ``config.json`` ``pretrained_cfg``, or the
   ``preprocessing`` entry of the ``.meta.json`` sidecar that ``--save-model`` writes);
3. ``--image-size N`` (resize and crop to N), then each ``--transform KEY=VALUE``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

from mimic_explorer.data.transforms import CROP_MODES, INTERPOLATIONS, ImageTransform

#: the keys ``--transform`` accepts, in the order they are documented
TRANSFORM_KEYS = ("resize", "crop", "mean", "std", "interpolation", "crop_mode")
_PIXEL_KEYS = ("resize", "crop")
_CHANNEL_KEYS = ("mean", "std")
#: timm's crop fraction when a data config gives none (``timm.data.DEFAULT_CROP_PCT``)
TIMM_DEFAULT_CROP_PCT = 0.875


class PreprocessingError(ValueError):
    """Preprocessing text or values that cannot describe an image transform."""


def _pixels(key: str, values: list[str], text: str) -> int:
    if len(values) != 1:
        raise PreprocessingError(
            f"--transform {text!r}: {key} takes one whole number of pixels, got {','.join(values)!r}"
        )
    try:
        number = int(values[0])
    except ValueError:
        raise PreprocessingError(
            f"--transform {text!r}: {key} must be a whole number of pixels, got {values[0]!r}"
        ) from None
    if number < 1:
        raise PreprocessingError(f"--transform {text!r}: {key} must be at least 1 pixel, got {number}")
    return number


def _channels(key: str, values: list[str], text: str) -> tuple[float, float, float]:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise PreprocessingError(f"--transform {text!r}: {key} needs numbers, got {','.join(values)!r}") from None
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3:
        raise PreprocessingError(
            f"--transform {text!r}: {key} needs 3 values (R,G,B) or one for all channels, got {len(numbers)}"
        )
    if any(not math.isfinite(n) for n in numbers) or (key == "std" and any(n <= 0 for n in numbers)):
        raise PreprocessingError(
            f"--transform {text!r}: {key} values must be finite{' and > 0' if key == 'std' else ''}, got {numbers}"
        )
    return (numbers[0], numbers[1], numbers[2])


def _choice(key: str, values: list[str], allowed: tuple[str, ...], text: str) -> str:
    value = ",".join(values).strip().lower()
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise PreprocessingError(f"--transform {text!r}: {key} {value!r} is not one of {', '.join(allowed)}{hint}")
    return value


def parse_transform_text(text: str) -> dict:
    """``"resize=R,crop=C,mean=a,b,c,std=a,b,c,interpolation=bicubic"`` to typed overrides.

    A comma followed by ``KEY=`` starts the next key; other commas separate a key's values (mean and
    std take three, or one for all channels). Keys may be given in any order, each once; the ones left
    out keep the model's value. Raises ``PreprocessingError`` naming the bad part.
    """
    if not isinstance(text, str) or not text.strip():
        raise PreprocessingError(f"--transform needs KEY=VALUE pairs ({', '.join(TRANSFORM_KEYS)}), got {text!r}")
    raw: dict[str, list[str]] = {}
    current = None
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip().lower().replace("-", "_")
            if key not in TRANSFORM_KEYS:
                close = difflib.get_close_matches(key, TRANSFORM_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise PreprocessingError(
                    f"--transform {text!r}: unknown key {key!r}{hint}; keys: {', '.join(TRANSFORM_KEYS)}"
                )
            if key in raw:
                raise PreprocessingError(f"--transform {text!r}: {key} is given twice")
            current = key
            raw[key] = [value.strip()]
        elif current is None:
            raise PreprocessingError(f"--transform {text!r}: {token!r} comes before any KEY=VALUE")
        else:
            raw[current].append(token)
    for key, values in raw.items():
        if any(not v for v in values):
            raise PreprocessingError(f"--transform {text!r}: {key} has an empty value")
    out: dict = {}
    for key, values in raw.items():
        if key in _PIXEL_KEYS:
            out[key] = _pixels(key, values, text)
        elif key in _CHANNEL_KEYS:
            out[key] = _channels(key, values, text)
        elif key == "interpolation":
            out[key] = _choice(key, values, INTERPOLATIONS, text)
        else:
            out[key] = _choice(key, values, CROP_MODES, text)
    return out


def check_image_size(image_size: object) -> None:
    """Raise ``PreprocessingError`` unless ``image_size`` (``--image-size``) is None or a positive int."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise PreprocessingError(f"--image-size must be a positive whole number of pixels, got {image_size!r}")


def override_preprocessing(
    base: ImageTransform, *, image_size: int | None = None, overrides: Mapping | str | None = None
) -> ImageTransform:
    """``base`` with ``--image-size N`` (resize and crop to N) applied, then each ``--transform`` key.

    ``overrides`` is the ``--transform`` text or the dict ``parse_transform_text`` returns. A resize
    smaller than the crop is refused (the crop would be padded with black).
    """
    fields = base.describe()
    fields.setdefault("crop_mode", base.crop_mode)
    check_image_size(image_size)
    if image_size is not None:
        fields["resize"] = fields["crop"] = image_size
    if isinstance(overrides, str):
        overrides = parse_transform_text(overrides)
    unknown = sorted(set(overrides or {}) - set(TRANSFORM_KEYS))
    if unknown:
        raise PreprocessingError(
            f"unknown preprocessing key(s) {', '.join(unknown)}; keys: {', '.join(TRANSFORM_KEYS)}"
        )
    fields.update(overrides or {})
    if fields["crop_mode"] == "center" and fields["resize"] < fields["crop"]:
        raise PreprocessingError(
            f"preprocessing resize {fields['resize']} is smaller than crop {fields['crop']}: the crop would be padded "
            "with black. Give resize >= crop (--image-size N sets both)."
        )
    try:
        return ImageTransform.from_description(fields)
    except ValueError as exc:
        raise PreprocessingError(str(exc)) from None


def declared_input_size(*holders: object) -> int | None:
    """The square input size the first holder declaring ``input_size`` gives (an int N, ``(H, W)`` or
    ``(C, H, W)``), or None when none declares one. A ``file.py:function`` architecture sets it on the
    function (``make.input_size = 32``), on the module it returns (``self.input_size = 32``) or in its
    file (a top-level ``input_size = 32``, for every factory there)."""
    for holder in holders:
        value = getattr(holder, "input_size", None)
        if value is None:
            continue
        where = getattr(holder, "__qualname__", None) or getattr(holder, "__file__", None) or type(holder).__name__
        size = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not size or len(size) > 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise PreprocessingError(
                f"{where}.input_size must be N, (H, W) or (C, H, W) in whole pixels, got {value!r}"
            )
        if len(size) == 3 and size[0] != 3:
            raise PreprocessingError(
                f"{where}.input_size {value!r} declares {size[0]} channel(s); images are fed as 3-channel RGB"
            )
        height, width = size[-2:] if len(size) > 1 else (size[0], size[0])
        if height != width:
            raise PreprocessingError(
                f"{where}.input_size {value!r} is not square; only square inputs are supported: declare N, "
                "or pass --image-size N"
            )
        return int(height)
    return None


def transform_from_timm_config(config: Mapping) -> ImageTransform:
    """The ``ImageTransform`` equal to timm's eval transform for a resolved data config
    (``timm.data.resolve_model_data_config``): crop = input size, resize = floor(crop / crop_pct),
    timm's interpolation, mean and std. timm's rare "border" crop mode (pad instead of crop) has no
    counterpart and is read as "center"."""
    size = tuple(config["input_size"])
    height, width = size[-2:]
    if height != width:
        raise PreprocessingError(
            f"the model's input size {size} is not square; only square inputs are supported: pass --image-size N"
        )
    crop_pct = config.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    crop_mode = config.get("crop_mode") or "center"
    return ImageTransform(
        resize=math.floor(height / crop_pct),
        crop=int(height),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config.get("interpolation") or "bilinear",
        crop_mode=crop_mode if crop_mode in CROP_MODES else "center",
    )


def preprocessing_mismatch(recorded: Mapping, used: ImageTransform, where: str) -> str | None:
    """A loud warning when ``used`` differs from the ``recorded`` preprocessing (a ``describe()``-style
    dict) that ``where`` (a checkpoint) was trained with; None when they agree on every recorded key."""
    now = used.describe()
    now.setdefault("crop_mode", used.crop_mode)
    recorded = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in recorded.items()}
    recorded.setdefault("crop_mode", "center")
    differences = []
    for key in TRANSFORM_KEYS:
        if key not in recorded:
            continue
        before, after = recorded[key], now[key]
        same = (
            len(before) == len(after)
            and all(math.isclose(float(a), float(b), abs_tol=1e-6) for a, b in zip(before, after, strict=True))
            if key in _CHANNEL_KEYS
            else before == after
        )
        if not same:
            differences.append(f"{key} {before} -> {after}")
    if not differences:
        return None
    return (
        f"PREPROCESSING MISMATCH: {where} was trained with other preprocessing than this run uses "
        f"({'; '.join(differences)}). A backbone fed other inputs than it was trained on gives worse features "
        "and mimic scores; drop the --image-size/--transform override or make it match."
    )
