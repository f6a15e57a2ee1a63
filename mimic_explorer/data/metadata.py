"""Per-sample metadata joined onto a pool by id: ``--metadata FILE_OR_GLOB.parquet``, or the parquet DataComp
publishes beside each shard.

Why: DataComp ships a parquet file beside every shard (``uid, url, text, clip_l14_similarity_score, …``) and a
DataComp user filters on those published columns together with ``mimic_score`` (``--rule
clip_l14_similarity_score:top=30% --rule mimic_score:drop=15%``). The join is by id: the metadata's ``uid``
column (or ``sample_id``) against the pool's sample ids, 32-hex-digit uids matched without regard to case (one
128-bit number). It happens once, when the pool opens (``data.pool``), into a table aligned with the pool's
positions; every task's base rows append its columns (``tasks.labelled.pool_rows``), so ``samples.parquet``,
the app and the filters see them as any other column.

What is joined: every column of a scalar type (numbers, booleans, text); nested ones (DataComp's
``face_bboxes``) are left out and named in a warning. A column whose name a run writes itself (``RESERVED``:
``label``, ``caption``, ``mimic_score``, …) is joined as ``metadata_NAME``. Types are fixed for the whole pool
(integers with a missing value become nullable integers), so every chunk of ``samples.parquet`` has the same
schema. Ids in the metadata but not in the pool are counted in a warning (a local pool is usually a part of
what DataComp lists), as are pool samples without a metadata row; metadata without a ``uid`` or
``sample_id`` column, a file that is not parquet, or a uid listed twice is a one-line error. The files'
content hash is part of the run's identity (``data.pool.pool_fingerprints``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.source import UID_PATTERN

#: the id columns a metadata file may be keyed by, in the order they are looked for
KEY_COLUMNS = ("uid", "sample_id")
#: samples.parquet columns a run writes itself: a metadata column of the same name is joined as ``metadata_NAME``
RESERVED = frozenset(
    {
        "sample_id",
        "source",
        "label",
        "true_label",
        "is_noisy",
        "position",
        "caption",
        "true_caption",
        "caption_truncated",
        "reference_loss",
        "model_loss",
        "reducible_loss",
        "grand",
        "pred",
        "mimic_score",
        "keep",
        "votes",
        "proj_mean",
        "proj_min",
        "proj_last",
        "cos_mean",
        "epochs",
        "combined_score",
        "combined_keep",
        "clip_score_ref",
        "clip_score_model",
        "score_batch",
        "batch_size",
    }
)
PREFIX = "metadata_"
EXAMPLES = 5
_BLOCK = 1 << 20


def metadata_files(pattern: str) -> list[Path]:
    """The parquet files ``--metadata`` names (a path or a glob), sorted; ``DataSourceError`` when none exists or
    one is not a parquet file."""
    text = os.path.expanduser(str(pattern))
    found = sorted(glob.glob(text)) if glob.has_magic(text) else ([text] if os.path.exists(text) else [])
    files = [Path(f) for f in found if os.path.isfile(f)]
    if not files:
        raise DataSourceError(f"--metadata {pattern}: no such file" + (" matches" if glob.has_magic(text) else ""))
    odd = [f.name for f in files if f.suffix.lower() not in (".parquet", ".pq")]
    if odd:
        raise DataSourceError(f"--metadata {pattern}: a metadata file must be .parquet, got {', '.join(odd[:3])}")
    return files


def files_sha256(files: Sequence[Path]) -> str:
    """sha256 of the files' bytes, in the order given: the metadata's part of the run's identity."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.stat().st_size}\n".encode())
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def _match_key(values) -> pa.Array:
    """Ids as the join compares them (Arrow, vectorised: a pool has millions): 32-hex-digit uids lower-cased (one
    128-bit number), others as they are."""
    values = pa.array(values, type=pa.string()) if not isinstance(values, pa.Array | pa.ChunkedArray) else values
    values = values.cast(pa.string())
    is_uid = pc.match_substring_regex(values, f"^{UID_PATTERN.pattern}$")
    return pc.if_else(is_uid, pc.utf8_lower(values), values)


def _scalar(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    )


