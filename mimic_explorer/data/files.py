"""Sources whose samples are image files on disk, one path per sample (folders and manifests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.imageio import max_file_bytes, read_file
from mimic_explorer.data.source import Source


def existing_path(path: str | os.PathLike, spec: str, what: str, folder: bool) -> Path:
    """``path`` resolved, when it exists and is a folder (``folder``) or a file; else a
    ``DataSourceError`` naming the SPEC, what was expected (``what``: "folder", "manifest") and why."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataSourceError(f"{spec}: {what} {path} does not exist")
    if folder and not path.is_dir():
        raise DataSourceError(f"{spec}: {path} is not a folder")
    if not folder and not path.is_file():
        raise DataSourceError(f"{spec}: {what} {path} is not a file")
    return path.resolve()


class FileSource(Source):
    """A ``Source`` whose subclass sets ``self.paths`` (object array, one file path per sample).

    A path is read only when it is a regular file within ``max_bytes`` (``imageio.read_file``): a FIFO,
    a device such as ``/dev/zero``, a directory or a huge file is a bad sample at once, never a hang or
    an exhausted memory. The cap is fixed when the pool opens (``imageio.max_file_bytes``), so a bad
    ``MIMIC_EXPLORER_MAX_FILE_BYTES`` is one error before any run starts, and worker processes that
    receive the pickled source use the same cap."""

    paths: np.ndarray

    def __init__(self, spec: str, *args, **kwargs):
        try:
            self.max_bytes = max_file_bytes()
        except DataSourceError as exc:
            raise DataSourceError(f"{spec}: {exc}") from None
        super().__init__(spec, *args, **kwargs)

    def source_of(self, i: int) -> str:
        """The file's path, as given by the folder or the manifest (the ``source`` column)."""
        return self.paths[i]

    def read_bytes(self, i: int) -> bytes:
        """The file's bytes, read only when it is a regular file under the size cap (``imageio.read_file``)."""
        return read_file(self.paths[i], self.sample_ids[i], self.max_bytes)

    def _sizes_now(self) -> np.ndarray:
        sizes = np.empty(len(self), dtype=np.int64)
        for k, path in enumerate(self.paths.tolist()):
            try:
                sizes[k] = os.stat(path).st_size
            except OSError:
                sizes[k] = -1
        return sizes
