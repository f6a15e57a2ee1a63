"""Write a run directory: status in meta.json moves running → complete (or failed, with the reason).

Why: the app and the CLI must never mistake a half-written run for a finished one. Every file is
written atomically, score parts are separate files (so a resumed run continues from the last finished
epoch or chunk), and ``meta.json`` says "complete" only after everything else is on disk. ``RunWriter``
is the only code that creates a run directory, and it takes the lock before writing anything in it
(see the run-directory contract in docs/ARCHITECTURE.md).

Why row groups: at millions of samples a reader wants one sample, or a range of samples, without
reading the file. Score parts are sorted by (epoch, position) and cut into bounded row groups
(``write_score_part``); ``samples.parquet`` is streamed in fixed-size row groups as Stage 2 produces
its chunks (``SamplesWriter``), so neither writer holds the whole table. The formats are described in
``store.layout``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mimic_explorer.store.atomic import AtomicFile, atomic_write, remove_stale_temporaries, write_parquet
from mimic_explorer.store.layout import SAMPLES_ROW_GROUP_ROWS, SCORE_ROW_GROUP_ROWS, RunLayout
from mimic_explorer.store.meta import RunMeta, write_meta
from mimic_explorer.store.targets import RunDirectoryError, check_run_target
from mimic_explorer.util.processes import process_alive


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("mimic-explorer", "torch", "torchvision", "numpy", "pandas", "pyarrow", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _create_run_dir(path: Path) -> Path:
    """Create ``path`` as a run directory, or raise a one-line error naming the cause."""
    check_run_target(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirectoryError(f"run directory {path} is not writable")
    return path


class RunWriter:
    """Owns one run directory while a command writes it (holds a lock file against a second writer).

    ``meta`` is the run's ``RunMeta``; set its fields and ``flush_meta()`` to publish them. ``facts``
    are fields known before the run starts (its ``run_id`` above all): they are in the first
    ``meta.json`` written, so a kill at any point leaves a directory that says which run it holds.
    ``fresh``: the score parts, resumable state and bad samples of an earlier run are removed before
    that first write (a directory never says it holds this run while it still holds another's parts)."""

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        config: dict[str, Any],
        facts: dict[str, Any] | None = None,
        fresh: bool = False,
    ):
        self.layout = RunLayout(_create_run_dir(RunLayout(path).root))
        self.started = time.perf_counter()
        self._take_lock()
        try:
            for folder in (
                self.layout.root,
                self.layout.scores_dir,
                self.layout.thumbs_dir,
                self.layout.embeddings_dir,
            ):
                remove_stale_temporaries(folder, any_writer=True)  # a killed writer's: we hold the lock
            if fresh:
                self.layout.clear_score_parts()
                self.layout.state.unlink(missing_ok=True)
                self.layout.errors.unlink(missing_ok=True)
            self.layout.scores_dir.mkdir(exist_ok=True)
            self.meta = RunMeta(
                kind=kind,
                status="running",
                config=config,
                created=_now(),
                versions=_package_versions(),
                command=list(sys.argv),
            )
            self.meta.set(**(facts or {}))
            self.flush_meta()
        except BaseException:
            self._unlock()
            raise

    @property
    def path(self) -> Path:
        """The run directory."""
        return self.layout.root

    def _take_lock(self) -> None:
        lock = self.layout.lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else "?"
            if owner.isdigit() and not process_alive(int(owner)):
                lock.unlink(missing_ok=True)
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            else:
                raise RunDirectoryError(
                    f"{self.path} is being written by another process (pid {owner}); "
                    f"wait for it or remove {lock} if that process is gone"
                ) from None
        try:
            os.write(fd, str(os.getpid()).encode())
        except BaseException:  # a full disk: no lock without its owner's pid (no later writer could take it)
            os.close(fd)
            lock.unlink(missing_ok=True)
            raise
        os.close(fd)

    def flush_meta(self) -> None:
        """Write the meta as it stands to ``meta.json`` (atomically)."""
        write_meta(self.layout, self.meta)

    def write_scores(self, part: Path, frame: pd.DataFrame | pa.Table) -> Path:
        """Write one score part; ``part`` is a path from ``self.layout`` (``epoch_part``, ``chunk_part``)."""
        return write_score_part(part, frame)

    def write_samples(self, frame: pd.DataFrame) -> Path:
        """``samples.parquet`` from one frame, in the same row groups the streaming writer makes."""
        with self.samples_writer() as samples:
            samples.write(frame)
        return self.layout.samples

    def samples_writer(self) -> SamplesWriter:
        """Stream ``samples.parquet`` chunk by chunk (published atomically on close)."""
        return SamplesWriter(self.layout.samples)

    def write_errors(self, frame: pd.DataFrame) -> Path:
        """Write ``errors.parquet`` (atomically)."""
        return write_parquet(self.layout.errors, frame)

    def warn(self, message: str) -> None:
        """Keep ``message`` in the meta's warnings (written with the next ``flush_meta``)."""
        self.meta.warnings.append(message)

    def complete(self, **fields: Any) -> None:
        """Set ``fields`` of the meta, then mark the run complete (the last write) and release the lock."""
        self.meta.set(**fields)
        self.meta.status = "complete"
        self.meta.finished = _now()
        self.flush_meta()
        self._unlock()

    def fail(self, reason: str) -> None:
        """Mark the run failed with ``reason``, write the meta and release the lock: a failed run says why, and the next
        run may take the directory."""
        self.meta.status = "failed"
        self.meta.error = reason
        self.meta.finished = _now()
        try:
            self.flush_meta()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        self.layout.lock.unlink(missing_ok=True)


