"""The names of every file and part inside a run directory (the run-directory contract).

Why one module: a run directory is read by the app, the exports and the commands that resume or
refuse a run; when each spells ``thumbs/index.parquet`` or ``epoch-0003.parquet`` itself, renaming or
adding a file means finding every copy. Code asks ``RunLayout(root)`` for a path instead, and lists or
drops score parts only through it. See docs/ARCHITECTURE.md (the run-directory contract).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mimic_explorer.store.paths import ERRORS, FILTERS_DIR, LOCK, META, SAMPLES, SCORES_DIR, SCORES_FILE, THUMBS_DIR

_EPOCH_PART = re.compile(r"^epoch-(\d+)(?:-(\d+))?(?:-rank\d+)?\.parquet$")


def _path(*parts: str, doc: str | None = None) -> property:
    """A read-only ``Path`` below the run's root."""
    return property(lambda layout: layout.root.joinpath(*parts), doc=doc or f"``{'/'.join(parts)}``")


@dataclass(frozen=True)
class RunLayout:
    """Where each part of the run at ``root`` lives; nothing is read or created by asking."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    meta = _path(META)
    samples = _path(SAMPLES)
    errors = _path(ERRORS)
    scores_dir = _path(SCORES_DIR)
    scores_file = _path(SCORES_FILE, doc="The single score table of runs written before score parts existed.")
    thumbs_dir = _path(THUMBS_DIR)
    thumbs_blob = _path(THUMBS_DIR, "thumbs.bin", doc="Every thumbnail, appended one after another.")
    thumbs_index = _path(THUMBS_DIR, "index.parquet", doc="(sample_id, offset, length) of each thumbnail in the blob.")
    filters_dir = _path(FILTERS_DIR, doc="Keep-lists and specs saved with the run (the app restores the latest).")
    lock = _path(LOCK)
    state = _path("state.pt", doc="The resumable training state of the last checkpoint.")
    log = _path("run.log")
    index_dir = _path("index", doc="The app's per-run indexes.")

    # ------------------------------------------------------------------ score parts

    def epoch_part(self, first: int, last: int | None = None, rank: int | None = None) -> Path:
        """``scores/epoch-FIRST[-LAST][-rankRRR].parquet``: the rows of one epoch or a range."""
        name = f"epoch-{first:04d}" if last is None or last == first else f"epoch-{first:04d}-{last:04d}"
        return self.scores_dir / f"{name}{_rank(rank)}.parquet"

    def chunk_part(self, chunk: int, rank: int | None = None) -> Path:
        """``scores/chunk-NNNNNN[-rankRRR].parquet``: one chunk of a ``score`` run."""
        return self.scores_dir / f"chunk-{chunk:06d}{_rank(rank)}.parquet"

    def error_part(self, rank: int) -> Path:
        """One rank's unreadable samples, merged into ``errors.parquet`` when the run ends."""
        return self.scores_dir / f".errors-rank{rank:03d}.parquet.part"

    def score_parts(self) -> list[Path]:
        """The legacy single score file if it exists, else every epoch and chunk part, sorted."""
        if self.scores_file.exists():
            return [self.scores_file]
        return sorted(self.epoch_parts() + self.chunk_parts())

    def epoch_parts(self) -> list[Path]:
        return self._parts("epoch-*.parquet")

    def chunk_parts(self) -> list[Path]:
        return self._parts("chunk-*.parquet")

    def error_parts(self) -> list[Path]:
        return self._parts(".errors-rank*.parquet.part")

    def _parts(self, pattern: str) -> list[Path]:
        return sorted(self.scores_dir.glob(pattern)) if self.scores_dir.is_dir() else []

    @staticmethod
    def part_epochs(path: Path) -> tuple[int, int]:
        """(first, last) epoch of an epoch part file."""
        match = _EPOCH_PART.match(Path(path).name)
        if match is None:
            raise ValueError(f"{path} is not an epoch part (epoch-FIRST[-LAST][-rankRRR].parquet)")
        first = int(match.group(1))
        return first, int(match.group(2) or first)

    def drop_epoch_parts_after(self, epoch: int) -> None:
        """Remove parts holding any epoch after ``epoch`` (written after the last saved state)."""
        for part in self.epoch_parts():
            if self.part_epochs(part)[1] > epoch:
                part.unlink(missing_ok=True)

    def clear_score_parts(self) -> None:
        """Remove every score part (a fresh or forced run starts from nothing)."""
        for part in self.epoch_parts() + self.chunk_parts():
            part.unlink(missing_ok=True)


def _rank(rank: int | None) -> str:
    return "" if rank is None else f"-rank{rank:03d}"
