"""``export --format hf``: the kept samples as a Hugging Face ``datasets`` folder (``save_to_disk``), each row the
original one with the run's columns beside it, written beside its spec as one change.

Why: scores belong where the data lives. A run on ``hf:…`` comes back as the dataset it was read from —
images, labels and every other column of the kept rows, in their original order — with ``sample_id``,
``mimic_score``, ``keep``, the baselines and whatever metadata the run joined, so that
``load_from_disk(FOLDER)`` continues where the user's pipeline was. A run column whose name the dataset
already uses (``label``, ``caption``) is added as ``run_NAME``. A run on any other source has no dataset rows
to go back to: its folder holds the run's columns only (``source`` names each sample's file or shard member).
Which row a sample came from is in its ``source`` (``LOCATION[:SPLIT]#ROW``, ``data.hf``).

The folder is written under a temporary name, its files hashed into the spec (``keep_list``: bytes and sha256
over the folder's files, see ``folder_facts``), the spec renamed into place, and the folder last — replacing
a previous export of the same name only then. A failure before that leaves the previous pair as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.hf import INSTALL_HINT, load_hf_dataset, parse_hf_spec

#: the prefix of a run column whose name the original dataset already uses
RUN_PREFIX = "run_"
_BLOCK = 1 << 20


class HfExportError(OSError):
    """The folder cannot be made (no ``datasets``, the original dataset cannot be read); the message says why."""


def folder_facts(folder: str | os.PathLike) -> dict[str, Any]:
    """A folder's size (bytes of all its files) and sha256 over each file's relative path and content, in sorted
    order: what a spec records of an exported folder, as ``file_facts`` does of a file."""
    folder = Path(folder)
    digest = hashlib.sha256()
    size = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
                size += len(block)
        digest.update(b"\0")
    return {"bytes": size, "sha256": digest.hexdigest()}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise HfExportError(f"--format hf needs the datasets library ({INSTALL_HINT})") from None
    return datasets


def _original_rows(spec: str, kept: pd.DataFrame):
    """The rows of the run's ``hf:`` dataset that ``kept`` came from, in ``kept``'s order (None for another source)."""
    if not spec.startswith("hf:"):
        return None
    try:
        dataset = load_hf_dataset(parse_hf_spec(spec[3:], spec), spec)
    except DataSourceError as exc:
        raise HfExportError(f"cannot read the run's dataset again: {exc}") from None
    rows = [int(str(source).rsplit("#", 1)[1]) for source in kept["source"]]
    return dataset.select(rows)


def write_hf_folder(samples: pd.DataFrame, keep, run_meta: dict[str, Any], folder: Path) -> int:
    """Write the kept samples into ``folder`` (a new, temporary name) with ``save_to_disk``; returns the rows written.

    Parameters
    ----------
    samples
        The run's ``samples.parquet`` rows (a DataFrame).
    keep
        The filter's keep mask, in the order of ``samples``.
    run_meta
        The run's ``meta.json``: its data SPEC says where the original rows are.
    folder
        Where to save; it must not exist yet.
    """
    datasets = _datasets()
    kept = samples.loc[pd.Series(keep, index=samples.index).to_numpy(dtype=bool)].reset_index(drop=True)
    spec = str((run_meta.get("source") or {}).get("spec") or (run_meta.get("config") or {}).get("data") or "")
    original = _original_rows(spec, kept)
    frame = kept
    if original is not None:
        frame = kept.rename(columns={c: RUN_PREFIX + c for c in kept.columns if c in original.column_names})
    columns = datasets.Dataset.from_pandas(frame, preserve_index=False)
    table = columns
    if original is not None:
        table = datasets.concatenate_datasets([original.flatten_indices(), columns], axis=1)
    was_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        table.save_to_disk(str(folder))
    finally:
        if was_on:
            datasets.enable_progress_bars()
    return len(table)


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the folder ``tmp`` at ``out``: renamed in, a previous ``out`` moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