@dataclass
class PoolMetadata:
    """Metadata columns aligned with a pool's positions (null where a sample has no row), and what the join found.

    ``columns`` maps each joined column's name in samples.parquet to its name in the files; ``facts`` is what
    ``meta.json`` records (``metadata``); ``warnings`` are printed and kept there too."""

    files: list[str]
    key: str
    sha256: str
    table: pa.Table
    columns: dict[str, str]
    facts: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def rows(self, positions: np.ndarray) -> pd.DataFrame:
        """The joined columns at ``positions`` of the pool, with the same dtypes for any positions."""
        taken = self.table.take(pa.array(np.asarray(positions, dtype=np.int64)))
        frame = pd.DataFrame(index=pd.RangeIndex(len(positions)))
        for name in self.columns:
            column = taken.column(name)
            kind = column.type
            if pa.types.is_floating(kind):
                values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            elif pa.types.is_integer(kind):
                values = pd.array(column.to_pylist(), dtype="Int64") if self.table.column(name).null_count else None
                if values is None:
                    values = column.to_numpy(zero_copy_only=False).astype(np.int64)
            elif pa.types.is_boolean(kind):
                values = pd.array(column.to_pylist(), dtype="boolean") if self.table.column(name).null_count else None
                if values is None:
                    values = column.to_numpy(zero_copy_only=False).astype(bool)
            else:
                values = pd.array(column.to_pylist(), dtype="string")
            frame[name] = values
        return frame


def join_metadata(sample_ids: np.ndarray, files: Sequence[Path], origin: str) -> PoolMetadata:
    """Read the metadata ``files`` and align their scalar columns with the pool's ``sample_ids`` (module docstring).

    Parameters
    ----------
    sample_ids
        The pool's ids, in pool order.
    files
        Parquet files (``metadata_files``, or the ones beside the shards).
    origin
        How messages name the metadata (``--metadata PATTERN``, or "the parquet beside the shards").

    Returns
    -------
    PoolMetadata
        The aligned columns, the files' content hash, facts and warnings.

    Raises
    ------
    DataSourceError
        A file that cannot be read as parquet, no ``uid``/``sample_id`` column, or an id listed twice.
    """
    tables = []
    for path in files:
        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a metadata file that cannot be used
            raise DataSourceError(f"{origin}: cannot read {path} as parquet ({type(exc).__name__}: {exc})") from None
        key = next((k for k in KEY_COLUMNS if k in schema.names), None)
        if key is None:
            raise DataSourceError(
                f"{origin}: {path.name} has no uid or sample_id column to join by; columns: "
                f"{', '.join(schema.names[:12]) or 'none'}" + (" …" if len(schema.names) > 12 else "")
            )
        tables.append((path, key, schema))
    key = tables[0][1]
    skipped = sorted({f.name for _, _, schema in tables for f in schema if not _scalar(f.type) and f.name != key})
    wanted = [f.name for f in tables[0][2] if _scalar(f.type) and f.name not in KEY_COLUMNS]
    parts = []
    for path, file_key, schema in tables:
        present = [c for c in wanted if c in schema.names]
        table = pq.read_table(path, columns=[file_key, *present])
        table = table.rename_columns(["__key__", *present])
        for name in wanted:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows, tables[0][2].field(name).type))
        parts.append(table.select(["__key__", *wanted]))
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataSourceError(f"{origin}: the files' columns do not agree ({exc})") from None
    keys = _match_key(table.column("__key__")).combine_chunks()
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(repeated):
        raise DataSourceError(
            f"{origin}: {len(repeated)} {key}(s) occur more than once, e.g. "
            f"{', '.join(map(str, repeated[:3].to_pylist()))}; each sample needs one metadata row"
        )
    pool_keys = _match_key(np.asarray(sample_ids, dtype=object).astype(str).tolist())
    where = pc.index_in(pool_keys, value_set=keys)
    found = np.asarray(where.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    aligned = table.drop_columns(["__key__"]).take(where)
    names = {(PREFIX + c if c in RESERVED else c): c for c in wanted}
    aligned = aligned.rename_columns(list(names))
    rows = len(keys)
    outside = rows - int(found.sum())
    uncovered = int((~found).sum())
    warnings = []
    if outside:
        inside = pc.is_in(keys, value_set=pool_keys)
        examples = [str(k) for k in keys.filter(pc.invert(inside))[:EXAMPLES].to_pylist()]
        warnings.append(
            f"METADATA: {outside} of the {rows} {key}(s) in {origin} are not in the pool "
            f"(e.g. {', '.join(examples)}); their rows are not used"
        )
    if uncovered:
        warnings.append(
            f"METADATA: {uncovered} of the pool's {len(sample_ids)} samples have no row in {origin}; their metadata "
            "columns are empty"
        )
    if skipped:
        warnings.append(f"METADATA: nested column(s) {', '.join(skipped)} of {origin} are not joined")
    renamed = {c: n for n, c in names.items() if n != c}
    facts = {
        "files": [str(p.resolve()) for p in files],
        "key": key,
        "sha256": files_sha256(files),
        "columns": list(names),
        "renamed": renamed,
        "rows": rows,
        "matched": int(found.sum()),
        "not_in_pool": outside,
        "samples_without_row": uncovered,
        "skipped_columns": skipped,
    }
    return PoolMetadata(facts["files"], key, facts["sha256"], aligned, names, facts, warnings)
