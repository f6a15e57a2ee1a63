"""Keep-lists and their specs on disk: written as one change, read back with their pairing checked.

Why: a keep-list and its spec are one fact in two files (``keep.csv`` and ``keep.csv.spec.json``). An
export replaced the keep-list before it wrote the spec, so a failure in between (a full disk) left a
new keep-list beside an old spec that described another. Now both are written in full to temporary
names first — a full disk or a read-only folder fails there, and the previous pair stays as it was —
then renamed, the spec first and the keep-list last (``atomic.commit_in_order``). The keep-list goes
last because it is what other tools read (``--subset``, DataComp): it changes only once its spec
describes it. The spec records the keep-list's size and sha256 (``keep_list``, outside the spec's hash),
so a reader that finds a pair torn by a crash between the two renames, or put together by hand, says
so (``pair_problem``); older specs are checked by what the file holds against ``kept``.

The app's "Save to run" writes the same pair into ``RUN/filters/`` and restores the latest on reopen
(``latest_saved_rule``), through the same verification as ``export --spec``. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mimic_explorer.filters.formats import FOLDER_FORMATS, check_format
from mimic_explorer.filters.hashing import mask_sha256, rule_digest
from mimic_explorer.filters.reviews import AppliedReviews, apply_reviews
from mimic_explorer.filters.rules import FilterError, FilterResult, Rule, apply_rule
from mimic_explorer.filters.spec import (
    MAX_SPEC_BYTES,
    SpecError,
    build_spec,
    check_reapplied,
    parse_spec_json,
    rule_from_spec,
)
from mimic_explorer.store.atomic import (
    AtomicFile,
    PartlyCommitted,
    commit_in_order,
    json_default,
    remove_stale_temporaries,
)
from mimic_explorer.store.hf_export import HfExportError, folder_facts, replace_folder, write_hf_folder
from mimic_explorer.store.keep_list_stream import write_keep_list_into
from mimic_explorer.store.layout import SPEC_SUFFIX, RunLayout, keep_list_of, spec_beside

_BLOCK = 1 << 20


class ExportError(FilterError):
    """A keep-list or spec that cannot be written or read; the message names the file and the cause."""


# ---------------------------------------------------------------------------------------- writing


def check_target(out: str | os.PathLike, export_format: str) -> tuple[Path, Path]:
    """The keep-list and spec paths of an export to ``out``, refused before any work when the format
    is unknown, the folder is missing, or either path is a folder."""
    check_format(export_format)
    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise ExportError(f"cannot write {out}: folder {out.parent} does not exist")
    spec_path = spec_beside(out)
    if export_format in FOLDER_FORMATS:
        if out.exists() and not out.is_dir():
            raise ExportError(f"cannot write {out}: it is a file (--format {export_format} writes a folder)")
        if spec_path.is_dir():
            raise ExportError(f"cannot write {spec_path}: it is a folder")
        return out, spec_path
    for path in (out, spec_path):
        if path.is_dir():
            raise ExportError(f"cannot write {path}: it is a folder (--out names the keep-list file to write)")
    return out, spec_path


def export(
    samples: pd.DataFrame,
    run_meta: dict[str, Any],
    rule: Rule,
    export_format: str,
    out: str | os.PathLike,
    *,
    reapplying: dict[str, Any] | None = None,
    reviews: AppliedReviews | None = None,
) -> tuple[FilterResult, dict[str, Any], Path, Path]:
    """Apply ``rule`` to a run's samples and write the keep-list to ``out`` and its spec beside it.

    Parameters
    ----------
    samples
        The run's samples (a DataFrame, or the app's ``SampleColumns``: then csv and parquet stream).
    run_meta
        The run's ``meta.json`` (identity recorded in the spec).
    rule
        The filter.
    export_format
        One of ``FORMATS``.
    out
        The keep-list file; the spec is ``out`` + ``.spec.json``.
    reapplying
        The spec ``rule`` was read from, if any: the new keep mask must be the one it recorded.
    reviews
        Review decisions laid over the rule (``filters.reviews.apply_reviews``) and recorded in the spec;
        None (or none in the log) leaves the rule's keep-list as it is.

    Returns
    -------
    tuple
        (result, spec, keep-list path, spec path).

    Raises
    ------
    FilterError
        A bad rule or column, or a re-applied spec whose keep mask is not the one it recorded; nothing
        is written.
    ExportError
        A place that cannot be written (a ``FilterError`` too): nothing is replaced, or, when the disk
        fails between the two renames, the message says the spec was replaced and the keep-list not.
    """
    out, spec_path = check_target(out, export_format)
    result = apply_rule(samples, rule)
    facts = None
    if reviews is not None and reviews.rows:
        result, facts = apply_reviews(samples, result, reviews), reviews.facts()
    if reapplying is not None:
        check_reapplied(reapplying, result)
    spec = build_spec(run_meta, rule, result, export_format, facts)
    if export_format in FOLDER_FORMATS:
        spec = write_folder_pair(samples, result, run_meta, out, spec)
    else:
        spec = write_pair(samples, result, rule.column, export_format, out, spec)
    return result, spec, out, spec_path


def write_pair(
    samples: pd.DataFrame, result: FilterResult, column: str, export_format: str, out: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """Write keep-list and spec as one change (see the module docstring); returns the spec as written,
    with the keep-list's size and sha256. Temporary files never outlive a failure."""
    spec_path = spec_beside(out)
    files: list[AtomicFile] = []
    current = out
    try:
        for path in (out, spec_path):  # an export killed while writing left its temporary files
            remove_stale_temporaries(path.parent, path.name)
        files.append(AtomicFile(out))
        current = spec_path
        files.append(AtomicFile(spec_path))
        keep_file, spec_file = files
        current = out
        write_keep_list_into(samples, result, column, export_format, keep_file.tmp)
        spec = {**spec, "keep_list": file_facts(keep_file.tmp)}
        current = spec_path
        _write_spec_file(spec_file.tmp, spec)
        current = out
        commit_in_order([spec_file, keep_file])
    except OSError as exc:
        for file in files:
            file.abort()
        reason = exc.strerror or str(exc)
        if isinstance(exc, PartlyCommitted):
            raise ExportError(
                f"cannot write {out}: {reason}; its spec {spec_path.name} was replaced but the keep-list "
                "was not, so the two no longer match: export again"
            ) from None
        raise ExportError(
            f"cannot write {current}: {reason}; nothing was replaced (a previous {out.name} and its spec "
            "are as they were)"
        ) from None
    except BaseException:
        for file in files:
            file.abort()
        raise
    return spec


