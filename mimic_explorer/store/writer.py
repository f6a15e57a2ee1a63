"""Write a run directory: status in meta.json moves running → complete (or failed, with the reason).

Why: the app and the CLI must never mistake a half-written run for a finished one. Every file is
written atomically, score parts are separate files (so a resumed run continues from the last finished
epoch or chunk), and ``meta.json`` says "complete" only after everything else is on disk. ``RunWriter``
is the only code that creates a run directory, and it takes the lock before writing anything in it
(see the run-directory contract in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import RunMeta, write_meta


class RunDirectoryError(Exception):
    """The run directory cannot be used (exists as a file, not writable, locked by another writer)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mimic-explorer", "torch", "torchvision", "numpy", "pandas", "pyarrow", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _create_run_dir(path: Path) -> Path:
    """Create ``path`` as a run directory, or raise a one-line error naming the cause."""
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"run directory {path} is not writable")
    return path


class RunWriter:
    """Owns one run directory while a command writes it (holds a lock file against a second writer).

    ``meta`` is the run's ``RunMeta``; set its fields and ``flush_meta()`` to publish them."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict[str, Any]):
        self.layout = RunLayout(_create_run_dir(RunLayout(path).root))
        self.started = time.perf_counter()
        self._take_lock()
        self.layout.scores_dir.mkdir(exist_ok=True)
        self.meta = RunMeta(kind=kind, status="running", config=config, created=_now(), versions=package_versions(),
                            command=list(sys.argv))
        self.flush_meta()

    @property
    def path(self) -> Path:
        return self.layout.root

    def _take_lock(self) -> None:
        lock = self.layout.lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else "?"
            if owner.isdigit() and not _pid_alive(int(owner)):
                lock.unlink(missing_ok=True)
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            else:
                raise RunDirectoryError(
                    f"{self.path} is being written by another process (pid {owner}); "
                    f"wait for it or remove {lock} if that process is gone"
                ) from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

    def flush_meta(self) -> None:
        write_meta(self.layout, self.meta)

    def write_scores(self, part: Path, frame: pd.DataFrame) -> Path:
        """Write one score part; ``part`` is a path from ``self.layout`` (``epoch_part``, ``chunk_part``)."""
        return write_parquet(part, frame)

    def write_samples(self, frame: pd.DataFrame) -> Path:
        return write_parquet(self.layout.samples, frame)

    def write_errors(self, frame: pd.DataFrame) -> Path:
        return write_parquet(self.layout.errors, frame)

    def warn(self, message: str) -> None:
        self.meta.warnings.append(message)

    def complete(self, **fields: Any) -> None:
        """Set ``fields`` of the meta, then mark the run complete (the last write) and release the lock."""
        self.meta.set(**fields)
        self.meta.status = "complete"
        self.meta.finished = _now()
        self.flush_meta()
        self._unlock()

    def fail(self, reason: str) -> None:
        self.meta.status = "failed"
        self.meta.error = reason
        self.meta.finished = _now()
        try:
            self.flush_meta()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        self.layout.lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
