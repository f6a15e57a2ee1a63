"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

Why: a run killed mid-write must never leave a half-written file under its final name; a reader
either sees the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    pending = AtomicFile(path)
    try:
        write(pending.tmp)
    except BaseException:
        pending.abort()
        raise
    return pending.commit()


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` on ``commit`` (fsync, then rename) or
    disappears on ``abort``: for writers that fill a file over time (``store.writer.SamplesWriter``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)

    def commit(self) -> Path:
        try:
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")

    return atomic_write(path, _write)


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
