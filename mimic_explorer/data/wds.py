"""``wds:PATTERN`` — WebDataset tar shards with random access: labelled (``KEY.jpg|jpeg|png|webp`` +
``KEY.cls``) or image-text pairs (image + ``KEY.txt`` caption [+ ``KEY.json``], DataComp's layout).

Why an index: the app must show any sample of a million-image pool at once, and a scorer may visit
samples in any order. Reading a tar from the start for each sample is hopeless, so each shard is read
once to record where every member's bytes are; after that a sample is one ``pread``. The index is
saved per shard (``.npz``, no pickle) in ``cache.shard_index_dir(index_dir)`` — under ``index_dir`` when
given, else in the per-user cache — and keyed by the shard's path, size and
mtime, so a changed shard is re-indexed and an unchanged one never is.

Keys follow WebDataset: everything before the first dot of the member's file name, with its folder
(``a/b.c.jpg`` has key ``a/b`` and extension ``c.jpg``). Sample ids are the keys, except in a pairs
pool whose ``.json`` carries a ``uid``: that uid is the id (DataComp's 128-bit hex uids key its
subset files). A pool is pairs when its samples carry ``.txt`` and none ``.cls``; samples of both
kinds in one pool are an error (``data.captions``). In a pairs pool a sample without an image or a
usable caption, or with an unreadable ``.json``, is a bad sample (``open_errors``); a uid that two
samples share, or two uids that differ only in case, are an error naming both.

Labels: a ``.cls`` is parsed strictly (``data.labels``). One that is not an integer (``nan``, ``3.5``,
``cat``) is a bad sample; one outside the classes of ``classes.txt`` beside the first shard (or the
``class_names`` given), a negative one, or, without declared classes, one that implies far more
classes than the pool has samples (``data.labels.implied_class_limit``) is an error naming the
sample and its shard.

Truncated shards: a shard is read to its end or reported (``data.tar_scan``). A shard cut at a member
header, inside a header, inside a member's data or at a damaged header keeps every sample before the
cut; the sample the cut fell in is a bad sample when it lacks an image, a label or caption, or a kind
of member every other sample of its shard has (a pair cut before its ``.json`` would otherwise change
its id from the uid to the key). The shard itself becomes an entry of ``pool_errors`` (so also of
``open_errors``; id ``SHARD@BYTE``, the byte where its readable part ends) and a line of ``warnings``.
Both are kept in the cached index, so every later open reports them again.

Remote shards (``https://…``, ``s3://…``, ``gs://…``, ``pipe:COMMAND``) are fetched whole into the cache once,
verified complete, and then indexed and read like local ones (``data.remote`` says why); ``shards`` names them
as the pattern does (messages, the ``source`` column), ``shard_files`` are the files read. ``classes.txt`` and
DataComp's ``NAME.parquet`` are fetched from beside them when the server has them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimic_explorer.data.captions import NO_CAPTION, PAIRS, decode_caption, pool_kind
from mimic_explorer.data.errors import BadSample, BadSampleError, DataSourceError
from mimic_explorer.data.folder import CLASS_FILE, read_class_file
from mimic_explorer.data.imageio import IMAGE_EXTENSIONS, MAX_FILE_BYTES_ENV, max_file_bytes
from mimic_explorer.data.labels import cell_text, implied_classes_message, parse_label, too_many_implied
from mimic_explorer.data.remote import beside, fetch_optional, fetch_shards, is_remote
from mimic_explorer.data.shards import resolve_shards
from mimic_explorer.data.source import Source, _preview, uid_case_twins, uid_twins_text
from mimic_explorer.data.tar_scan import TarScan
from mimic_explorer.data.wds_text import CAPTION_OK, JSON_BAD, UID_OK, no_text, no_text_members, read_text, text_columns
from mimic_explorer.util.cache import shard_index_dir
from mimic_explorer.util.processes import process_alive

INDEX_VERSION = 3
_PACKED = ("caption_blob", "caption_start", "uid_blob", "uid_start")  # not one value per key
_PER_SHARD = ("truncated_at", "truncation")  # one value per shard
_TEXT_MEMBER_FIELDS = tuple(no_text_members(0))  # saved only by shards with .txt/.json members
# label_state codes of a key's .cls member
LABEL_ABSENT, LABEL_OK, LABEL_NOT_INTEGER, LABEL_HUGE = 0, 1, 2, 3
_CLS_READ = 64  # a class index is a few digits; a longer .cls is never a usable label
_INT64 = 2**63
_IMAGE, _SAMPLE_KINDS = "image", ("cls", "txt", "json")


@dataclass
class ShardIndex:
    """Per key of one shard: image member offset/size/extension, label and .cls text location, the
    ``.txt`` / ``.json`` member locations and (pairs shards only) their text (``data.wds_text``)."""

    keys: np.ndarray  # str
    offset: np.ndarray  # int64, -1 when the key has no image member
    size: np.ndarray  # int64
    ext: np.ndarray  # str
    label: np.ndarray  # int64, the .cls value when label_state is LABEL_OK (else 0)
    cls_offset: np.ndarray  # int64
    cls_size: np.ndarray  # int64
    duplicate: np.ndarray  # bool: the key's image appears more than once in the shard
    txt_offset: np.ndarray  # int64, -1 when the key has no .txt member
    txt_size: np.ndarray  # int64
    json_offset: np.ndarray  # int64, -1 when the key has no .json member
    json_size: np.ndarray  # int64
    caption_state: np.ndarray  # int8 (wds_text codes); the packed fields are not per key
    caption_blob: np.ndarray  # uint8
    caption_start: np.ndarray  # int64, len(keys) + 1
    uid_state: np.ndarray  # int8
    uid_blob: np.ndarray  # uint8
    uid_start: np.ndarray  # int64, len(keys) + 1
    label_state: np.ndarray  # int8: LABEL_ABSENT / LABEL_OK / LABEL_NOT_INTEGER / LABEL_HUGE
    incomplete: np.ndarray  # bool: the sample a truncation cut short (module docstring)
    truncated_at: np.ndarray  # 0-d int64: where the readable part of a truncated shard ends; -1 when whole
    truncation: np.ndarray  # 0-d str: what was found there ("" when whole)

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (a temporary name, then a rename): shard indexes live in a cache that
        concurrent runs share."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        fields = list(self.__dataclass_fields__)
        if (self.txt_offset < 0).all() and (self.json_offset < 0).all():
            fields = [k for k in fields if k not in _TEXT_MEMBER_FIELDS]  # all at their defaults
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, version=np.int64(INDEX_VERSION), **{k: getattr(self, k) for k in fields})
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ShardIndex:
        """Read an index ``save`` wrote. Raises ``ValueError`` for an index of another version (the caller
        rebuilds it)."""
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != INDEX_VERSION:
                raise ValueError("old index version")
            stored = {k: data[k] for k in cls.__dataclass_fields__ if k in data.files}
        if "txt_offset" not in stored:
            stored.update(no_text_members(len(stored["keys"])))
        return cls(**stored)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: ``dir/base.ext.more`` → (``dir/base``, ``ext.more``), extension lowercased."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, (ext.lower() if dot else "")


def _cls_label(data: bytes, size: int) -> tuple[int, int]:
    """(value, label_state) of a ``.cls`` member's first ``_CLS_READ`` bytes (``data.labels`` rules)."""
    value = parse_label(data)
    if value is None:
        return 0, LABEL_NOT_INTEGER
    if size > _CLS_READ or not -_INT64 <= value < _INT64:
        return 0, LABEL_HUGE  # a whole number too long for any class index
    return value, LABEL_OK


