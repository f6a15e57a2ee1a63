"""Where things live: the per-user cache and the fixed file names inside a run directory."""

from __future__ import annotations

import os
from pathlib import Path

FORMAT_VERSION = 1
META = "meta.json"
SAMPLES = "samples.parquet"
SCORES_DIR = "scores"
SCORES_FILE = "scores.parquet"
ERRORS = "errors.parquet"
THUMBS_DIR = "thumbs"
FILTERS_DIR = "filters"
LOCK = ".lock"


def cache_dir() -> Path:
    """Per-user cache: ``$MIMIC_EXPLORER_CACHE``, else ``$XDG_CACHE_HOME/mimic_explorer``, else
    ``~/.cache/mimic_explorer``."""
    explicit = os.environ.get("MIMIC_EXPLORER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mimic_explorer"


def demo_run_dir() -> Path:
    """The cached demo run the app opens when started without arguments."""
    return cache_dir() / "runs" / f"demo-v{FORMAT_VERSION}"
