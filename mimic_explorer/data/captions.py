"""What makes a caption usable, and how a pool is told to be labelled images or image-text pairs.

Why one module: shards and manifests must agree on every rule. A caption is the text of a ``.txt``
member or a manifest cell, decoded as strict UTF-8 and stripped of surrounding whitespace; an empty
or undecodable caption is one bad sample (recorded, skipped), never a crash, because a web-crawled
pool always holds a few. A pool is *labelled* when its samples carry class labels and *pairs* when
they carry captions instead; a pool that mixes both cannot be trained either way, so that is an
error naming examples of each (see docs/ARCHITECTURE.md, "Image-text pairs").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mimic_explorer.data.errors import DataSourceError

LABELLED = "labelled"
PAIRS = "pairs"
POOL_KINDS = (LABELLED, PAIRS)
#: The label of every sample of a pairs pool (no class: the caption is the target).
NO_CLASS = -1

NO_CAPTION = "no caption"
EMPTY_CAPTION = "empty caption"
NOT_UTF8 = "caption is not UTF-8 text"


def decode_caption(data: bytes | str | None) -> tuple[str | None, str | None]:
    """``(caption, None)`` for usable text, ``(None, reason)`` for a missing, empty or non-UTF-8 one."""
    if data is None:
        return None, NO_CAPTION
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"{NOT_UTF8} ({exc.reason} at byte {exc.start})"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in data):  # surrogate-escaped bytes of a non-UTF-8 file
        return None, NOT_UTF8
    text = data.strip()
    if not text:
        return None, EMPTY_CAPTION
    return text, None


def pool_kind(
    labelled: np.ndarray, captioned: np.ndarray, names: Sequence[str], spec: str, label_mark: str, caption_mark: str
) -> str:
    """``PAIRS`` when some samples carry a caption and none a label, else ``LABELLED``.

    ``labelled`` / ``captioned`` are per-sample flags (a sample with both counts as labelled: a caption
    beside a class label is extra text, as in many labelled shard sets). Samples of both kinds in one
    pool raise ``DataSourceError`` naming a few of each; ``label_mark`` / ``caption_mark`` say what
    was found (``.cls`` / ``.txt without .cls``).
    """
    labelled = np.asarray(labelled, dtype=bool)
    captioned = np.asarray(captioned, dtype=bool) & ~labelled
    if not captioned.any():
        return LABELLED
    if not labelled.any():
        return PAIRS
    names = np.asarray(names, dtype=object)
    raise DataSourceError(
        f"{spec} mixes labelled samples ({label_mark}: {_examples(names, labelled)}) and image-text pairs "
        f"({caption_mark}: {_examples(names, captioned)}); a pool is one or the other, so split it into two pools"
    )


def _examples(names: np.ndarray, mask: np.ndarray, limit: int = 3) -> str:
    shown = ", ".join(map(str, names[mask][:limit].tolist()))
    return shown + (f" … ({int(mask.sum())} in all)" if mask.sum() > limit else "")


def pack_strings(values: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte blob and ``len + 1`` start offsets (None packs as empty).

    Why: ``np.savez`` keeps it without pickle, and unlike a fixed-width unicode array its size is the
    text's, however long the longest caption.
    """
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=starts[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return blob, starts


def unpack_strings(blob: np.ndarray, starts: np.ndarray, rows: np.ndarray | None = None) -> list[str]:
    """The strings ``pack_strings`` packed (only ``rows`` when given)."""
    raw = blob.tobytes()
    rows = range(len(starts) - 1) if rows is None else rows
    return [raw[starts[k] : starts[k + 1]].decode("utf-8") for k in rows]