def _kinds(entry: dict) -> set[str]:
    kinds = {k for k in _SAMPLE_KINDS if entry[k] is not None}
    return kinds | {_IMAGE} if entry["img"] is not None else kinds


def _cut_short(entries: dict, order: list[str], key: str) -> bool:
    """Whether ``key``, the sample a truncation fell in or after, lacks a member it should have: an
    image, a label or caption, or a kind of member every other sample of the shard has."""
    kinds = _kinds(entries[key])
    others = [_kinds(entries[k]) for k in order if k != key]
    common = set.intersection(*others) if others else set()
    return not common <= kinds or _IMAGE not in kinds or not kinds & {"cls", "txt"}


def build_shard_index(shard: str) -> ShardIndex:
    """Read a shard's tar headers once (and its small ``.cls`` members) into a ``ShardIndex``; a
    truncated shard keeps every member before the cut and records where and why it ended."""
    order: list[str] = []
    entries: dict[str, dict] = {}

    def entry_of(key: str) -> dict:
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = {
                "img": None,
                "dup": False,
                "cls": None,
                "label": 0,
                "state": LABEL_ABSENT,
                "txt": None,
                "json": None,
            }
            order.append(key)
        return entry

    scan = TarScan(shard)
    fd = os.open(shard, os.O_RDONLY)
    try:
        for member in scan.members():
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            if not key or key.startswith("__") or not ext:
                continue
            entry = entry_of(key)
            if ext in IMAGE_EXTENSIONS:
                current = entry["img"]
                if current is not None and current[2] == ext:
                    entry["dup"] = True
                if current is None or IMAGE_EXTENSIONS.index(ext) < IMAGE_EXTENSIONS.index(current[2]):
                    entry["img"] = (member.offset_data, member.size, ext)
            elif ext == "cls":
                entry["cls"] = (member.offset_data, member.size)
                entry["label"], entry["state"] = _cls_label(
                    os.pread(fd, min(member.size, _CLS_READ), member.offset_data), member.size
                )
            elif ext in ("txt", "json"):
                entry[ext] = (member.offset_data, member.size)
    except tarfile.ReadError as exc:
        raise DataSourceError(
            f"shard {shard} is not an uncompressed tar file ({exc}); random access needs plain .tar shards"
        ) from exc
    finally:
        os.close(fd)
    cut_key = None
    if scan.cut_member is not None:  # the sample whose member the end of the file cut off
        key, ext = _split_key(scan.cut_member)
        if key and not key.startswith("__") and ext:
            cut_key = key
            entry_of(key)
    elif scan.truncated and order and _cut_short(entries, order, order[-1]):
        cut_key = order[-1]
    n = len(order)
    index = ShardIndex(
        keys=np.asarray(order, dtype=str) if n else np.zeros(0, dtype="<U1"),
        offset=np.full(n, -1, np.int64),
        size=np.full(n, -1, np.int64),
        ext=np.full(n, "", dtype="<U4"),
        label=np.zeros(n, np.int64),
        cls_offset=np.full(n, -1, np.int64),
        cls_size=np.full(n, -1, np.int64),
        duplicate=np.zeros(n, bool),
        txt_offset=np.full(n, -1, np.int64),
        txt_size=np.full(n, -1, np.int64),
        json_offset=np.full(n, -1, np.int64),
        json_size=np.full(n, -1, np.int64),
        **no_text(n),
        label_state=np.zeros(n, np.int8),
        incomplete=np.asarray([key == cut_key for key in order], dtype=bool),
        truncated_at=np.asarray(scan.truncated_at, dtype=np.int64),
        truncation=np.asarray(scan.detail),
    )
    for k, key in enumerate(order):
        entry = entries[key]
        if entry["img"] is not None:
            index.offset[k], index.size[k], index.ext[k] = entry["img"]
        if entry["cls"] is not None:
            index.cls_offset[k], index.cls_size[k] = entry["cls"]
        if entry["txt"] is not None:
            index.txt_offset[k], index.txt_size[k] = entry["txt"]
        if entry["json"] is not None:
            index.json_offset[k], index.json_size[k] = entry["json"]
        index.label[k], index.label_state[k] = entry["label"], entry["state"]
        index.duplicate[k] = entry["dup"]
    if (index.label_state == LABEL_ABSENT).all() and ((index.txt_offset >= 0).any() or (index.json_offset >= 0).any()):
        texts = read_text(shard, (index.txt_offset, index.txt_size), (index.json_offset, index.json_size))
        for name, values in texts.items():
            setattr(index, name, values)
    return index


