"""Sort a column of any length in bounded memory: sorted runs on disk, then a blockwise k-way merge.

Why: the app index stores, per score column, the ascending order of its values (ties by position, NaN
last: numpy's stable argsort) and the same positions grouped by (class, mislabeled), ascending by
value within each group (the values themselves are read through those positions:
``store.ordered_values``). Sorting a column in memory needs about 40 bytes a sample at once (5 GB a column at 128 M,
two columns at a time); here a chunk of ``chunk_rows`` values is sorted at a time and written as a run,
and the runs are merged a block at a time, so the memory is a few chunks' worth whatever the pool size.

The merge is vectorised: from every run it holds the next ``block`` entries; the smallest of the runs'
last held (value, position) pairs — among runs with entries left beyond what is held — bounds what
can be emitted now (every entry at or below it, from every run), emitted in (value, position) order
by one stable sort of the values (the runs are concatenated in position order); the run that set the
bound empties its block, so each round makes progress.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimic_explorer.store.atomic import load_npy, release_mapped_pages
from mimic_explorer.store.stable_order import stable_argsort

#: values sorted in memory at a time (8 bytes each, plus the sort's own scratch)
CHUNK_ROWS = 1 << 22
#: entries held from each run during the merge
BLOCK_ROWS = 1 << 18


@dataclass
class SortedColumn:
    """What ``sort_column`` found: how many values are not NaN, how many of them are finite (±inf
    left out), and per group how many non-NaN values."""

    valid: int
    group_counts: np.ndarray | None
    finite: int = 0


def _runs(
    column: np.ndarray, folder: Path, chunk_rows: int, group: np.ndarray | None, n_groups: int
) -> tuple[list[tuple[Path, Path]], Path, SortedColumn]:
    """Sort ``column`` a chunk at a time into run files (non-NaN values ascending with their positions);
    NaN positions go to one file in position order."""
    runs, nan_path = [], folder / "nan.npy"
    nan_positions, valid, infinite = [], 0, 0
    counts = np.zeros(n_groups, dtype=np.int64) if group is not None else None
    for number, start in enumerate(range(0, len(column), chunk_rows)):
        values = np.asarray(column[start : start + chunk_rows], dtype=np.float64) + 0.0  # -0.0 ties with 0.0
        release_mapped_pages(column)
        nan = np.isnan(values)
        if nan.any():
            nan_positions.append(np.flatnonzero(nan) + start)
        kept = np.flatnonzero(~nan)
        local = stable_argsort(values[kept])
        positions = kept[local] + start
        if counts is not None:
            counts += np.bincount(group[positions], minlength=n_groups)
        run = (folder / f"run-{number:05d}-values.npy", folder / f"run-{number:05d}-positions.npy")
        np.save(run[0], values[kept][local])
        np.save(run[1], positions.astype(np.int64))
        runs.append(run)
        valid += len(kept)
        infinite += int(np.isinf(values[kept]).sum())
    np.save(nan_path, np.concatenate(nan_positions) if nan_positions else np.zeros(0, dtype=np.int64))
    return runs, nan_path, SortedColumn(valid, counts, valid - infinite)


def _merged(runs: list[tuple[Path, Path]], block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(values, positions) blocks of the runs merged in (value, position) order."""
    values = [load_npy(v, mmap_mode="r") for v, _ in runs]
    positions = [load_npy(p, mmap_mode="r") for _, p in runs]
    at = [0] * len(runs)
    while True:
        live = [r for r in range(len(runs)) if at[r] < len(values[r])]
        if not live:
            return
        held = {
            r: (np.asarray(values[r][at[r] : at[r] + block]), np.asarray(positions[r][at[r] : at[r] + block]))
            for r in live
        }
        bounded = [r for r in live if at[r] + len(held[r][0]) < len(values[r])]  # entries left beyond the block
        if bounded:
            cut = min((held[r][0][-1], held[r][1][-1]) for r in bounded)
        taken_values, taken_positions = [], []
        for r in live:
            v, p = held[r]
            if bounded:
                lo, hi = np.searchsorted(v, cut[0], "left"), np.searchsorted(v, cut[0], "right")
                count = int(lo + np.searchsorted(p[lo:hi], cut[1], "right"))
            else:
                count = len(v)
            taken_values.append(v[:count])
            taken_positions.append(p[:count])
            at[r] += count
        v, p = np.concatenate(taken_values), np.concatenate(taken_positions)
        for array in (*values, *positions):
            release_mapped_pages(array)
        # runs hold increasing stretches of positions and are concatenated in run order, each in position
        # order within equal values: a stable sort by value alone is the (value, position) order
        order = stable_argsort(v) if len(live) > 1 else np.arange(len(v))
        yield v[order], p[order]


