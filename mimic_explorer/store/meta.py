"""What ``meta.json`` holds: one typed schema (``RunMeta``) for every kind of run, read tolerantly.

Why typed: ``train``, ``score`` and ``demo`` record the same facts under the same names, so the app,
the exports and ``mimic-explorer runs`` read one shape; a fact (``same_init``, ``world_size``…) is a
field set where it is known, never recovered later from a message's text. Why tolerant: run
directories outlive the package version that wrote them; a missing field takes its default, a
``null`` where a mapping or list is expected reads as empty, and a key this version does not know is
kept (``extra``) and written back unchanged. ``meta.json`` is parsed here and nowhere else. The fields
are listed for readers in docs/ARCHITECTURE.md (the run-directory contract).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimic_explorer.store.atomic import write_json
from mimic_explorer.store.layout import RunLayout, checkpoint_sidecar

#: the run-directory format this package writes (and the newest it reads)
FORMAT_VERSION = 1


class RunError(Exception):
    """A run directory cannot be opened; the message names the cause."""


@dataclass
class RunMeta:
    """The contents of ``meta.json``. Status moves running → complete, or → failed with ``error``."""

    kind: str = "unknown"  # train | score | demo
    status: str = "running"
    format_version: int = FORMAT_VERSION
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the command's options as given
    created: str = ""
    finished: str | None = None
    error: str | None = None
    command: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    world_size: int = 1
    class_names: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    reference: dict[str, Any] | None = None
    #: the model as built: family, name, head, preprocessing (+ where it came from), weights, load report
    model: dict[str, Any] = field(default_factory=dict)
    params: str | None = None  # score: the mimic layers
    noise: dict[str, Any] = field(default_factory=dict)
    #: ``--subset``: the keep-list (path, format, ids, sha256) and how it met the pool (pool_samples,
    #: kept, missing, missing_examples, unusable); None for a run on the whole pool
    subset: dict[str, Any] | None = None
    fingerprints: dict[str, Any] = field(default_factory=dict)
    load_reports: dict[str, Any] = field(default_factory=dict)
    basis: dict[str, Any] = field(default_factory=dict)
    #: model and reference started from the same weights (None: not compared, e.g. no reference,
    #: an unknown reference init, or a linear probe, whose shared backbone ``basis`` measures instead)
    same_init: bool | None = None
    warnings: list[Any] = field(default_factory=list)
    stage2: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as they were

    def set(self, **fields: Any) -> None:
        """Set named fields; an unknown name is a programming error, not a new key."""
        known = _field_names()
        unknown = set(fields) - known
        if unknown:
            raise TypeError(f"RunMeta has no field(s) {', '.join(sorted(unknown))}")
        for name, value in fields.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _field_names() if name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunMeta":
        """Tolerant: older metas (no ``format_version``, no ``kind``, missing or null fields) still read."""
        values: dict[str, Any] = {"status": "unknown", "format_version": 0}
        for f in dataclasses.fields(cls):
            if f.name == "extra" or f.name not in data:
                continue
            value = data[f.name]
            if value is None and (f.default_factory is not dataclasses.MISSING or f.default is not None):
                continue  # null where a value belongs: read as the default (an empty mapping or list…)
            values[f.name] = value
        extra = {k: v for k, v in data.items() if k not in _field_names()}
        return cls(**values, extra=extra)


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(RunMeta)}


def _parse(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("it does not hold a JSON object")
    return data


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The run's meta as a plain dict in the current shape (the public ``Run.meta``); ``RunError``
    naming the cause when ``path`` is missing, a file, has no meta or an unreadable one."""
    return read_run_meta(path).to_dict()


def read_run_meta(path: str | os.PathLike) -> RunMeta:
    """``read_meta``, typed."""
    layout = RunLayout(path)
    root = layout.root
    if not root.exists():
        raise RunError(f"run directory {root} does not exist")
    if not root.is_dir():
        raise RunError(f"{root} is not a run directory (it is a file)")
    if not layout.meta.exists():
        raise RunError(f"{root} is not a run directory: it has no {layout.meta.name}")
    try:
        return RunMeta.from_dict(_parse(layout.meta))
    except (OSError, ValueError) as exc:
        raise RunError(f"{layout.meta} cannot be read: {exc}") from None


def write_meta(layout: RunLayout, meta: RunMeta) -> Path:
    """Write ``meta.json`` atomically (a reader sees the old file or the new one, never half)."""
    return write_json(layout.meta, meta.to_dict())


def read_checkpoint_sidecar(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The metadata saved beside a checkpoint (init fingerprint, arch…); empty when absent or unreadable."""
    path = checkpoint_sidecar(checkpoint)
    if not path.exists():
        return {}
    try:
        return _parse(path)
    except (OSError, ValueError):
        return {}


def write_checkpoint_sidecar(checkpoint: str | os.PathLike, info: dict[str, Any]) -> Path:
    return write_json(checkpoint_sidecar(checkpoint), info)
