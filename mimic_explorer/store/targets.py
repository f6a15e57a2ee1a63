"""Where a command will write, checked before it starts (standard library only).

Why: ``train`` reads the pool, builds the models and may compute backbone features before its
``RunWriter`` creates ``--out``, and ``--save-model`` is written after the last epoch. A run directory
that cannot be created, or a checkpoint path that is a folder, should be a one-line error at once,
not after the work (or as a traceback at its end). These checks create nothing; ``RunWriter`` still
makes the directory itself and reports what only the attempt can tell.
"""

from __future__ import annotations

import os
from pathlib import Path


class RunDirectoryError(Exception):
    """The run directory cannot be used (exists as a file, not writable, locked by another writer)."""


class OutputFileError(ValueError):
    """A file a command was asked to write cannot be written there (a folder, not writable)."""


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``/`` at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _writable_folder(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)  # EROFS counts: false on a read-only mount, root or not


def check_run_target(path: str | os.PathLike) -> Path:
    """``path`` (expanded) if a run directory can be made or used there; ``RunDirectoryError`` naming
    the cause when it is a file, or when a missing ``path`` cannot be created (the nearest existing
    folder above it is a file or not writable). An existing directory is left to ``RunWriter``: it may
    hold a finished run that is returned without writing anything."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{path} exists and is not a directory")
    if path.exists():
        return path
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise RunDirectoryError(f"cannot create run directory {path}: {base} is not a directory")
    if not _writable_folder(base):
        raise RunDirectoryError(f"cannot create run directory {path}: {base} is not writable")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` (expanded) if the file ``option`` names can be written (created or replaced) there;
    ``OutputFileError`` naming the option, the path and the cause otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputFileError(f"{option} {path} is a directory; name a file")
    if path.exists() and not path.is_file():
        raise OutputFileError(f"{option} {path} exists and is not a regular file")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputFileError(f"cannot write {option} {path}: {base} is not a directory")
    if not _writable_folder(base):
        raise OutputFileError(f"cannot write {option} {path}: {base} is not writable")
    return path
