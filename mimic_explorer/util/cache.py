"""Per-user cache locations: the one place that knows where shared, recomputable files live.

Why one module: backbone features, WebDataset shard indexes and the demo run are shared by every run
of one user and are safe to delete (each is rebuilt on demand). Keeping their locations here means
``$MIMIC_EXPLORER_CACHE`` is read in exactly one place. Standard library only, so every layer may
import it (see the layers in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import os
from pathlib import Path

#: environment variable that moves the whole cache (tests point it at a private folder)
CACHE_ENV = "MIMIC_EXPLORER_CACHE"
#: folder name of WebDataset shard indexes, under the cache or under a folder the caller names
SHARD_INDEX_FOLDER = "wds_index"
#: the demo run's folder name; its number is the run-directory format it was written in
#: (``store.meta.FORMAT_VERSION``), so a package writing a newer format builds its own demo
DEMO_RUN = "demo-v1"


def cache_dir() -> Path:
    """Per-user cache: ``$MIMIC_EXPLORER_CACHE``, else ``$XDG_CACHE_HOME/mimic_explorer``, else
    ``~/.cache/mimic_explorer``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mimic_explorer"


def features_cache_dir() -> Path:
    """Cached backbone features of linear probes, one file per (backbone, transform, data) key."""
    return cache_dir() / "features"


def shard_index_dir(base: str | os.PathLike | None = None) -> Path:
    """Where WebDataset shard indexes are kept: under ``base`` when given, else in the cache."""
    return (Path(base) if base is not None else cache_dir()) / SHARD_INDEX_FOLDER


def demo_run_dir() -> Path:
    """The cached demo run the app opens when started without arguments."""
    return cache_dir() / "runs" / DEMO_RUN


def hf_cache_dir() -> Path:
    """Where ``hf:`` datasets read from parquet files or the Hub keep their Arrow copies (``datasets``'
    own ``cache_dir``), so that they live and are cleared with the rest of this cache."""
    return cache_dir() / "hf"


def remote_shard_dir() -> Path:
    """Local copies of remote WebDataset shards (``wds:https://…``, ``s3://…``, ``pipe:…``), each fetched once
    and read by offset like a local shard."""
    return cache_dir() / "remote_shards"
