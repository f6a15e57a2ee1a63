"""The ``Source`` contract every data SPEC implements, and the checks they all share.

Why one base class: the trainer, the scorer and the app must not care whether a pool is a folder,
a manifest, WebDataset shards or a torchvision dataset. Each source knows its sample ids, labels and
class names up front (cheap: no image is decoded to open a source), gives random access by position
(``load(i)``), and reports bad samples instead of raising during iteration.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from mimic_explorer.data.captions import LABELLED, NO_CLASS, PAIRS
from mimic_explorer.data.errors import BadSample, BadSampleError, DataSourceError, ErrorLog
from mimic_explorer.data.imageio import decode_image


def _preview(values: Iterable, limit: int = 5) -> str:
    values = list(values)
    text = ", ".join(repr(v) for v in values[:limit])
    return text + (f", … ({len(values)} in all)" if len(values) > limit else "")


#: A DataComp uid: 32 hex digits, one 128-bit number whatever the case of its letters.
UID_PATTERN = re.compile(r"[0-9a-fA-F]{32}")


def _check_unique_ids(sample_ids: np.ndarray, what: str) -> None:
    """Raise ``DataSourceError`` naming the first duplicated ids (ids key every file the run writes),
    or two 32-hex-digit uids that differ only in case (``uid_case_twins``)."""
    ids = np.asarray(sample_ids, dtype=object)
    if len(ids) != len(set(ids.tolist())):
        values, counts = np.unique(ids.astype(str), return_counts=True)
        dupes = values[counts > 1]
        raise DataSourceError(
            f"duplicate sample ids in {what}: {_preview(dupes.tolist())}; every sample needs a unique id"
        )
    twins = uid_case_twins(ids.tolist())
    if twins:
        raise DataSourceError(f"sample ids in {what} {uid_twins_text(twins)}")


def uid_case_twins(ids: Sequence[str]) -> list[list[str]]:
    """Groups of distinct ids that are the same 32-hex-digit uid but for the case of their letters.

    Why refused when a pool opens: a uid is a 128-bit number, so ``ABC…`` and ``abc…`` name one pair in
    a DataComp subset file (``export --format uids``) and in a ``--subset`` uid list, which match
    without regard to case; accepted here, such a pool failed only at export. Ids that are not uids
    (file paths such as ``cat/A.jpg`` and ``cat/a.jpg``) may differ only in case."""
    text = "\n".join(ids)
    if text.lower() == text:  # no upper-case letter anywhere: no twins (the common, fast case)
        return []
    lowered = [i.lower() for i in ids]
    if len(set(lowered)) == len(lowered):
        return []
    groups: dict[str, list[str]] = {}
    for original, low in zip(ids, lowered, strict=True):
        if UID_PATTERN.fullmatch(original):
            groups.setdefault(low, []).append(original)
    return [group for group in groups.values() if len(group) > 1]


def uid_twins_text(twins: list[list[str]], where=lambda uid: "") -> str:
    """The end of the one-line refusal of ``uid_case_twins`` groups (``where(uid)`` may say where each
    occurs)."""
    first = " and ".join(f"{uid!r}{where(uid)}" for uid in twins[0])
    more = f" ({len(twins)} such groups)" if len(twins) > 1 else ""
    return (
        f"differ only in case: {first}{more} are one 128-bit uid, and DataComp subsets and uid keep-lists "
        "ignore case; every pair needs a unique uid"
    )


def _check_labels(
    labels: np.ndarray, class_names: Sequence[str], sample_ids: np.ndarray, what: str, column: str = "label"
) -> None:
    """Raise ``DataSourceError`` when a label is outside 0..len(class_names)-1, naming the samples."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= len(class_names))
    if bad.any():
        pairs = [f"{sid}={lab}" for sid, lab in zip(np.asarray(sample_ids)[bad][:5], labels[bad][:5], strict=True)]
        raise DataSourceError(
            f"{column} outside the class range 0..{len(class_names) - 1} in {what} "
            f"({int(bad.sum())} sample(s), e.g. {', '.join(pairs)}); classes: {_preview(class_names, 12)}"
        )


