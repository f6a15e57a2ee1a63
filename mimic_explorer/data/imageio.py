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
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mimic_explorer.data.errors import BadSample, BadSampleError, DataSourceError

#: File extensions treated as images when a format needs to pick a member (WebDataset).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

_WHITE = (255, 255, 255)


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
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


#: Default cap on one image file's size: 256 MiB, the size of an uncompressed 8-bit RGB picture at
#: Pillow's decompression-bomb warning limit (``Image.MAX_IMAGE_PIXELS`` = 89,478,485 pixels × 3
#: bytes). An encoded image is smaller than its pixels, so a real image file past this size decodes
#: to a picture Pillow warns about or refuses anyway, while reading it whole could exhaust memory
#: (a path to ``/dev/zero`` or a stray video never ends or fills RAM). ``MAX_FILE_BYTES_ENV``
#: overrides it (a whole number of bytes) for pools of very large scans.
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FILE_BYTES_ENV = "MIMIC_EXPLORER_MAX_FILE_BYTES"


def max_file_bytes() -> int:
    """The cap on one image file's size: ``$MIMIC_EXPLORER_MAX_FILE_BYTES`` or ``MAX_FILE_BYTES``.

    Raises ``DataSourceError`` (one line) when the variable is set but not a positive whole number."""
    raw = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not raw:
        return MAX_FILE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise DataSourceError(
            f"{MAX_FILE_BYTES_ENV}={raw!r} is not a positive whole number of bytes (default {MAX_FILE_BYTES})"
        )
    return value


def _file_problem(st: os.stat_result, max_bytes: int) -> str | None:
    """Why a file with this ``stat`` cannot be a sample's image (not a regular file, or over the cap),
    or None when it can."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a special file"
        )
        return f"is {kind}, not a regular file"
    if st.st_size > max_bytes:
        return f"file too large ({st.st_size:,} bytes; the cap is {max_bytes:,}, set {MAX_FILE_BYTES_ENV} to change it)"
    return None


def check_file(path: str | os.PathLike, sample_id: str = "", max_bytes: int | None = None) -> None:
    """Raise ``BadSampleError`` unless ``path`` is a regular file within the size cap (for readers that
    open the file themselves, such as torchvision datasets). ``stat`` never blocks, even on a FIFO."""
    try:
        problem = _file_problem(os.stat(path), max_file_bytes() if max_bytes is None else max_bytes)
    except OSError as exc:
        problem = _os_reason(exc)
    if problem:
        raise BadSampleError(BadSample(str(sample_id), str(path), problem))


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file missing"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    return f"cannot read file ({exc.strerror or exc})"


def _read_at_most(fd: int, limit: int, expected: int) -> bytes:
    """Up to ``limit`` bytes of ``fd``, asking for ``expected`` first (the file's size + 1, so a file
    that did not change is read in one call and never gets a ``limit``-sized buffer)."""
    parts, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(max(expected - total, 1 << 16), limit - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_file(path: str | os.PathLike, sample_id: str = "", max_bytes: int | None = None) -> bytes:
    """Read a whole image file; a missing, unreadable, non-regular (FIFO, device, directory) or
    over-cap file raises ``BadSampleError`` (not ``OSError``) at once.

    Why open before checking: the check is made on the opened file (``fstat``), so nothing can swap
    the path between check and read, and the open itself is non-blocking, so a FIFO without a writer
    cannot hang the run. At most ``max_bytes`` + 1 bytes are read, even from a file that grows."""
    max_bytes = max_file_bytes() if max_bytes is None else max_bytes
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        )
    except OSError as exc:
        raise BadSampleError(BadSample(str(sample_id), str(path), _os_reason(exc))) from None
    try:
        info = os.fstat(fd)
        problem = _file_problem(info, max_bytes)
        if problem is None:
            data = _read_at_most(fd, max_bytes + 1, info.st_size + 1)
            if len(data) <= max_bytes:
                return data
            problem = f"file too large (more than {max_bytes:,} bytes; set {MAX_FILE_BYTES_ENV} to change the cap)"
    except OSError as exc:
        problem = _os_reason(exc)
    finally:
        os.close(fd)
    raise BadSampleError(BadSample(str(sample_id), str(path), problem))


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → RGB image, by the same rules."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(array))
