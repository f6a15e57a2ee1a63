"""The text members of image-text shards (``KEY.txt`` caption, ``KEY.json`` with DataComp's ``uid``),
read once when a shard is indexed and kept in its index.

Why at indexing time: a pairs pool must know every caption and id when it opens (ids key every file a
run writes; captions go to ``samples.parquet`` and the tokenizer), and reading two small members per
sample on every open would make opening a million-pair pool slow. Labelled shards never come here:
their index build does no extra reading. Each sample gets a state code, so a missing, empty or
non-UTF-8 caption and an unreadable ``.json`` become recorded bad samples with a reason.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mimic_explorer.data.captions import decode_caption, pack_strings, unpack_strings

# caption_state codes
CAPTION_ABSENT, CAPTION_OK, CAPTION_BAD = 0, 1, 2
# uid_state codes
JSON_ABSENT, UID_OK, UID_ABSENT, JSON_BAD, UID_BAD = 0, 1, 2, 3, 4


def no_text(n: int) -> dict[str, np.ndarray]:
    """The text fields of a shard whose text members were not read (a labelled shard)."""
    return {
        "caption_state": np.zeros(n, np.int8),
        "caption_blob": np.zeros(0, np.uint8),
        "caption_start": np.zeros(n + 1, np.int64),
        "uid_state": np.zeros(n, np.int8),
        "uid_blob": np.zeros(0, np.uint8),
        "uid_start": np.zeros(n + 1, np.int64),
    }


def no_text_members(n: int) -> dict[str, np.ndarray]:
    """Every text-related field of a shard without any ``.txt`` or ``.json`` member. Such a shard (every
    labelled one) saves none of them, so its index is as quick to load as before pairs existed."""
    absent = {f"{ext}_{what}": np.full(n, -1, np.int64) for ext in ("txt", "json") for what in ("offset", "size")}
    return absent | no_text(n)


def _uid_of(data: bytes) -> tuple[int, str | None]:
    """(state, uid or reason) of a ``.json`` member."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return JSON_BAD, f"unreadable .json ({type(exc).__name__}: {str(exc)[:80]})"
    if not isinstance(meta, dict):
        return JSON_BAD, f"unreadable .json (a {type(meta).__name__}, not an object)"
    if "uid" not in meta or meta["uid"] is None:
        return UID_ABSENT, None
    uid = meta["uid"]
    if isinstance(uid, bool) or not isinstance(uid, (str, int)) or not str(uid).strip():
        return UID_BAD, f".json uid {uid!r} is not a non-empty string"
    return UID_OK, str(uid).strip()


def read_text(
    shard: str, txt: tuple[np.ndarray, np.ndarray], meta: tuple[np.ndarray, np.ndarray]
) -> dict[str, np.ndarray]:
    """Read every ``.txt`` and ``.json`` member of a shard (``(offsets, sizes)``, offset -1 = absent).

    A bad caption or ``.json`` packs its *reason* in place of the text, so the source can say why.
    """
    n = len(txt[0])
    caption_state, uid_state = np.zeros(n, np.int8), np.zeros(n, np.int8)
    captions: list[str | None] = [None] * n
    uids: list[str | None] = [None] * n
    fd = os.open(shard, os.O_RDONLY)
    try:
        for k in range(n):
            if txt[0][k] >= 0:
                text, reason = decode_caption(os.pread(fd, int(txt[1][k]), int(txt[0][k])))
                caption_state[k] = CAPTION_OK if text is not None else CAPTION_BAD
                captions[k] = text if text is not None else reason
            if meta[0][k] >= 0:
                uid_state[k], uids[k] = _uid_of(os.pread(fd, int(meta[1][k]), int(meta[0][k])))
    finally:
        os.close(fd)
    caption_blob, caption_start = pack_strings(captions)
    uid_blob, uid_start = pack_strings(uids)
    return {
        "caption_state": caption_state,
        "caption_blob": caption_blob,
        "caption_start": caption_start,
        "uid_state": uid_state,
        "uid_blob": uid_blob,
        "uid_start": uid_start,
    }


def text_columns(index) -> tuple[list[str], list[str]]:
    """(captions or reasons, uids or reasons) of one ``ShardIndex``, one string per key."""
    return unpack_strings(index.caption_blob, index.caption_start), unpack_strings(index.uid_blob, index.uid_start)
