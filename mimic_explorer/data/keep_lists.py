"""Read a keep-list file (what ``mimic-explorer export`` writes) as the set of sample ids it keeps.

Why: a filtered pool is trained or scored again (``train``/``score --subset FILE``: e.g. "CLIP-score
top 70 % minus the mimic bottom 15 %"), and the keep-list is how a filter leaves the app or the
command line. Formats, chosen by the file's extension:

- ``.csv`` / ``.json`` / ``.parquet``: export's tables (a ``sample_id`` column; rows whose ``keep``
  column is false are left out when there is one). A JSON file may also be a plain list of ids.
- ``.npy``: an array of id strings, or DataComp's subset format (``export --format uids``): a
  structured array of dtype ``u8,u8``, the high and low 64 bits of each 128-bit uid, matched against
  a pair's 32-hex-digit uid without regard to case. A boolean mask (``export --format npy``) names
  rows of the run it came from, not samples, so it is refused with a pointer to the other formats.

The ids' content hash (sha256 of the sorted distinct ids, whatever the file's format) is what a run's
identity records: the same ids in a csv or a parquet file make the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimic_explorer.data.errors import DataSourceError

#: file extensions read as keep-lists, and the format each means
EXTENSIONS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".npy": "npy"}
ID_COLUMN = "sample_id"
KEEP_COLUMN = "keep"
UIDS = "uids"  # the format of a DataComp ``u8,u8`` uid array


class KeepListError(DataSourceError):
    """A keep-list cannot be read as sample ids; the message names the file and the cause."""


@dataclass(frozen=True)
class KeepList:
    """The distinct ids a keep-list names (sorted), where they came from, and their content hash."""

    path: str
    format: str  # csv | json | parquet | npy | uids
    ids: np.ndarray  # object array of str, sorted, distinct (uids: 32 lower-case hex digits)
    rows: int  # ids as the file lists them (repeats included)
    sha256: str  # of the sorted distinct ids, one a line

    @property
    def case_insensitive(self) -> bool:
        """DataComp uids are hex numbers: ``ABC…`` and ``abc…`` are the same pair."""
        return self.format == UIDS

    def describe(self) -> dict:
        """What ``meta.json`` records about the keep-list (the ids themselves are not copied)."""
        return {
            "path": str(Path(self.path).resolve()),
            "format": self.format,
            "ids": len(self.ids),
            "rows": self.rows,
            "sha256": self.sha256,
        }


def _keep_list_format(path: str | os.PathLike) -> str:
    """The format of ``path`` by its extension; ``KeepListError`` naming the known ones otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(sorted(EXTENSIONS))
        raise KeepListError(
            f"--subset {path}: unknown keep-list format {suffix or '(no extension)'!r}; "
            f"use a file that mimic-explorer export writes ({known})"
        )
    return EXTENSIONS[suffix]


def check_keep_list_path(path: str | os.PathLike) -> None:
    """Refuse a missing file, a folder or an unknown extension before anything else is done."""
    file = Path(path).expanduser()
    if not file.exists():
        raise KeepListError(f"--subset {path}: no such file")
    if not file.is_file():
        raise KeepListError(f"--subset {path}: not a file")
    _keep_list_format(file)


def read_keep_list(path: str | os.PathLike) -> KeepList:
    """The ids ``path`` keeps. Raises ``KeepListError`` (a ``DataSourceError``) naming the cause for a
    missing or unreadable file, an unknown format, a table without ``sample_id`` or a list of no ids."""
    check_keep_list_path(path)
    file = Path(path).expanduser()
    fmt = _keep_list_format(file)
    try:
        if fmt == "npy":
            fmt, values = _read_npy(file)
        elif fmt == "json":
            values = _read_json(file)
        else:
            values = _read_table(file, fmt)
    except KeepListError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is an unreadable keep-list
        raise KeepListError(f"--subset {path}: cannot read it as {fmt} ({type(exc).__name__}: {exc})") from None
    ids = np.asarray(sorted(set(values)), dtype=object)
    if len(ids) == 0:
        raise KeepListError(f"--subset {path}: the keep-list names no sample")
    digest = hashlib.sha256("\n".join(ids.tolist()).encode("utf-8")).hexdigest()
    return KeepList(str(path), fmt, ids, len(values), digest)


def _from_frame(frame, file: Path) -> list[str]:
    """The ``sample_id`` column of an exported table, without the rows whose ``keep`` is false."""
    if ID_COLUMN not in frame.columns:
        raise KeepListError(
            f"--subset {file}: no {ID_COLUMN!r} column (columns: {', '.join(map(str, frame.columns)) or 'none'}); "
            "a keep-list names samples by id, as mimic-explorer export writes it"
        )
    if KEEP_COLUMN in frame.columns:
        keep = frame[KEEP_COLUMN]
        if keep.dtype != bool:
            keep = keep.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))
        frame = frame[keep.to_numpy(dtype=bool)]
    column = frame[ID_COLUMN]
    missing = column.isna()
    if missing.any():
        raise KeepListError(f"--subset {file}: {int(missing.sum())} row(s) have no {ID_COLUMN}")
    return [str(v) for v in column.tolist()]


def _read_table(file: Path, fmt: str) -> list[str]:
    import pandas as pd

    if fmt == "csv":
        # ids stay text: a key such as 000123 must not become the number 123
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    else:
        frame = pd.read_parquet(file)
    return _from_frame(frame, file)


def _read_json(file: Path) -> list[str]:
    import pandas as pd

    data = json.loads(file.read_text(encoding="utf-8"))
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        return list(data)
    if isinstance(data, list) and all(isinstance(v, dict) for v in data):
        frame = pd.DataFrame.from_records(data)
        if ID_COLUMN in frame.columns:
            frame[ID_COLUMN] = [None if v is None else str(v) for v in frame[ID_COLUMN]]
        return _from_frame(frame, file)
    raise KeepListError(
        f"--subset {file}: a JSON keep-list is a list of records with {ID_COLUMN!r} (what export writes) "
        "or a list of id strings"
    )


def _read_npy(file: Path) -> tuple[str, list[str]]:
    """(format, ids) of an ``.npy`` keep-list: DataComp uids (``u8,u8``) or id strings."""
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise KeepListError(
                f"--subset {file}: the array holds Python objects, which are not loaded (unsafe); "
                "save ids as a string array (numpy.array(ids, dtype=str))"
            ) from None
        raise
    dtype = array.dtype
    if dtype.names is not None:
        if len(dtype.names) == 2 and all(
            dtype[n] == np.dtype("<u8") or dtype[n] == np.dtype(">u8") for n in dtype.names
        ):
            high, low = (array[n].astype(np.uint64).ravel() for n in dtype.names)
            return UIDS, [f"{int(h):016x}{int(lo):016x}" for h, lo in zip(high.tolist(), low.tolist(), strict=True)]
        raise KeepListError(
            f"--subset {file}: a structured array of dtype {dtype} is not DataComp's uid format "
            "(two unsigned 64-bit fields, u8,u8)"
        )
    if dtype == np.dtype(bool):
        raise KeepListError(
            f"--subset {file}: a boolean mask (export --format npy) marks rows of the run it was exported "
            "from, not samples; export the keep-list with --format csv, parquet, json or uids"
        )
    if dtype.kind in ("U", "S"):
        values = array.ravel().tolist()
        return "npy", [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    raise KeepListError(
        f"--subset {file}: an array of {dtype} names no sample; a keep-list .npy holds id strings or "
        "DataComp uids (u8,u8)"
    )
