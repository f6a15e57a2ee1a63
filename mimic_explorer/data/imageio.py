"""Decode image bytes into one consistent RGB picture, or say precisely why not.

Why: the model, the thumbnails and the app must all see the same pixels whatever the file is
(grayscale, palette, RGBA, CMYK, 16-bit PNG, EXIF-rotated JPEG), and a bad file must become a
recorded reason instead of an exception that kills a run. Rules, applied the same way everywhere:

- the EXIF orientation is applied (the picture a person sees is the picture the model sees);
- only the first frame of an animated file is used;
- transparency (RGBA, LA, palette with a transparent colour) is composited over white;
- 16-bit grayscale is scaled to 8 bits (value // 257), float images are clipped to 0..255;
- everything else goes through Pillow's own conversion to RGB (CMYK, L, 1-bit, YCbCr, …).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mimic_explorer.data.errors import BadSample, BadSampleError

#: File extensions treated as images when a format needs to pick a member (WebDataset).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

_WHITE = (255, 255, 255)


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image, file_format: str | None = None) -> Image.Image:
    """Convert any decoded Pillow image to 8-bit RGB with the module's fixed rules.

    ``file_format`` is the decoder's format name (``image.format`` is lost by copies such as
    ``exif_transpose``); it tells a 16-bit PNG loaded as mode ``I`` from a 32-bit TIFF.
    """
    mode = image.mode
    file_format = file_format or image.format
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        array = np.asarray(image).astype(np.int64)
        # 16-bit sources (I;16*, or PNG's 16-bit grey loaded as I) keep their top byte; other
        # 32-bit integer images are read as 8-bit values and clipped.
        grey = array // 257 if (mode != "I" or file_format == "PNG") else array
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode in ("L", "1", "P", "CMYK", "YCbCr"):
        return image.convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(
            image, ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        )
    return image.convert("RGB")


def decode_image(data: bytes, sample_id: str = "", path: str = "") -> Image.Image:
    """Bytes → RGB ``PIL.Image`` (fully decoded). Raises ``BadSampleError`` with a readable reason."""

    def bad(reason: str) -> BadSampleError:
        return BadSampleError(BadSample(str(sample_id), str(path), reason))

    if not data:
        raise bad("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; real failures raise below
            image = Image.open(io.BytesIO(data))
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            file_format = image.format
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image, file_format)
            rgb.load()
    except UnidentifiedImageError:
        raise bad("not an image (Pillow does not recognise the format)") from None
    except Image.DecompressionBombError as exc:
        raise bad(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            raise bad(f"truncated image data ({text})") from None
        raise bad(f"corrupt image data ({type(exc).__name__}: {text})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one bad sample, never a crash
        raise bad(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    if rgb.width < 1 or rgb.height < 1:
        raise bad(f"image has no pixels ({rgb.width}×{rgb.height})")
    return rgb


def read_file(path: str | os.PathLike, sample_id: str = "") -> bytes:
    """Read a whole file; a missing or unreadable file raises ``BadSampleError`` (not ``OSError``)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        reason = "file missing"
    except PermissionError:
        reason = "permission denied"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except OSError as exc:
        reason = f"cannot read file ({exc.strerror or exc})"
    raise BadSampleError(BadSample(str(sample_id), str(path), reason))


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → RGB image, by the same rules."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(array))