def sort_column(
    column: np.ndarray,
    order_path: Path,
    scratch: Path,
    *,
    position_type: np.dtype = np.int32,
    grouped_path: Path | None = None,
    group: np.ndarray | None = None,
    n_groups: int = 0,
    chunk_rows: int | None = None,
    block: int | None = None,
    mapped: Callable[[Path, np.dtype, tuple[int, ...]], np.ndarray] | None = None,
) -> SortedColumn:
    """Write ``column``'s stable ascending order (NaN last, by position) as ``position_type`` to
    ``order_path`` and — given ``group`` (a small int per position) — the non-NaN positions grouped by
    group, ascending by value within each (ties by position), to ``grouped_path``; each equal to the
    in-memory ``stable_argsort`` / ``score_groups.sort_by_group``'s order. ``scratch``: an empty folder
    for the runs (removed here). ``mapped``: makes a writable ``.npy`` map (default
    ``np.lib.format.open_memmap``; the index passes one that reserves its disk blocks first)."""
    chunk_rows, block = chunk_rows or CHUNK_ROWS, block or BLOCK_ROWS
    mapped = mapped or _new_npy
    n = len(column)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        runs, nan_path, found = _runs(column, scratch, chunk_rows, group, n_groups)
        order = _Output(mapped, order_path, position_type, n)
        grouped = offsets = None
        if grouped_path is not None and group is not None:
            grouped = _Output(mapped, grouped_path, position_type, found.valid)
            offsets = np.concatenate(([0], np.cumsum(found.group_counts)[:-1]))
        try:
            done = 0
            for _, p in _merged(runs, block):
                order.write(done, p)
                done += len(p)
                if grouped is not None:
                    g = group[p]
                    by_group = np.argsort(g, kind="stable")  # stable: ascending values within each group
                    members, starts = np.unique(g[by_group], return_index=True)
                    ends = np.append(starts[1:], len(g))
                    for member, start, end in zip(members.tolist(), starts.tolist(), ends.tolist(), strict=True):
                        grouped.write(int(offsets[member]), p[by_group[start:end]])
                        offsets[member] += end - start
            order.write(done, load_npy(nan_path))
        finally:
            for output in (order, grouped):
                if output is not None:
                    output.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return found


def sort_key_chunks(
    chunks: Iterable[np.ndarray],
    n: int,
    keys_path: Path,
    order_path: Path,
    scratch: Path,
    *,
    position_type: np.dtype = np.int32,
    chunk_rows: int | None = None,
    block: int | None = None,
) -> None:
    """Sort ``n`` integer keys arriving as ``chunks`` in position order (e.g. the sample ids' hashes, a
    batch at a time) without holding them all: ``order_path`` gets the positions by key (ties by
    position: numpy's stable argsort), ``keys_path`` the keys in that order. Memory: one chunk."""
    chunk_rows, block = chunk_rows or CHUNK_ROWS, block or BLOCK_ROWS
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        runs, held, start, dtype = [], [], 0, None

        def spill() -> None:
            keys = np.concatenate(held) if len(held) > 1 else held[0]
            local = np.argsort(keys, kind="stable")
            run = (scratch / f"run-{len(runs):05d}-values.npy", scratch / f"run-{len(runs):05d}-positions.npy")
            np.save(run[0], keys[local])
            np.save(run[1], local.astype(np.int64) + (start - len(keys)))
            runs.append(run)
            held.clear()

        pending = 0
        for chunk in chunks:
            chunk = np.asarray(chunk)
            dtype = chunk.dtype
            while len(chunk):
                take = chunk[: chunk_rows - pending]
                held.append(take)
                pending += len(take)
                start += len(take)
                chunk = chunk[len(take) :]
                if pending == chunk_rows:
                    spill()
                    pending = 0
        if held:
            spill()
        if start != n:
            raise OSError(f"the keys gave {start} rows, {n} expected")
        order = _Output(_new_npy, order_path, position_type, n)
        keys_out = _Output(_new_npy, keys_path, dtype if dtype is not None else np.uint64, n)
        try:
            done = 0
            for v, p in _merged(runs, block):
                order.write(done, p)
                keys_out.write(done, v)
                done += len(p)
        finally:
            order.close()
            keys_out.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _new_npy(path: Path, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A new writable ``.npy`` of ``shape`` (what ``_Output`` writes into when no other maker is given)."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


class _Output:
    """A ``.npy`` file written by plain file writes at element offsets. Why not through a memory map:
    every page written through a map stays in the process's resident memory until it is unmapped
    (hundreds of MB a column at 12.8 M); a written file page is the page cache's, not the process's."""

    def __init__(self, mapped: Callable, path: Path, dtype, n: int):
        self.dtype = np.dtype(dtype)
        array = mapped(path, self.dtype, (n,))  # the header, the size and (the index's) reserved blocks
        self.offset = array.offset
        del array
        self.handle = open(path, "r+b")  # noqa: SIM115 - closed by close()

    def write(self, start: int, values: np.ndarray) -> None:
        """Write ``values`` as elements ``start`` onwards."""
        if len(values):
            self.handle.seek(self.offset + start * self.dtype.itemsize)
            self.handle.write(memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B"))

    def close(self) -> None:
        """Close the file (no sync: the index manifest, written last and synced, makes the index valid)."""
        self.handle.close()


def group_bounds(found: SortedColumn) -> np.ndarray:
    """Where each group starts in the grouped positions (and where the last ends): ``sort_by_group``'s bounds."""
    return np.concatenate(([0], np.cumsum(found.group_counts))).astype(np.int64)