def _index_path(shard: str, cache_dir: Path) -> Path:
    stat = os.stat(shard)
    name = hashlib.sha256(os.path.realpath(shard).encode()).hexdigest()[:16]
    return cache_dir / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npz"


def _load_or_build_index(shard: str, cache_dir: Path) -> tuple[ShardIndex, Path | None]:
    """The shard's index from the cache, or built now and saved (stale entries of the shard removed)."""
    path = _index_path(shard, cache_dir)
    if path.is_file():
        try:
            return ShardIndex.load(path), path
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            pass
    index = build_shard_index(shard)
    try:
        prefix = path.name.split("-", 1)[0] + "-"
        for tmp in cache_dir.glob(f".{prefix}*.npz.tmp-*"):  # of a process killed while it saved this shard's index
            pid = tmp.name.rsplit(".tmp-", 1)[-1].split("-")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                tmp.unlink(missing_ok=True)
        index.save(path)
        for stale in cache_dir.glob(prefix + "*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        return index, None  # read-only cache: the index still works for this process
    return index, path


class WdsSource(Source):
    """``wds:PATTERN``: WebDataset tar shards, indexed once per shard into the shared cache and read by offset (see the
    module). Raises ``DataSourceError`` naming the shard and the sample for a pool no run should start on."""

    kind = "wds"

    def __init__(
        self,
        pattern: str,
        spec: str | None = None,
        index_dir: str | os.PathLike | None = None,
        class_names: Sequence[str] | None = None,
    ):
        spec = spec or f"wds:{pattern}"
        self.spec = spec  # before ``Source.__init__``: messages and remote fetches name it while the pool opens
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        try:
            self.max_bytes = max_file_bytes()
        except DataSourceError as exc:
            raise DataSourceError(f"{spec}: {exc}") from None
        if is_remote(pattern):
            fetched = fetch_shards(pattern, spec)
            self.shards = [f.name for f in fetched]
            self.shard_files = [str(f.path) for f in fetched]
        else:
            self.shards = resolve_shards(pattern, spec)
            self.shard_files = list(self.shards)
        self.cache_dir = shard_index_dir(index_dir)
        parts, self.index_files = [], []
        for shard in self.shard_files:
            index, path = _load_or_build_index(shard, self.cache_dir)
            parts.append(index)
            self.index_files.append(path)
        shard_of = np.concatenate([np.full(len(p.keys), s, np.int32) for s, p in enumerate(parts)])
        cat = {
            f: np.concatenate([getattr(p, f) for p in parts])
            for f in ShardIndex.__dataclass_fields__
            if f not in _PACKED + _PER_SHARD
        }
        keys = cat["keys"].astype(object)
        self._shard_errors, self._shard_warnings, cut_reasons = self._truncations(parts)
        if len(keys) == 0:
            damage = f"; {'; '.join(self._shard_warnings)}" if self._shard_warnings else ""
            raise DataSourceError(f"{spec}: the shards hold no samples ({', '.join(self.shards)}){damage}")
        self._cut_reasons = {int(k): cut_reasons[int(shard_of[k])] for k in np.flatnonzero(cat["incomplete"])}

        dup = np.flatnonzero(cat["duplicate"])
        if len(dup):
            raise DataSourceError(
                f"{spec}: duplicate sample ids (the same key twice in one shard): "
                f"{_preview([f'{keys[k]} in {self.shards[shard_of[k]]}' for k in dup])}"
            )
        has_image = cat["offset"] >= 0
        kind = pool_kind(
            has_image & (cat["label_state"] != LABEL_ABSENT),
            has_image & (cat["txt_offset"] >= 0),
            keys,
            spec,
            ".cls",
            ".txt without .cls",
        )
        if kind == PAIRS:
            self._open_pairs(spec, parts, shard_of, keys, cat)
            return
        self._open_labelled(spec, shard_of, keys, cat, class_names)

    def _truncations(self, parts: list[ShardIndex]) -> tuple[list[BadSample], list[str], dict[int, str]]:
        """For each truncated shard: an ``errors.parquet`` entry (id ``SHARD@BYTE``), a warning line, and
        the reason given to the sample the cut fell in (by shard number)."""
        errors, warnings, cut_reasons = [], [], {}
        for s, part in enumerate(parts):
            at = int(part.truncated_at)
            if at < 0:
                continue
            shard, detail = self.shards[s], str(part.truncation)
            whole = int((~part.incomplete).sum())
            lost = f"the {whole} sample(s) before it are read, whatever followed is lost"
            stops = f"stops at byte {at} of {os.path.getsize(shard)}: {detail}; {lost}"
            errors.append(BadSample(f"{shard}@{at}", shard, f"truncated shard: {stops}"))
            warnings.append(f"TRUNCATED SHARD: {shard} {stops} (re-download or re-write the shard)")
            cut_reasons[s] = f"incomplete sample: the shard is truncated at byte {at} within it: {detail}"
        return errors, warnings, cut_reasons

    def _cls_text(self, k: int, shard_of: np.ndarray, cat: dict) -> str:
        """A ``.cls`` member's text as messages quote it."""
        return repr(
            cell_text(self._read(int(shard_of[k]), int(cat["cls_offset"][k]), min(int(cat["cls_size"][k]), _CLS_READ)))
        )

    def _open_labelled(
        self, spec: str, shard_of: np.ndarray, keys: np.ndarray, cat: dict, class_names: Sequence[str] | None
    ) -> None:
        """Open a labelled pool: a key without an image, one a truncation cut short and a ``.cls`` that
        is not an integer are bad samples; a missing ``.cls`` or a label outside the classes is an error."""
        has_image, state, cut = cat["offset"] >= 0, cat["label_state"], cat["incomplete"]
        unlabelled = np.flatnonzero(has_image & ~cut & (state == LABEL_ABSENT))
        if len(unlabelled):
            k = unlabelled[0]
            raise DataSourceError(
                f"{spec}: shard member without .cls: {keys[k]}.{cat['ext'][k]} in {self.shards[shard_of[k]]} "
                f"has no {keys[k]}.cls label ({len(unlabelled)} such sample(s))"
            )
        garbled = state == LABEL_NOT_INTEGER
        good = has_image & ~cut & ~garbled

        def reason(k: int) -> str:
            if k in self._cut_reasons:
                return self._cut_reasons[k]
            if not has_image[k]:
                return f"no image member ({'/'.join('.' + e for e in IMAGE_EXTENSIONS)})"
            return f"{keys[k]}.cls holds {self._cls_text(k, shard_of, cat)}: not an integer class index"

        open_errors = [
            BadSample(keys[k], f"{self.shards[shard_of[k]]}:{keys[k]}", reason(int(k))) for k in np.flatnonzero(~good)
        ]
        if not good.any():
            raise DataSourceError(
                f"{spec}: no sample has both an image and a usable .cls label "
                f"({_preview(b.reason for b in open_errors)})"
            )
        class_names = self._class_names(spec, np.flatnonzero(good), shard_of, keys, cat, class_names)
        self._keep_members(good, keys, shard_of, cat)
        super().__init__(
            spec,
            keys[good],
            cat["label"][good],
            class_names,
            open_errors=open_errors,
            pool_errors=self._shard_errors,
            warnings=self._shard_warnings,
        )

    def _class_names(
        self,
        spec: str,
        good: np.ndarray,
        shard_of: np.ndarray,
        keys: np.ndarray,
        cat: dict,
        class_names: Sequence[str] | None,
    ) -> list[str]:
        """The declared classes (``class_names``, else ``classes.txt`` beside the first shard) with every
        label inside them, or ``0..max label`` when that range suits the pool's size (``data.labels``);
        else an error naming the sample."""
        declared_from = "the class list given"
        class_file = self._beside_first(CLASS_FILE)
        if class_names is None and class_file is not None and class_file.is_file():
            class_names, declared_from = read_class_file(class_file), str(class_file)
        state, labels = cat["label_state"], cat["label"]

        def where(k: int) -> str:
            return f"in {keys[k]}.cls of {self.shards[shard_of[k]]}"

        if class_names is None:
            top_k = good[np.argmax(labels[good])]
            top = int(labels[top_k])
            for k in good[state[good] == LABEL_HUGE]:  # beyond int64: the largest label, unless negative
                value = parse_label(
                    self._read(int(shard_of[k]), int(cat["cls_offset"][k]), min(int(cat["cls_size"][k]), _CLS_READ))
                )
                if value is not None and value > 0:
                    top_k, top = k, value
                    break
            if too_many_implied(top, len(good)):
                raise DataSourceError(
                    f"{spec}: "
                    + implied_classes_message(
                        self._cls_text(top_k, shard_of, cat),
                        where(top_k),
                        top,
                        len(good),
                        "in classes.txt beside the shards",
                    )
                )
            class_names, declared_from = [str(c) for c in range(max(top, 0) + 1)], "classes made from the labels"
        count = len(class_names)
        outside = good[(state[good] == LABEL_HUGE) | (labels[good] < 0) | (labels[good] >= count)]
        if len(outside):
            k = outside[0]
            raise DataSourceError(
                f"{spec}: label {self._cls_text(k, shard_of, cat)} {where(k)} is outside the class range "
                f"0..{count - 1} ({len(outside)} sample(s)); classes: {_preview(class_names, 12)} ({declared_from})"
            )
        return list(class_names)

    def _keep_members(self, keep: np.ndarray, keys: np.ndarray, shard_of: np.ndarray, cat: dict) -> None:
        """Where the kept samples' members are (shard, image offset/size/extension, .json location)."""
        self._keys = keys[keep]
        self._shard_of = shard_of[keep]
        self._offset = cat["offset"][keep]
        self._size = cat["size"][keep]
        self._ext = cat["ext"][keep].astype(object)
        self._json_offset = cat["json_offset"][keep]
        self._json_size = cat["json_size"][keep]

    def _open_pairs(
        self, spec: str, parts: list[ShardIndex], shard_of: np.ndarray, keys: np.ndarray, cat: dict
    ) -> None:
        """Open an image-text pool: ids (the ``.json`` uid when there is one), captions, bad samples."""
        texts, uids = [], []
        for part in parts:
            part_texts, part_uids = text_columns(part)
            texts += part_texts
            uids += part_uids
        texts, uids = np.asarray(texts, dtype=object), np.asarray(uids, dtype=object)
        ids = np.where(cat["uid_state"] == UID_OK, uids, keys)
        reasons = np.full(len(keys), None, dtype=object)
        bad_json = cat["uid_state"] >= JSON_BAD
        reasons[bad_json] = uids[bad_json]
        bad_caption = cat["caption_state"] != CAPTION_OK
        reasons[bad_caption] = [text or f"{NO_CAPTION} (no .txt member)" for text in texts[bad_caption]]
        reasons[cat["offset"] < 0] = f"no image member ({'/'.join('.' + e for e in IMAGE_EXTENSIONS)})"
        for k, why in self._cut_reasons.items():
            reasons[k] = why
        good = np.asarray([r is None for r in reasons], dtype=bool)
        self._refuse_duplicate_uids(spec, ids, good, keys, shard_of)
        open_errors = [
            BadSample(ids[k], f"{self.shards[shard_of[k]]}:{keys[k]}", reasons[k]) for k in np.flatnonzero(~good)
        ]
        self._keep_members(good, keys, shard_of, cat)
        if not good.any():
            raise DataSourceError(
                f"{spec}: no sample has both an image and a usable caption ({_preview(b.reason for b in open_errors)})"
            )
        super().__init__(
            spec,
            ids[good],
            None,
            [],
            open_errors=open_errors,
            captions=texts[good],
            pool_errors=self._shard_errors,
            warnings=self._shard_warnings,
        )

    def _refuse_duplicate_uids(
        self, spec: str, ids: np.ndarray, good: np.ndarray, keys: np.ndarray, shard_of: np.ndarray
    ) -> None:
        """Raise naming every place a shared id (usually a ``.json`` uid) occurs, or where two uids that
        differ only in case occur (``source.uid_case_twins``)."""
        values, counts = np.unique(ids[good].astype(str), return_counts=True)
        dupes = values[counts > 1]
        if not len(dupes):
            twins = uid_case_twins(ids[good].tolist())
            if twins:
                position = {uid: k for k, uid in zip(np.flatnonzero(good).tolist(), ids[good].tolist(), strict=True)}
                raise DataSourceError(
                    f"{spec}: uids "
                    + uid_twins_text(
                        twins, lambda uid: f" ({keys[position[uid]]} in {self.shards[shard_of[position[uid]]]})"
                    )
                )
            return
        where = []
        for uid in dupes[:5].tolist():
            found = np.flatnonzero(good & (ids == uid))[:3]
            where.append(f"{uid} ({', '.join(f'{keys[k]} in {self.shards[shard_of[k]]}' for k in found)})")
        raise DataSourceError(
            f"{spec}: duplicate sample ids (uids shared by several samples): {'; '.join(where)}"
            + (f" … ({len(dupes)} in all)" if len(dupes) > 5 else "")
            + "; every pair needs a unique uid"
        )

    def _beside_first(self, file_name: str) -> Path | None:
        """``file_name`` in the first shard's folder (fetched when the shards are remote), or None without one."""
        first = self.shards[0]
        if not is_remote(first):
            return Path(first).parent / file_name
        return fetch_optional(beside(first, file_name), self.spec)

    def beside_metadata(self) -> list[Path]:
        """DataComp's layout: ``NAME.parquet`` beside a shard ``NAME.tar``, for every shard that has one (fetched
        beside remote URLs; a ``pipe:`` command has none)."""
        found = []
        for name in self.shards:
            stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".parquet"
            if is_remote(name):
                path = fetch_optional(beside(name, stem), self.spec)
            else:
                path = Path(name).with_suffix(".parquet")
            if path is not None and path.is_file():
                found.append(path)
        return found

    def metadata(self, i: int) -> dict | None:
        """The parsed ``.json`` member of sample ``i`` (None without one), read now from the shard."""
        if self._json_offset[i] < 0:
            return None
        meta = json.loads(
            self._read(int(self._shard_of[i]), int(self._json_offset[i]), int(self._json_size[i])).decode("utf-8")
        )
        return meta if isinstance(meta, dict) else None

    def all_captions(self, i: int) -> list[str]:
        """The pair's caption, then the other captions its ``.json`` lists as ``all_captions`` (Flickr8k
        and COCO-style shards have five per image), without repeats."""
        own = super().all_captions(i)
        if not own:
            return own
        extra = (self.metadata(i) or {}).get("all_captions") or []
        texts = [decode_caption(c)[0] for c in extra if isinstance(c, str)]
        return own + [t for t in dict.fromkeys(texts) if t is not None and t not in own]

    # --- random access ----------------------------------------------------------------------
    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.shard_files[shard], os.O_RDONLY)
        return fd

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        return os.pread(self._fd(shard), size, offset)

    def source_of(self, i: int) -> str:
        """``shard.tar:key.ext``: the shard and the image member of sample ``i``."""
        return f"{self.shards[self._shard_of[i]]}:{self._keys[i]}.{self._ext[i]}"

    def read_bytes(self, i: int) -> bytes:
        """The image member's bytes, read at its recorded offset; a member over the size cap is a bad sample."""
        size = int(self._size[i])
        if size > self.max_bytes:  # the same cap as image files (``imageio.MAX_FILE_BYTES``)
            raise BadSampleError(
                BadSample(
                    self.sample_ids[i],
                    self.source_of(i),
                    f"image member too large ({size:,} bytes; "
                    f"the cap is {self.max_bytes:,}, set {MAX_FILE_BYTES_ENV} to change it)",
                )
            )
        try:
            data = self._read(int(self._shard_of[i]), int(self._offset[i]), size)
        except OSError as exc:
            raise BadSampleError(
                BadSample(self.sample_ids[i], self.source_of(i), f"cannot read shard ({exc.strerror or exc})")
            ) from exc
        if len(data) != size:
            raise BadSampleError(
                BadSample(
                    self.sample_ids[i],
                    self.source_of(i),
                    f"shard ends early: read {len(data)} of {size} bytes (shard changed since indexing?)",
                )
            )
        return data

    def _sizes_now(self) -> np.ndarray:
        return self._size.astype(np.int64)

    def close(self) -> None:
        """Close the shard files (they reopen on the next read)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit anything may already be gone
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
