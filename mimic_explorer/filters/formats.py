"""Keep-list formats: what a keep-list holds in each of ``FORMATS`` (bytes, not files).

- ``csv`` / ``json`` / ``parquet``: the kept rows (sample_id, source, label, score, keep), highest
  score first (``keep_list``);
- ``npy``: the boolean keep mask in samples.parquet order;
- ``uids``: DataComp's subset file, the kept pairs' 128-bit uids as a sorted ``u8,u8`` array
  (``datacomp_uids``);
- ``hf`` (``FOLDER_FORMATS``): a Hugging Face ``datasets`` folder of the kept rows, the original ones with the
  run's columns joined (``store/hf_export.py``); a folder, so the app's file downloads do not offer it.

Where the bytes go (atomically, streamed from the app index, beside their spec) is ``store/``'s job:
``store/keep_list_stream.py`` and ``store/filter_files.py``. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mimic_explorer.filters.rules import FilterError, FilterResult

FORMATS = ("csv", "json", "parquet", "npy", "uids")
#: formats written as a folder rather than a file
FOLDER_FORMATS = ("hf",)
#: every format ``export`` writes (and a spec may record)
EXPORT_FORMATS = (*FORMATS, *FOLDER_FORMATS)
UID_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])


def check_format(export_format: str) -> None:
    """``FilterError`` naming the known formats when ``export_format`` is not one of them."""
    if export_format not in EXPORT_FORMATS:
        raise FilterError(f"unknown format {export_format!r}; choose one of {', '.join(EXPORT_FORMATS)}")


def keep_list(samples: pd.DataFrame, result: FilterResult, column: str) -> pd.DataFrame:
    """The kept rows: sample_id, source, label, score, keep (sorted by ``column``, highest first; a
    compound filter's keep-list is sorted by its first clause's column); ``label_reviewed`` after
    ``label`` when review decisions relabel samples (``result.label_reviewed``)."""
    score = samples[column] if column in samples.columns else samples.get("mimic_score")
    frame = pd.DataFrame(
        {
            "sample_id": samples["sample_id"].astype(str),
            "source": samples["source"] if "source" in samples.columns else "",
            "label": samples["label"] if "label" in samples.columns else -1,
            "score": score.astype(np.float64) if score is not None else np.nan,
            "keep": result.keep,
        }
    )
    if result.label_reviewed is not None:
        frame.insert(3, "label_reviewed", result.label_reviewed)
    return frame[frame["keep"]].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _examples(values: pd.Series, limit: int = 3) -> str:
    return ", ".join(repr(v) for v in values.head(limit).tolist())


def datacomp_uids(pool_ids: Sequence[str] | np.ndarray, keep: np.ndarray) -> np.ndarray:
    """DataComp's subset format: the kept samples' uids as DataComp's ``--subset_file`` reads them.

    Parameters
    ----------
    pool_ids
        Every sample id of the pool, each a 32-hex-digit (128-bit) uid.
    keep
        The keep mask, in the order of ``pool_ids``.

    Returns
    -------
    numpy.ndarray
        The kept uids as a sorted structured array of dtype ``[('f0', '<u8'), ('f1', '<u8')]`` (high
        and low 64 bits), one row per kept pair: what ``np.load`` gives DataComp.

    Raises
    ------
    FilterError
        An id that is not a 32-hex-digit uid, or a uid that occurs twice (a subset names each pair
        once), with examples.
    """
    lowered = check_uids(pool_ids)
    kept = lowered[np.asarray(keep, dtype=bool)]
    halves = np.frombuffer(bytes.fromhex("".join(kept.tolist())), dtype=">u8").reshape(-1, 2)
    pairs = np.empty(len(halves), dtype=UID_DTYPE)
    pairs["f0"], pairs["f1"] = halves[:, 0], halves[:, 1]
    pairs.sort(order=["f0", "f1"])
    return pairs


def check_uids(pool_ids: Sequence[str] | np.ndarray) -> pd.Series:
    """The pool's ids, lower-cased, when every one is a distinct 32-hex-digit uid (what ``--format uids``
    needs); ``FilterError`` naming the first offending ids otherwise."""
    ids = pd.Series(np.asarray(pool_ids), dtype=object).astype(str)
    bad = ~ids.str.fullmatch(r"[0-9a-fA-F]{32}")
    if bad.any():
        raise FilterError(
            f"{int(bad.sum())} of {len(ids)} sample ids are not 32-hex-digit (128-bit) uids, e.g. "
            f"{_examples(ids[bad])}; --format uids needs DataComp uids (use csv, json, parquet or npy)"
        )
    lowered = ids.str.lower()
    repeated = lowered[lowered.duplicated(keep=False)]
    if len(repeated):
        raise FilterError(
            f"{repeated.nunique()} uid(s) occur more than once in the pool, e.g. "
            f"{_examples(pd.Series(repeated.unique()))}: a DataComp subset names each pair once"
        )
    return lowered


def render_export(samples: pd.DataFrame, result: FilterResult, column: str, export_format: str) -> bytes:
    """The bytes of a keep-list in one of ``FORMATS``, rendered whole in memory.

    Parameters
    ----------
    samples
        The run's samples (``sample_id``, and ``source``, ``label``, ``column`` when present).
    result
        ``apply_rule``'s result on ``samples``.
    column
        The score column the kept rows are sorted by (highest first).
    export_format
        One of ``FORMATS``.

    Returns
    -------
    bytes
        The file's content (npy: the boolean mask in samples.parquet order; uids: the sorted
        DataComp uid array of the kept samples).

    Raises
    ------
    FilterError
        An unknown format, or (uids) ids that are not unique 32-hex-digit uids.
    """
    check_format(export_format)
    buffer = io.BytesIO()
    if export_format == "npy":
        np.save(buffer, result.keep)
        return buffer.getvalue()
    if export_format == "uids":
        np.save(buffer, datacomp_uids(samples["sample_id"].to_numpy(), result.keep))
        return buffer.getvalue()
    frame = keep_list(samples, result, column)
    if export_format == "csv":
        return frame.to_csv(index=False).encode()
    if export_format == "json":
        return frame.to_json(orient="records", indent=1).encode()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