class Source:
    """An image pool with stable ids and random access: labelled images, or image-text pairs.

    Attributes: ``spec`` (the SPEC string), ``kind`` (``digits``/``folder``/``manifest``/``wds``/
    ``torchvision``), ``pool_kind`` (``"labelled"`` or ``"pairs"``), ``sample_ids`` (object array of
    unique str), ``labels`` (int64), ``class_names``, ``true_labels`` (int64 or None), ``captions``
    (object array of str for a pairs pool, else None), ``open_errors`` (samples already known to be
    unusable when the source was opened, e.g. a manifest row without a label or a shard sample without
    a caption; they are not part of the pool), ``pool_errors`` (entries about the pool's files rather
    than one sample, such as a truncated shard with the byte where it ends; they lead ``open_errors``
    too, so whoever writes ``open_errors`` to ``errors.parquet`` lists them) and ``warnings`` (one line
    each: what opening found that a run must print and keep in ``meta.json``, e.g. that a shard lost
    its tail). Labelled pools and image-text pairs expose all three the same way.

    A pairs pool (``captions`` given) has no classes: ``class_names`` is empty and every label is
    ``NO_CLASS`` (-1), so code that treats a label as a class index fails loudly instead of training on
    a made-up class. Its "target" is the caption (see docs/ARCHITECTURE.md).
    """

    kind = "abstract"

    def __init__(
        self,
        spec: str,
        sample_ids: Sequence[str] | np.ndarray,
        labels: Sequence[int] | np.ndarray | None,
        class_names: Sequence[str],
        true_labels: Sequence[int] | np.ndarray | None = None,
        open_errors: Iterable[BadSample] = (),
        *,
        captions: Sequence[str] | np.ndarray | None = None,
        pool_errors: Iterable[BadSample] = (),
        warnings: Iterable[str] = (),
    ):
        self.spec = spec
        self.sample_ids = np.asarray([str(s) for s in sample_ids], dtype=object)
        self.pool_kind = PAIRS if captions is not None else LABELLED
        if captions is not None and labels is None:
            labels = np.full(len(self.sample_ids), NO_CLASS, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = [str(c) for c in class_names]
        self.true_labels = None if true_labels is None else np.asarray(true_labels, dtype=np.int64)
        self.captions = None if captions is None else np.asarray([str(c) for c in captions], dtype=object)
        self.pool_errors = list(pool_errors)
        self.open_errors = self.pool_errors + list(open_errors)
        self.warnings = [str(w) for w in warnings]
        if len(self.sample_ids) != len(self.labels):
            raise DataSourceError(f"{spec}: {len(self.sample_ids)} ids but {len(self.labels)} labels")
        if self.captions is not None and len(self.captions) != len(self.sample_ids):
            raise DataSourceError(f"{spec}: {len(self.sample_ids)} ids but {len(self.captions)} captions")
        if len(self.sample_ids) == 0:
            raise DataSourceError(f"{spec}: the pool has no usable samples")
        _check_unique_ids(self.sample_ids, spec)
        if self.pool_kind == LABELLED:
            if not self.class_names:
                raise DataSourceError(f"{spec}: no class names")
            _check_labels(self.labels, self.class_names, self.sample_ids, spec)
            if self.true_labels is not None:
                _check_labels(self.true_labels, self.class_names, self.sample_ids, spec, column="true_label")
        self._position: dict[str, int] | None = None
        self._sizes: np.ndarray | None = None

    # --- what every source implements -------------------------------------------------------
    def source_of(self, i: int) -> str:
        """Where sample ``i`` lives (a file path, ``shard.tar:member``, …), for ``errors.parquet``."""
        raise NotImplementedError

    def read_bytes(self, i: int) -> bytes | None:
        """The encoded file of sample ``i`` (None for in-memory sources). Raises ``BadSampleError``."""
        return None

    def _load(self, i: int) -> Image.Image:
        data = self.read_bytes(i)
        return decode_image(data, self.sample_ids[i], self.source_of(i))

    def _sizes_now(self) -> np.ndarray:
        """Per-sample size in bytes (file or member size; -1 when unknown or missing)."""
        return np.full(len(self), -1, dtype=np.int64)

    # --- shared behaviour -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        what = "image-text pairs" if self.pool_kind == PAIRS else f"samples, {len(self.class_names)} classes"
        return f"<{type(self).__name__} {self.spec!r}: {len(self)} {what}>"

    def beside_metadata(self) -> list:
        """Metadata files published beside the pool's files (DataComp's ``.parquet`` beside each shard), joined by
        id when no ``--metadata`` is given (``data.metadata``); none for most sources."""
        return []

    def all_captions(self, i: int) -> list[str]:
        """Every caption known for pair ``i`` (its own first; sources with more, such as DataComp-style
        shards whose ``.json`` lists ``all_captions``, override this). Empty for a labelled pool."""
        return [] if self.captions is None else [self.captions[int(i)]]

    @property
    def num_classes(self) -> int:
        """How many classes the pool has (0 for image-text pairs)."""
        return len(self.class_names)

    @property
    def sources(self) -> np.ndarray:
        """``source_of`` for every sample: the ``source`` column of ``samples.parquet``."""
        return np.asarray([self.source_of(i) for i in range(len(self))], dtype=object)

    def sizes(self) -> np.ndarray:
        """Every sample's size in bytes (-1 when unknown), measured once and then kept: the data fingerprint hashes
        them, so a file that changes size changes the fingerprint."""
        if self._sizes is None:
            self._sizes = np.asarray(self._sizes_now(), dtype=np.int64)
        return self._sizes

    def load(self, i: int) -> Image.Image:
        """Sample at position ``i`` as an RGB ``PIL.Image``. Raises ``BadSampleError`` for a bad file."""
        return self._guarded(i, self._load)

    def load_encoded(self, i: int) -> tuple[Image.Image, bytes | None]:
        """``load(i)`` and ``read_bytes(i)`` with a single read of the file (bytes None when no file is
        behind the sample). Why: a pass that keeps small originals as thumbnails needs both."""
        return self._guarded(i, self._load_encoded)

    def _load_encoded(self, i: int) -> tuple[Image.Image, bytes | None]:
        data = self.read_bytes(i)
        if data is None:  # arrays, torchvision objects: the source decodes its own way
            return self._load(i), None
        return decode_image(data, self.sample_ids[i], self.source_of(i)), data

    def _guarded(self, i, read):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"position {i} outside 0..{len(self) - 1}")
        try:
            return read(i)
        except BadSampleError:
            raise
        except Exception as exc:  # a reader failure is one bad sample
            raise BadSampleError(
                BadSample(self.sample_ids[i], self.source_of(i), f"{type(exc).__name__}: {exc}")
            ) from exc

    def index_of(self, sample_id: str) -> int:
        """Position of a sample id (the app looks samples up by id)."""
        if self._position is None:
            self._position = {sid: k for k, sid in enumerate(self.sample_ids.tolist())}
        try:
            return self._position[str(sample_id)]
        except KeyError:
            raise KeyError(f"no sample with id {sample_id!r} in {self.spec}") from None

    def get(self, sample_id: str) -> Image.Image:
        """The sample with id ``sample_id`` as an RGB image (a notebook's way in; runs use positions)."""
        return self.load(self.index_of(sample_id))

    def iter_images(
        self, indices: Iterable[int] | None = None, errors: ErrorLog | None = None, workers: int = 0
    ) -> Iterator[tuple[int, Image.Image]]:
        """Yield ``(position, RGB image)`` for every good sample, in order; bad ones go to ``errors``.

        The source's ``open_errors`` are added to ``errors`` first, so one log holds everything a
        run must write to ``errors.parquet``. ``workers > 0`` decodes in that many threads (Pillow
        releases the GIL while decoding) without changing the order.
        """
        if errors is None:
            errors = ErrorLog()
        errors.extend(self.open_errors)
        order = range(len(self)) if indices is None else [int(i) for i in indices]

        def attempt(i: int):
            try:
                return i, self.load(i)
            except BadSampleError as exc:
                return i, exc.bad

        if workers and workers > 0:
            with ThreadPoolExecutor(workers) as pool:
                for i, item in self._ordered_map(pool, attempt, order, workers):
                    if isinstance(item, BadSample):
                        errors.add(item)
                    else:
                        yield i, item
            return
        for i in order:
            i, item = attempt(i)
            if isinstance(item, BadSample):
                errors.add(item)
            else:
                yield i, item

    @staticmethod
    def _ordered_map(pool: ThreadPoolExecutor, fn, order: Sequence[int], workers: int):
        """``pool.map`` with a bounded window, so a million-sample scan does not queue a million futures."""
        window = max(4 * workers, 16)
        pending: deque = deque()
        for i in order:
            pending.append(pool.submit(fn, i))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def scan(self, workers: int = 0) -> tuple[np.ndarray, ErrorLog]:
        """Decode every sample once: (positions of the good ones, log of the bad ones)."""
        errors = ErrorLog()
        good = [i for i, _ in self.iter_images(errors=errors, workers=workers)]
        return np.asarray(good, dtype=np.int64), errors

    def fingerprint(self, content: bool = False) -> str:
        """sha256 (16 hex) of class names, ids, labels (captions for a pairs pool) and byte sizes;
        ``content=True`` also hashes every file's bytes (slow: reads the whole pool)."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.class_names).encode())
        digest.update(b"\x1e")
        sizes = self.sizes()
        second = self.labels.tolist() if self.captions is None else self.captions.tolist()
        rows = "\n".join(
            f"{sid}\t{lab}\t{size}"
            for sid, lab, size in zip(self.sample_ids.tolist(), second, sizes.tolist(), strict=True)
        )
        digest.update(rows.encode())
        if self.true_labels is not None:
            digest.update(b"\x1etrue:")
            digest.update(self.true_labels.tobytes())
        if content:
            digest.update(b"\x1econtent:")
            for i in range(len(self)):
                digest.update(self._content_digest(i))
        return digest.hexdigest()[:16]

    def _content_digest(self, i: int) -> bytes:
        try:
            data = self.read_bytes(i)
            if data is None:
                data = np.asarray(self.load(i)).tobytes()
        except BadSampleError as exc:
            data = f"<bad:{exc.bad.reason}>".encode()
        return hashlib.sha256(data).digest()

    def describe(self) -> dict:
        """What a run's ``meta.json`` records about its data."""
        out = {
            "spec": self.spec,
            "kind": self.kind,
            "pool_kind": self.pool_kind,
            "num_samples": len(self),
            "class_names": list(self.class_names),
            "fingerprint": self.fingerprint(),
            "has_true_labels": self.true_labels is not None,
            "open_errors": len(self.open_errors),
            "warnings": list(self.warnings),
        }
        return out
