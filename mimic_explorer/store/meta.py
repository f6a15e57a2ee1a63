"""What ``meta.json`` holds: one typed schema (``RunMeta``) for every kind of run, read tolerantly.

Why typed: ``train``, ``score`` and ``demo`` record the same facts under the same names, so the app,
the exports and ``mimic-explorer runs`` read one shape; a fact (``same_init``, ``world_size``…) is a
field set where it is known, never recovered later from a message's text. Why tolerant: run
directories outlive the package version that wrote them; a missing field takes its default, a
``null`` where a mapping or list is expected reads as empty, and a key this version does not know is
kept (``extra``) and written back unchanged. Tolerant is not lax: a known field of the wrong kind (a
list where the summary belongs, a ``format_version`` of ``"9"``) is a ``RunError`` naming the file,
the field and the value, because every reader after this one trusts the shape. A run of a newer
format reads (so ``runs`` can list it) but ``check_format`` refuses to open it. ``meta.json`` is parsed
here and nowhere else. The fields are listed for readers in docs/ARCHITECTURE.md (the run-directory
contract).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mimic_explorer.store.atomic import remove_stale_temporaries, write_json
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
        """The meta as ``meta.json`` holds it: every field, and the keys of other versions kept as they were."""
        data = {name: getattr(self, name) for name in _field_names() if name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMeta:
        """Tolerant: older metas (no ``format_version``, no ``kind``, missing or null fields) still read.
        ``ValueError`` naming the field when a known field holds a value of the wrong kind."""
        values: dict[str, Any] = {"status": "unknown", "format_version": 0}
        for f in dataclasses.fields(cls):
            if f.name == "extra" or f.name not in data:
                continue
            value = data[f.name]
            if value is None and (f.default_factory is not dataclasses.MISSING or f.default is not None):
                continue  # null where a value belongs: read as the default (an empty mapping or list…)
            if f.name != "format_version":  # checked below, with a message about versions
                _check_kind(f.name, value)
            values[f.name] = value
        _check_version(values["format_version"])
        extra = {k: v for k, v in data.items() if k not in _field_names()}
        return cls(**values, extra=extra)


#: what each field's annotation allows, as JSON kinds (``int`` never admits a bool)
_KINDS = {"dict": dict, "list": list, "str": str, "int": int, "bool": bool, "None": type(None)}
_KIND_WORDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    bool: "true or false",
    float: "a number",
    type(None): "null",
}


def _allowed_kinds(name: str) -> tuple[type, ...]:
    annotation = next(f.type for f in dataclasses.fields(RunMeta) if f.name == name)
    return tuple(_KINDS[part.strip().split("[")[0]] for part in str(annotation).split("|"))


def _kind_word(kind: type) -> str:
    return _KIND_WORDS.get(kind, kind.__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:39] + "…"


def _check_kind(name: str, value: Any) -> None:
    allowed = _allowed_kinds(name)
    is_bool = isinstance(value, bool)
    if any(isinstance(value, kind) and (kind is bool or not is_bool) for kind in allowed):
        return
    expected = " or ".join(_kind_word(kind) for kind in allowed if kind is not type(None))
    raise ValueError(f"{name!r} should be {expected}, not {_kind_word(type(value))} ({_short(value)})")


def _check_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(
            f"format_version {_short(version)} is not a format version "
            f"(this mimic_explorer reads 0 to {FORMAT_VERSION})"
        )


def check_format(meta: RunMeta | dict[str, Any], path: str | os.PathLike) -> None:
    """``RunError`` when the run in ``path`` was written in a newer format than this package reads."""
    version = meta.format_version if isinstance(meta, RunMeta) else meta.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise RunError(
            f"{RunLayout(path).meta} is format {version}, written by a newer mimic_explorer "
            f"(this one reads formats up to {FORMAT_VERSION}); upgrade the package"
        )


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
    """Write ``info`` (what the model is: architecture, init fingerprint, preprocessing…) beside ``checkpoint`` as its
    sidecar (``layout.checkpoint_sidecar``), atomically: a later run that loads the checkpoint reads it there."""
    path = checkpoint_sidecar(checkpoint)
    remove_stale_temporaries(path.parent, path.name)  # of a run killed while it wrote this file
    return write_json(path, info)
