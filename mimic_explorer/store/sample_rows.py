"""The first columns of every ``samples.parquet``: who a sample is, where it came from, its label.

Why here: the run-directory contract (DESIGN §4) fixes these columns (``sample_id`` unique string,
``source``, ``label`` as trained; ``true_label`` and ``is_noisy`` when the noise is known) for every
command and task; each task adds its own after them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def samples_table(
    sample_ids: np.ndarray,
    sources: np.ndarray,
    labels: np.ndarray,
    true_labels: np.ndarray | None,
    is_noisy: np.ndarray | None,
) -> pd.DataFrame:
    """The base columns of ``samples.parquet`` (``sample_id``, ``source``, ``label``, and ``true_label`` and
    ``is_noisy`` when the truth is known), one row per sample: the one place they are built, for every command and task.
    """
    frame = pd.DataFrame(
        {
            "sample_id": np.asarray(sample_ids, dtype=object).astype(str),
            "source": np.asarray(sources, dtype=object).astype(str),
            "label": np.asarray(labels, dtype=np.int64),
        }
    )
    if true_labels is not None:
        frame["true_label"] = np.asarray(true_labels, dtype=np.int64)
        frame["is_noisy"] = np.asarray(is_noisy, dtype=bool)
    return frame
