"""Run directories: atomic writers, the reader the app uses, thumbnails, cache locations."""

from mimic_explorer.store.reader import Run, RunError, open_run
from mimic_explorer.store.thumbs import ThumbnailReader, ThumbnailWriter
from mimic_explorer.util.cache import cache_dir, demo_run_dir

__all__ = ["Run", "RunError", "ThumbnailReader", "ThumbnailWriter", "cache_dir", "demo_run_dir", "open_run"]
