"""Scoring batches of an image-text pool that never leave a pair alone.

Why: a pair's InfoNCE loss needs the other pairs of its batch as negatives, so a batch of one has no
loss at all. Bad images drop out of a decoded batch and a pool rarely divides evenly, so the batches
are re-cut here: every batch holds exactly ``size`` good pairs in pool order, except that the last of
a chunk holds the remainder — and a remainder of one joins the batch before it (``size + 1`` pairs).
Chunks (the unit a killed run resumes from) likewise never end with a single pair. The cut depends
only on the pool, the bad samples and the sizes, so a resumed run scores every pair in the same batch.
"""

from __future__ import annotations

from typing import Iterable, Iterator


from mimic_explorer.training.pool_pass import PassBatch, concat_batches


def chunk_bounds(count: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk of ``count`` positions; a last chunk of one joins the one before."""
    bounds = [(start, min(start + size, count)) for start in range(0, count, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def _split(batch: PassBatch, size: int) -> tuple[PassBatch, PassBatch]:
    def cut(lo: int, hi: int | None) -> PassBatch:
        return PassBatch(batch.index[lo:hi], batch.inputs[lo:hi], batch.targets[lo:hi], batch.thumbs[lo:hi], [])

    return cut(0, size), cut(size, None)


def whole_batches(stream: Iterable[PassBatch], size: int) -> Iterator[PassBatch]:
    """Re-cut ``stream`` (decoded batches of good pairs, in order) as the module docstring says. A
    stream of one good pair in all yields that single pair: the caller records it as unscorable."""
    held: PassBatch | None = None
    pending: list[PassBatch] = []
    count = 0
    for batch in stream:
        pending.append(batch)
        count += len(batch.index)
        while count >= size:
            full, rest = _split(concat_batches(pending), size)
            if held is not None:
                yield held
            held, pending, count = full, ([rest] if len(rest.index) else []), len(rest.index)
    rest = concat_batches(pending) if pending else None
    if rest is not None and len(rest.index) == 1 and held is not None:
        yield concat_batches([held, rest])
        return
    if held is not None:
        yield held
    if rest is not None and len(rest.index):
        yield rest
