"""``open_source(SPEC)``: the one entry point from a data SPEC (DESIGN §4) to a ``Source``.

SPEC forms: ``digits``, ``folder:DIR``, ``manifest:FILE.csv|.parquet``, ``wds:PATTERN``,
``torchvision:NAME[/SPLIT]:ROOT``, ``hf:PATH_OR_NAME[:SPLIT]`` (``data.hf``). Opening reads names, labels and (for
shards) the member index, never image pixels, so it is quick even for large pools; decoding happens in
``load``/``iter_images``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from mimic_explorer.data.errors import BadSample, BadSampleError, DataSourceError, ErrorLog
from mimic_explorer.data.source import Source

SPEC_FORMS = (
    "digits",
    "folder:DIR",
    "manifest:FILE.csv|.parquet",
    "wds:PATTERN",
    "torchvision:NAME[/SPLIT]:ROOT",
    "hf:PATH_OR_NAME[:SPLIT]",
)

__all__ = [
    "SPEC_FORMS",
    "BadSample",
    "BadSampleError",
    "DataSourceError",
    "ErrorLog",
    "Source",
    "open_source",
]


def open_source(
    spec: str,
    *,
    index_dir: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> Source:
    """Open a data SPEC. ``index_dir`` is where a WebDataset index is kept (pass the run directory);
    ``class_names`` fixes the class list of a manifest or shards (else ``classes.txt`` beside them).

    Raises ``DataSourceError`` with the cause for anything that cannot be a pool.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataSourceError(f"empty data SPEC; use one of: {', '.join(SPEC_FORMS)}")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    kind = kind.lower()
    if kind == "digits" and not sep:
        from mimic_explorer.data.memory import DigitsSource

        return DigitsSource(spec)
    if sep and not rest and kind in ("folder", "manifest", "wds", "torchvision", "hf"):
        raise DataSourceError(f"data SPEC {spec!r} names no path; use one of: {', '.join(SPEC_FORMS)}")
    if kind == "folder" and sep:
        from mimic_explorer.data.folder import FolderSource

        return FolderSource(rest, spec=spec)
    if kind == "manifest" and sep:
        from mimic_explorer.data.manifest import ManifestSource

        return ManifestSource(rest, spec=spec, class_names=class_names)
    if kind == "wds" and sep:
        from mimic_explorer.data.wds import WdsSource

        return WdsSource(rest, spec=spec, index_dir=index_dir, class_names=class_names)
    if kind == "hf" and sep:
        from mimic_explorer.data.hf import HfSource

        return HfSource(rest, spec=spec)
    if kind == "torchvision" and sep:
        from mimic_explorer.data.tvsource import TorchvisionSource

        name, sep2, root = rest.partition(":")
        if not sep2 or not name or not root:
            raise DataSourceError(f"data SPEC {spec!r} must look like torchvision:NAME[/SPLIT]:ROOT")
        name, _, split = name.partition("/")
        return TorchvisionSource(name, root, split=split or None, spec=spec)
    hint = ""
    if os.path.isdir(spec):
        hint = f" (a folder: did you mean folder:{spec}?)"
    elif os.path.isfile(spec) and spec.lower().endswith((".csv", ".parquet")):
        hint = f" (a table: did you mean manifest:{spec}?)"
    elif spec.lower().endswith(".tar") or "{" in spec:
        hint = f" (shards: did you mean wds:{spec}?)"
    raise DataSourceError(f"unknown data SPEC {spec!r}{hint}; use one of: {', '.join(SPEC_FORMS)}")
