"""The reference's per-sample signals of a ``score`` run, one file per chunk, until the run is finished.

Why files per chunk: ``score`` cuts the pool into chunks that any rank scores and a killed run
resumes from (``commands.score``). The reference's pass over a batch gives, beside the mimic score,
what the app's Map and suggested labels need — the suggested label (``ref_pred``, ``ref_prob``),
the reference loss, cleanlab's class probabilities, and a vector per sample (an embedding). Score
rows hold one row per sample and step, so vectors do not belong there; and finishing the run reads
them one range of positions at a time into the run arrays (``store.run_arrays``). So each chunk's
signals are kept as an ``.npz`` beside its score part — written before it, so a finished chunk
always has them — as a hidden scratch file (``RunLayout.scratch``) that the run removes when it
is complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_explorer.store.atomic import atomic_write
from mimic_explorer.store.layout import RunLayout

#: the key holding each row's pool position
POSITIONS = "index"
#: the prefix of a chunk-level total (not a row per position): ``total:NAME`` (``ChunkSignals.totals``)
TOTAL = "total:"


def chunk_signals_path(layout: RunLayout, chunk: int) -> Path:
    """Where chunk ``chunk``'s signals are kept while the run is unfinished."""
    return layout.scratch(f"signals-chunk-{chunk:06d}")


def write_chunk_signals(
    path: str | os.PathLike,
    positions: np.ndarray,
    signals: dict[str, np.ndarray],
    totals: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one chunk's signals (row i: pool position ``positions[i]``) atomically, with chunk-level ``totals``
    (sums over the chunk's rows kept even where the rows are not: a pairs run's embedding sums)."""
    arrays = {POSITIONS: np.asarray(positions, dtype=np.int64)}
    arrays.update({TOTAL + name: np.asarray(values) for name, values in (totals or {}).items()})
    for name, values in signals.items():
        if name.startswith(TOTAL):
            raise ValueError(f"signal {name!r}: the prefix {TOTAL!r} names chunk totals")
        values = np.asarray(values)
        if len(values) != len(arrays[POSITIONS]):
            raise ValueError(f"signal {name!r} has {len(values)} rows for {len(arrays[POSITIONS])} positions")
        arrays[name] = values

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a name
            np.savez(handle, **arrays)

    return atomic_write(path, write)


def gather_signals(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch's signals after another (``{name: values}`` with ``POSITIONS``) as one chunk's: the names
    every part has, concatenated."""
    if not parts:
        return {POSITIONS: np.zeros(0, dtype=np.int64)}
    names = set.intersection(*(set(part) for part in parts))
    return {name: np.concatenate([np.asarray(part[name]) for part in parts]) for name in sorted(names)}


class ChunkSignals:
    """The chunk files of a run, read by ranges of pool positions (``commands.finalize.PoolView.signals``).

    ``bounds``: the chunks' (start, stop) positions (``training.pool_batches.chunk_bounds``). A range reads
    the chunks it overlaps; the last one read is kept, since ranges come in ascending order."""

    def __init__(self, layout: RunLayout, bounds: Sequence[tuple[int, int]]):
        self.layout = layout
        self.starts = np.asarray([start for start, _ in bounds], dtype=np.int64)
        self._cached: tuple[int, dict[str, np.ndarray] | None] | None = None

    def totals(self) -> dict[str, np.ndarray]:
        """The chunk-level totals summed over every chunk (a name only when every chunk with a file has it)."""
        found: dict[str, np.ndarray] = {}
        seen: list[set[str]] = []
        for chunk in range(len(self.starts)):
            path = chunk_signals_path(self.layout, chunk)
            if not path.exists():
                continue
            with np.load(path) as stored:
                names = {n.removeprefix(TOTAL) for n in stored.files if n.startswith(TOTAL)}
                seen.append(names)
                for name in names:
                    value = stored[TOTAL + name].astype(np.float64)
                    found[name] = value if name not in found else found[name] + value
        common = set.intersection(*seen) if seen else set()
        return {name: values for name, values in found.items() if name in common}

    def available(self) -> bool:
        """Whether any chunk has a signals file (runs scored before they were kept have none)."""
        return any(chunk_signals_path(self.layout, c).exists() for c in range(len(self.starts)))

    def _chunk(self, chunk: int) -> dict[str, np.ndarray] | None:
        if self._cached is not None and self._cached[0] == chunk:
            return self._cached[1]
        path = chunk_signals_path(self.layout, chunk)
        found = None
        if path.exists():
            with np.load(path) as stored:
                found = {name: stored[name] for name in stored.files}
        self._cached = (chunk, found)
        return found

    def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The signals of the sorted pool ``positions`` that have them; ``index`` says whose each row is."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions) or not len(self.starts):
            return {POSITIONS: np.zeros(0, dtype=np.int64)}
        first = max(int(np.searchsorted(self.starts, positions[0], side="right")) - 1, 0)
        last = max(int(np.searchsorted(self.starts, positions[-1], side="right")) - 1, 0)
        parts = []
        for chunk in range(first, last + 1):
            found = self._chunk(chunk)
            if found is None:
                continue
            wanted = np.isin(found[POSITIONS], positions, assume_unique=True)
            parts.append({name: values[wanted] for name, values in found.items() if not name.startswith(TOTAL)})
        return gather_signals(parts)
