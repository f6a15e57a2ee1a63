"""Read a run directory (pandas/pyarrow only; never torch): what the app and exports work from."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mimic_explorer.store.atomic import load_npy
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import RunError, check_format, read_meta
from mimic_explorer.store.scores import EpochScores
from mimic_explorer.store.thumbs import ThumbnailReader

__all__ = ["Run", "RunError", "open_run", "read_meta"]


class Run:
    """An opened run directory. ``samples`` and ``scores`` are read on first use; ``epoch_scores`` and
    ``thumbnails`` read only what is asked of them (the app's per-epoch views and galleries)."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]):
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        self.meta = meta

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        """``running``, ``complete`` or ``failed`` (``unknown`` for a meta without one)."""
        return self.meta.get("status", "unknown")

    @property
    def run_id(self) -> str:
        """The run id (the folder name for a meta without one)."""
        return self.meta.get("run_id") or self.path.name

    @property
    def class_names(self) -> list[str]:
        """The pool's class names (empty for image-text pairs)."""
        return list(self.meta.get("class_names") or [])

    @cached_property
    def samples(self) -> pd.DataFrame:
        """``samples.parquet`` whole; ``RunError`` naming the file when it is truncated or not Parquet."""
        path = self.layout.samples
        try:
            frame = pd.read_parquet(path)
        except (pa.ArrowException, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc).split(". ")[0]
            raise RunError(
                f"cannot read {path}: {reason} (truncated or not a Parquet file?); "
                "run the command that made the run again"
            ) from None
        if "sample_id" not in frame.columns:
            raise RunError(f"{path} has no sample_id column: not a run's samples table")
        frame["sample_id"] = frame["sample_id"].astype(str)
        return frame

    @cached_property
    def scores(self) -> pd.DataFrame:
        """Every per-epoch (or per-chunk) score row in one frame; the app reads ``epoch_scores`` instead."""
        parts = self.layout.score_parts()
        if not parts:
            return pd.DataFrame(columns=["sample_id", "epoch", "step", "proj", "weight"])
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)

    @cached_property
    def epoch_scores(self) -> EpochScores:
        """Lazy per-epoch access: trajectories of a few samples, one epoch's values, quantile bands."""
        return EpochScores(self.path)

    @cached_property
    def errors(self) -> pd.DataFrame:
        """``errors.parquet`` whole: the samples that could not be read (empty when there were none)."""
        path = self.layout.errors
        return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["sample_id", "path", "reason"])

    @property
    def reviews(self) -> pd.DataFrame:
        """The latest review decision of every reviewed sample (``sample_id, decision, label, note, time,
        label_name``; empty when there are none), read from ``reviews.parquet`` on every access."""
        from mimic_explorer.store.reviews import reviews_table

        return reviews_table(self.layout, self.class_names)

    @property
    def reference_probs(self) -> np.ndarray | None:
        """The reference's class probabilities, (samples, classes) float32 memory-mapped, row r = ``samples`` row r
        (labelled train runs; None otherwise): cleanlab's ``pred_probs``."""
        path = self.layout.reference_probs
        return load_npy(path, mmap_mode="r") if path.exists() else None

    def embedding(self, source: str = "image") -> np.ndarray | None:
        """The run's ``source`` embeddings (``image`` or ``text``), (samples, dim) float16 memory-mapped, row r =
        ``samples`` row r; None when the run has none."""
        path = self.layout.embedding(source)
        return load_npy(path, mmap_mode="r") if path.exists() else None

    @cached_property
    def thumbnails(self) -> ThumbnailReader:
        """Thumbnail bytes by sample id, or faster by id and row position (``get(sample_id, position)``)."""
        return ThumbnailReader(self.path)


def open_run(path: str | os.PathLike, *, require_complete: bool = True) -> Run:
    """Open a run directory, as the app, ``export`` and notebooks do.

    Parameters
    ----------
    path
        The run directory (what ``train``, ``score`` or ``demo`` wrote with ``--out``).
    require_complete
        Refuse a run that is still running or failed (False opens it anyway, e.g. to look at a
        failed run's ``meta.json``).

    Returns
    -------
    Run
        The opened run: ``meta``, and ``samples``, ``scores``, ``epoch_scores``, ``thumbnails`` read on
        first use.

    Raises
    ------
    RunError
        The directory is missing, has no readable ``meta.json``, was written by a newer format, or is
        not complete (unless ``require_complete=False``); one line naming the cause.
    """
    meta = read_meta(path)
    check_format(meta, path)
    status = meta.get("status")
    if require_complete and status != "complete":
        reason = f": {meta['error']}" if meta.get("error") else ""
        raise RunError(f"run {path} is not complete (status {status!r}{reason})")
    layout = RunLayout(path)
    if require_complete and not layout.samples.exists():
        raise RunError(f"run {path} says complete but has no {layout.samples.name}")
    return Run(layout.root, meta)
