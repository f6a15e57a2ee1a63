"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

Why: a run killed mid-write must never leave a half-written file under its final name; a reader
either sees the old file or the complete new one.

Temporary files are named ``.NAME.PID.XXXXXXXX.tmp`` (hidden, beside ``NAME``, with the writing
process's id): a kill -9 or a power cut leaves one behind, and the next writer removes those whose
process is gone (``remove_stale_temporaries``) — or every one in a folder whose lock it holds.
"""

from __future__ import annotations

import contextlib
import glob
import json
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mimic_explorer.util.processes import process_alive


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
        fd, self.tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX, dir=self.path.parent
        )
        os.close(fd)

    def commit(self) -> Path:
        """fsync the temporary file and rename it to ``path`` (on failure it is removed and the error raised); returns
        ``path``."""
        try:
            self.sync()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def sync(self) -> None:
        """Make the temporary file durable and give it ordinary permissions, without renaming it."""
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions

    def abort(self) -> None:
        """Remove the temporary file: ``path`` stays as it was."""
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


TEMPORARY_SUFFIX = ".tmp"


def remove_stale_temporaries(
    folder: str | os.PathLike, name: str | None = None, *, any_writer: bool = False
) -> list[Path]:
    """Remove the temporary files ``AtomicFile`` writers left in ``folder`` when they were killed: of the
    file ``name`` (default: of any file) whose writing process is gone — or, with ``any_writer``, every
    one (for a caller that holds the folder's lock, so no other writer can be at work in it). Returns
    what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefix = f".{name}." if name is not None else "."
    removed = []
    for path in folder.glob(glob.escape(prefix) + "*" + TEMPORARY_SUFFIX):
        parts = path.name[: -len(TEMPORARY_SUFFIX)].rsplit(".", 2)  # [".NAME", PID, random letters]
        pid = parts[1] if len(parts) == 3 else ""
        if any_writer or (pid.isdigit() and not process_alive(int(pid))):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


class PartlyCommitted(OSError):
    """``commit_in_order`` failed after renaming some of its files (``renamed``), not all."""

    def __init__(self, code: int | None, reason: str, renamed: list[Path]):
        super().__init__(code, reason)
        self.renamed = renamed


def commit_in_order(files: Sequence[AtomicFile]) -> None:
    """Commit several temporary files as one change as far as a file system allows: every file is
    synced first (a full disk or an I/O error fails before anything is replaced), then each is renamed
    in the order given, then the folders are synced. Only a crash between two renames can leave some
    renamed and not others, so put last the file whose presence says the change is complete. On an
    error every file not yet renamed is removed."""
    pending = list(files)
    try:
        for file in pending:
            file.sync()
        while pending:
            os.replace(pending[0].tmp, pending[0].path)
            pending.pop(0)
    except BaseException as exc:
        for file in pending:
            file.abort()
        if isinstance(exc, OSError) and len(pending) < len(files):
            renamed = [file.path for file in files if file not in pending]
            raise PartlyCommitted(exc.errno, exc.strerror or str(exc), renamed) from exc
        raise
    for folder in dict.fromkeys(file.path.parent for file in files):
        _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """fsync a folder so that renames in it survive a power cut (skipped where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (numpy values converted)."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=json_default)
            fh.write("\n")

    return atomic_write(path, _write)


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write ``frame`` (without its index) as Parquet to ``path`` atomically."""
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def json_default(value: Any) -> Any:
    """What ``json.dump`` writes for the NumPy values, arrays and paths a run's JSON files hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def mapped_array_file(path: str | os.PathLike, dtype: np.dtype | str, shape: tuple[int, ...]) -> np.memmap:
    """A new ``.npy`` file of ``shape`` mapped for writing, its disk blocks reserved before the first write.

    Why: ``open_memmap`` makes a sparse file, and a write through the map to a block the full disk cannot
    give kills the process with SIGBUS — no exception, no one-line error, a run left "running". Reserving
    every block first (``posix_fallocate``, which reads back as zeros) turns a full disk into an
    ``OSError`` (ENOSPC) here, before anything is written."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    allocate = getattr(os, "posix_fallocate", None)  # absent on macOS: its filesystems do not overcommit
    if allocate is not None:
        try:
            with open(path, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size:
                    allocate(handle.fileno(), 0, size)
        except OSError:
            del array
            raise
    return array


def release_mapped_pages(array: np.ndarray | mmap.mmap) -> None:
    """Hand back the pages that reads or writes through ``array``'s memory map (or the ``mmap`` itself) made
    resident in this process (``madvise(MADV_DONTNEED)``; a shared file map's written pages stay in the page
    cache and reach the file). Why: every page touched through a map counts in the process's resident
    memory until the map goes, so a pass over a file of hundreds of MB would hold all of it."""
    mapping = array if isinstance(array, mmap.mmap) else getattr(array, "_mmap", None)
    if mapping is None:
        base = getattr(array, "base", None)
        mapping = base if isinstance(base, mmap.mmap) else None
    if mapping is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or no madvise here
            mapping.madvise(mmap.MADV_DONTNEED)


_NPY_HEADER = threading.Lock()


def load_npy(path: str | os.PathLike, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of a ``.npy`` file (memory-mapped with ``mmap_mode``), one thread at a time.

    Why: ``np.load`` parses the file's header with ``ast.literal_eval``, and CPython 3.11 compiles an AST
    with a recursion-depth counter shared by every thread: two threads parsing at once can fail with
    ``SystemError: AST constructor recursion depth mismatch``. The index build reads its files from
    several threads, so every read of a ``.npy`` in ``store`` goes through this lock (a header parse and a
    map take microseconds; a whole-file read is of a small file)."""
    with _NPY_HEADER:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