def remove_stale_lock(layout: RunLayout) -> None:
    """Remove the ``.lock`` of a writer that is gone: one killed after it marked its run complete and
    before it let go of the lock leaves a finished run that is then only ever read, never written."""
    try:
        owner = layout.lock.read_text().strip()
        if owner.isdigit() and not process_alive(int(owner)):
            layout.lock.unlink(missing_ok=True)
    except OSError:  # no lock, or a read-only run: nothing to do
        pass


def write_score_part(path: str | os.PathLike, rows: pd.DataFrame | pa.Table) -> Path:
    """Write score rows as one part, atomically: sorted by (epoch, position) when they have both, in
    row groups of at most ``SCORE_ROW_GROUP_ROWS`` rows that never span two epochs (so each group's
    position statistics are a tight range). Plain (not dictionary) strings: half the write time of the
    run's largest files at the same size."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(rows, preserve_index=False)
    keys = [name for name in ("epoch", "position") if name in table.column_names]
    if table.num_rows > 1 and keys:
        table = table.sort_by([(name, "ascending") for name in keys])

    def write(tmp: str) -> None:
        with pq.ParquetWriter(tmp, table.schema, use_dictionary=False) as writer:
            for segment in _epoch_segments(table):
                writer.write_table(segment, row_group_size=SCORE_ROW_GROUP_ROWS)

    return atomic_write(path, write)


def _epoch_segments(table: pa.Table) -> list[pa.Table]:
    """Consecutive runs of one epoch in a table sorted by epoch (the whole table without ``epoch``)."""
    if "epoch" not in table.column_names or table.num_rows == 0:
        return [table]
    epochs = table.column("epoch").to_numpy()
    cuts = [0, *(np.flatnonzero(epochs[1:] != epochs[:-1]) + 1).tolist(), table.num_rows]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(cuts)]


class SamplesWriter:
    """``samples.parquet`` written as chunks of rows arrive, in row groups of exactly ``row_group_rows``
    rows (the last may be shorter) whatever the chunks' sizes, so the file is the same however Stage 2
    was chunked. Every chunk must have the first chunk's columns and dtypes. The file appears under its
    name only on ``close`` (a failure leaves no half-written samples file)."""

    def __init__(self, path: str | os.PathLike, row_group_rows: int = SAMPLES_ROW_GROUP_ROWS):
        self.path, self.row_group_rows = Path(path), row_group_rows
        self._file = AtomicFile(self.path)
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame``'s rows (the first frame's columns and dtypes for all); full row groups are written as they
        fill."""
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        if self._schema is None:
            self._schema = table.schema
            self._writer = pq.ParquetWriter(self._file.tmp, self._schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self._pending) if self._pending else None
        self._pending, self._pending_rows = [], 0
        if table is None:
            return
        full = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_rows
        for start in range(0, full, self.row_group_rows):
            self._writer.write_table(table.slice(start, min(self.row_group_rows, full - start)))
        if full < table.num_rows:
            self._pending, self._pending_rows = [table.slice(full)], table.num_rows - full

    def close(self) -> Path:
        """Write what is left and publish the file."""
        if self._writer is None:
            raise ValueError(f"no rows were given for {self.path.name}; write at least one (possibly empty) frame")
        try:
            self._flush(final=True)
            self._writer.close()
        except BaseException:
            self.abort()
            raise
        return self._file.commit()

    def abort(self) -> None:
        """Close and remove the temporary file: no ``samples.parquet`` appears."""
        try:
            if self._writer is not None:
                self._writer.close()
        except (OSError, pa.ArrowException):  # a full disk fails the close too: the file goes all the same
            pass
        finally:
            self._file.abort()

    def __enter__(self) -> SamplesWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def read_error_parts(layout: RunLayout) -> pd.DataFrame:
    """Every bad sample the run found so far (one row per sample id): its error parts, and the run's
    ``errors.parquet`` once written. The parts stay until ``errors.parquet`` holds them
    (``drop_error_parts``), and ``errors.parquet`` is read too because a run killed after dropping
    them, before it was marked complete, is resumed: a finish that dies half-way loses none. (A fresh
    run removes an earlier run's ``errors.parquet`` before it starts, ``RunWriter(fresh=True)``.)"""
    columns = ["sample_id", "path", "reason"]
    parts = [pd.read_parquet(p) for p in layout.error_parts()]
    if layout.errors.exists():
        parts.append(pd.read_parquet(layout.errors, columns=columns))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in columns})
    return pd.concat(parts, ignore_index=True).drop_duplicates("sample_id")


def drop_error_parts(layout: RunLayout) -> None:
    """Remove the per-chunk error parts once ``errors.parquet`` holds them."""
    for part in layout.error_parts():
        part.unlink(missing_ok=True)