def write_folder_pair(
    samples: pd.DataFrame, result: FilterResult, run_meta: dict[str, Any], out: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """A folder export (``--format hf``) and its spec as one change: the folder written under a temporary name and
    hashed into the spec, the spec renamed into place, then the folder (``store/hf_export.py``). Returns the spec
    as written."""
    spec_path = spec_beside(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    spec_file: AtomicFile | None = None
    committed = False
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write_hf_folder(samples, result.keep, run_meta, tmp)
        spec = {**spec, "keep_list": folder_facts(tmp)}
        spec_file = AtomicFile(spec_path)
        _write_spec_file(spec_file.tmp, spec)
        spec_file.commit()
        committed = True
        replace_folder(tmp, out)
    except HfExportError as exc:
        raise ExportError(f"cannot write {out}: {exc}; nothing was replaced") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if committed:
            raise ExportError(
                f"cannot write {out}: {reason}; its spec {spec_path.name} was replaced but the folder was not, so the "
                "two no longer match: export again"
            ) from None
        raise ExportError(f"cannot write {out}: {reason}; nothing was replaced") from None
    finally:
        if spec_file is not None and not committed:
            spec_file.abort()
        shutil.rmtree(tmp, ignore_errors=True)
    return spec


def _write_spec_file(path: str | os.PathLike, spec: dict[str, Any]) -> None:
    """The spec's JSON into ``path`` (a temporary file)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(spec, fh, indent=2, sort_keys=True, default=json_default)
        fh.write("\n")


def file_facts(path: str | os.PathLike) -> dict[str, Any]:
    """A file's size and sha256 (a folder export's: ``hf_export.folder_facts``): what a spec records of its
    keep-list."""
    if Path(path).is_dir():
        return folder_facts(path)
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------- reading


def read_spec_file(path: str | os.PathLike) -> dict[str, Any]:
    """A spec file as JSON values, read only when it is a regular file of at most ``MAX_SPEC_BYTES``
    (a FIFO would hang the read, a huge file exhaust memory); ``SpecError`` with the cause otherwise
    (the caller names the file)."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except OSError as exc:
        raise SpecError(f"cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError("cannot read it: not a regular file")
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError(
            f"{info.st_size:,} bytes is too large for a filter spec (at most {MAX_SPEC_BYTES // 2**20} MiB are read)"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read it: {exc.strerror or exc}") from None
    return parse_spec_json(data)


def pair_problem(keep_list: str | os.PathLike, spec: dict[str, Any]) -> str | None:
    """Why ``keep_list`` is not the keep-list ``spec`` describes, or None when it is: its recorded size
    and sha256 (specs written since they are recorded), else what the file holds against ``kept``
    (the mask's hash for npy)."""
    keep_list = Path(keep_list)
    if not keep_list.is_file() and not (keep_list.is_dir() and spec.get("format") in FOLDER_FORMATS):
        return f"its keep-list {keep_list.name} is missing"
    facts = spec.get("keep_list")
    if isinstance(facts, dict) and isinstance(facts.get("sha256"), str):
        found = file_facts(keep_list)
        if found != {"bytes": facts.get("bytes"), "sha256": facts["sha256"]}:
            return (
                f"{keep_list.name} is not the keep-list its spec describes ({found['bytes']:,} bytes, the spec "
                f"records {facts.get('bytes')!r} bytes and another sha256): they come from different exports"
            )
        return None
    return _count_problem(keep_list, spec)


def _count_problem(keep_list: Path, spec: dict[str, Any]) -> str | None:
    """An older spec records no file hash: compare the kept samples the file holds with ``kept``."""
    fmt = spec.get("format") or keep_list.suffix.lstrip(".").lower()
    kept = spec.get("kept")
    try:
        if fmt in ("npy", "uids"):
            array = np.load(keep_list, allow_pickle=False)
            if fmt == "npy" and array.dtype == bool:
                if mask_sha256(array) != spec.get("keep_mask_sha256"):
                    return f"{keep_list.name} is not the keep mask its spec describes (keep_mask_sha256 differs)"
                return None
            count = len(array)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            count = pq.ParquetFile(keep_list).metadata.num_rows
        elif fmt == "json":
            count = len(json.loads(keep_list.read_text(encoding="utf-8")))
        elif fmt == "csv":
            count = len(pd.read_csv(keep_list, usecols=["sample_id"], dtype=str))
        else:
            return None
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is not the keep-list described
        return f"{keep_list.name} cannot be read as {fmt} ({type(exc).__name__}: {exc})"
    if count != kept:
        return (
            f"{keep_list.name} lists {count} samples but its spec records kept {kept!r}: they come from different "
            "exports"
        )
    return None


# ---------------------------------------------------------------------------------------- saved with the run


def save_to_run(
    run_dir: str | os.PathLike,
    samples: pd.DataFrame,
    run_meta: dict[str, Any],
    rule: Rule,
    export_format: str = "csv",
    *,
    reviews: AppliedReviews | None = None,
) -> tuple[FilterResult, dict[str, Any], Path, Path]:
    """``export`` into the run's own ``filters/`` folder (the app's "Save to run"), named by the rule's
    hash so saving the same rule twice replaces the earlier pair instead of piling up copies."""
    check_format(export_format)
    folder = RunLayout(run_dir).filters_dir
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot save into {folder}: {exc.strerror or exc}") from None
    out = folder / f"keep-list-{rule_digest(rule)}.{export_format}"
    return export(samples, run_meta, rule, export_format, out, reviews=reviews)


def saved_specs(run_dir: str | os.PathLike) -> list[Path]:
    """Spec files saved with a run, newest first."""
    folder = RunLayout(run_dir).filters_dir
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{SPEC_SUFFIX}"):
        try:
            found.append((path.stat().st_mtime, path))
        except OSError:  # removed while listed (another session saving the same rule)
            continue
    return [path for _, path in sorted(found, key=lambda item: item[0], reverse=True)]


@dataclass
class SavedFilter:
    """The latest filter saved with a run: its verified rule, its spec and where it lies, and why its
    keep-list does not match the spec (None when it does)."""

    rule: Rule
    spec: dict[str, Any]
    spec_path: Path
    keep_list_problem: str | None = None


def latest_saved_rule(
    run_dir: str | os.PathLike, run_meta: dict[str, Any], samples: pd.DataFrame | None = None
) -> SavedFilter | None:
    """The most recently saved filter of this run (None if none). ``FilterError`` when its spec is
    unreadable, has a bad value, belongs to another run or was edited; a keep-list that does not match
    its spec is reported in ``keep_list_problem`` (the rule itself is still good)."""
    specs = saved_specs(run_dir)
    if not specs:
        return None
    path = specs[0]
    try:
        spec = read_spec_file(path)
        rule = rule_from_spec(spec, run_meta, samples)
    except FilterError as exc:
        raise SpecError(f"saved filter {path.name}: {exc}") from None
    return SavedFilter(rule, spec, path, pair_problem(keep_list_of(path), spec))


__all__ = [
    "ExportError",
    "SavedFilter",
    "check_target",
    "export",
    "file_facts",
    "latest_saved_rule",
    "pair_problem",
    "read_spec_file",
    "save_to_run",
    "saved_specs",
    "write_folder_pair",
    "write_pair",
]
