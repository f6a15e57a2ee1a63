"""Write a run directory: status in meta.json moves running → complete (or failed, with the reason).

Why: the app and the CLI must never mistake a half-written run for a finished one. Every file is
written atomically, per-epoch score parts are separate files (so a resumed run continues from the last
finished epoch), and ``meta.json`` says "complete" only after everything else is on disk.
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

from mimic_explorer.store.atomic import write_json, write_parquet
from mimic_explorer.store.paths import ERRORS, FORMAT_VERSION, LOCK, META, SAMPLES, SCORES_DIR


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


def prepare_run_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` as a run directory, or raise a one-line error naming the cause."""
    path = Path(path).expanduser()
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
    """Owns one run directory while a command writes it (holds a lock file against a second writer)."""

    def __init__(self, path: str | os.PathLike, kind: str, config: dict[str, Any]):
        self.path = prepare_run_dir(path)
        self.started = time.perf_counter()
        self._lock_path = self.path / LOCK
        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = self._lock_path.read_text().strip() if self._lock_path.exists() else "?"
            if owner.isdigit() and not _pid_alive(int(owner)):
                self._lock_path.unlink(missing_ok=True)
                fd = os.open(self._lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            else:
                raise RunDirectoryError(
                    f"{self.path} is being written by another process (pid {owner}); "
                    f"wait for it or remove {self._lock_path} if that process is gone"
                ) from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        (self.path / SCORES_DIR).mkdir(exist_ok=True)
        self.meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "status": "running",
            "config": config,
            "created": _now(),
            "versions": package_versions(),
            "command": sys.argv,
            "fingerprints": {},
            "timings": {},
            "warnings": [],
        }
        self.flush_meta()

    def flush_meta(self) -> None:
        write_json(self.path / META, self.meta)

    def write_scores(self, part: str, frame: pd.DataFrame) -> Path:
        return write_parquet(self.path / SCORES_DIR / f"{part}.parquet", frame)

    def write_samples(self, frame: pd.DataFrame) -> Path:
        return write_parquet(self.path / SAMPLES, frame)

    def write_errors(self, frame: pd.DataFrame) -> Path:
        return write_parquet(self.path / ERRORS, frame)

    def warn(self, message: str) -> None:
        self.meta["warnings"].append(message)

    def complete(self, **extra: Any) -> None:
        self.meta.update(extra)
        self.meta["status"] = "complete"
        self.meta["finished"] = _now()
        self.flush_meta()
        self._unlock()

    def fail(self, reason: str) -> None:
        self.meta["status"] = "failed"
        self.meta["error"] = reason
        self.meta["finished"] = _now()
        try:
            self.flush_meta()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        self._lock_path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
