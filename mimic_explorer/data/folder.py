"""``folder:DIR`` — one sub-folder per class, every file below it a sample (ImageFolder layout).

Why every file and not only known image extensions: a stray ``notes.txt`` or an extension-less JPEG in
a class folder is part of what the user handed us; decoding decides, and a non-image becomes a listed
bad sample rather than something silently dropped. Hidden files and OS droppings (``.DS_Store``,
``Thumbs.db``, ``desktop.ini``, ``__MACOSX``) are not samples and are ignored.

Classes are the sorted sub-folder names, unless ``DIR/classes.txt`` lists them (one a line) to fix the
order; ids are paths relative to DIR with ``/`` separators (``cat/0042.jpg``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimic_explorer.data.errors import BadSample, DataSourceError
from mimic_explorer.data.files import FileSource, existing_path

CLASS_FILE = "classes.txt"
IGNORED_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def read_class_file(path: Path) -> list[str]:
    """Class names from a text file, one a line (blank lines ignored); duplicates are an error."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataSourceError(f"class file {path} is empty")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataSourceError(f"class file {path} repeats class names: {', '.join(dupes)}")
    return names


def _walk_files(folder: Path) -> list[str]:
    """All non-hidden files below ``folder`` (symlinks followed, as ImageFolder does), sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if not _ignored(f))
    return sorted(found)


class FolderSource(FileSource):
    """``folder:DIR``: one sub-folder per class, every file below it a sample (see the module). Raises
    ``DataSourceError`` naming the SPEC when DIR is missing, has no class folders or no samples."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike, spec: str | None = None):
        spec = spec or f"folder:{Path(root).expanduser()}"
        self.root = existing_path(root, spec, "folder", folder=True)
        entries = [e for e in os.scandir(self.root) if not _ignored(e.name)]
        class_dirs = sorted(e.name for e in entries if e.is_dir())
        loose = sorted(e.name for e in entries if not e.is_dir() and e.name != CLASS_FILE)
        if not class_dirs:
            hint = f" (it holds {len(loose)} loose file(s); put each class's images in DIR/<class>/)" if loose else ""
            raise DataSourceError(f"{spec}: folder {self.root} has no class sub-folders{hint}")
        class_file = self.root / CLASS_FILE
        if class_file.is_file():
            class_names = read_class_file(class_file)
            unknown = [d for d in class_dirs if d not in class_names]
            if unknown:
                raise DataSourceError(
                    f"{spec}: sub-folder(s) {', '.join(unknown)} are not classes listed in {class_file}"
                )
        else:
            class_names = class_dirs
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(class_names):
            folder = self.root / name
            if not folder.is_dir():
                continue  # a listed class may have no samples in this pool
            files = _walk_files(folder)
            if not files:
                raise DataSourceError(f"{spec}: class folder {folder} is empty")
            paths.extend(files)
            labels.extend([label] * len(files))
        prefix = len(str(self.root)) + 1
        ids = [p[prefix:].replace(os.sep, "/") for p in paths]
        self.paths = np.asarray(paths, dtype=object)
        open_errors = [
            BadSample(name, str(self.root / name), "file outside any class folder (no label)") for name in loose
        ]
        super().__init__(spec, ids, labels, class_names, open_errors=open_errors)
