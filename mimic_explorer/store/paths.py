"""The fixed file names inside a run directory (the per-user cache lives in ``mimic_explorer.cache``)."""

from __future__ import annotations

FORMAT_VERSION = 1
META = "meta.json"
SAMPLES = "samples.parquet"
SCORES_DIR = "scores"
SCORES_FILE = "scores.parquet"
ERRORS = "errors.parquet"
THUMBS_DIR = "thumbs"
FILTERS_DIR = "filters"
LOCK = ".lock"
