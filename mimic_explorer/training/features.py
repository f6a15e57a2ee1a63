"""Linear probing on cached backbone features.

Why: with the backbone frozen, every epoch of a linear probe sees the same features; computing them
once (keyed by backbone weights, transform, data and what is extracted) turns an E-epoch run into one
backbone pass plus E cheap passes over a (N, D) matrix, and lets the reference probe, the plain probe
and the Grad-Mimic probe of one experiment — and ``train`` and ``score`` — share a single pass.

Why streamed: the matrix is written to its cache entry (``training.feature_cache``) chunk by chunk as
batches are decoded, so extraction memory stays one batch whatever the pool's size, a killed
extraction resumes at its first unfinished chunk, and under torchrun the ranks fill disjoint chunks of
one entry. What a batch contributes is a ``FeatureExtractor`` (by default the head's inputs); a model
that wants something else from a decoded batch (e.g. both towers of an image-text model) passes its
own. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mimic_explorer.data.errors import BadSample, ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.training.feature_cache import FeatureEntry
from mimic_explorer.training.pool_pass import PassBatch, pool_pass, thumbnail_pass
from mimic_explorer.util.cache import features_cache_dir
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.util.fingerprint import state_fingerprint

#: requested samples per chunk of a cache entry: the unit of resuming and of work between ranks
CHUNK_ROWS = 16_384


class FeatureExtractor(Protocol):
    """What one decoded batch contributes to the cached matrix."""

    def describe(self) -> str:
        """Names what is extracted (part of the cache key)."""
        ...

    def dim(self, model: nn.Module) -> int:
        """Columns of the matrix."""
        ...

    def __call__(self, model: nn.Module, batch: PassBatch, device: str) -> torch.Tensor:
        """(len(batch.index), dim) features of the batch's good samples, in batch order."""
        ...


class HeadInputs:
    """The default extractor: what the classifier head receives (the backbone's features)."""

    def __init__(self, head_name: str):
        self.head_name = head_name

    def describe(self) -> str:
        """``head-inputs:NAME``: part of the cache key, so another extractor never reads these features."""
        return f"head-inputs:{self.head_name}"

    def dim(self, model: nn.Module) -> int:
        """The head's input width."""
        return int(model.get_submodule(self.head_name).in_features)

    def __call__(self, model: nn.Module, batch: PassBatch, device: str) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = model.get_submodule(self.head_name).register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        try:
            model(batch.inputs.to(device))
        finally:
            hook.remove()
        return captured[0].reshape(len(batch.index), -1)


@dataclass
class Features:
    """The cached features of a pass: the good samples' pool positions, their (N, D) matrix (memory-mapped from the
    cache entry), the bad samples, and whether the entry was already there."""

    positions: np.ndarray  # source positions of the good samples, in requested order (memory-mapped)
    values: torch.Tensor  # (N, D) float32 head inputs, memory-mapped from the cache entry
    bad: list[BadSample]
    cached: bool  # the finished entry was there before this call
    entry: FeatureEntry | None = None

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` by an explicit read (a streaming reader's memory stays flat)."""
        if self.entry is None:
            return self.values[lo:hi].numpy()
        return self.entry.read(lo, hi)

    def rows_between(self, start: int, stop: int) -> tuple[int, int]:
        """(lo, hi): the rows of pool positions ``start <= p < stop`` (positions ascending)."""
        return int(np.searchsorted(self.positions, start)), int(np.searchsorted(self.positions, stop))


def _backbone_fingerprint(model: nn.Module, head_name: str) -> str:
    prefix = head_name + "."
    return state_fingerprint({k: v for k, v in model.state_dict().items() if not k.startswith(prefix)})


def feature_key(
    model: nn.Module,
    head_name: str,
    transform,
    source: Source,
    indices: np.ndarray | None,
    extractor: FeatureExtractor | None = None,
) -> str:
    """The cache entry's key: a hash of the backbone's weights (head left out), the preprocessing, the data fingerprint,
    the requested positions and the extractor. Anything that changes the features changes the key; training another head
    on the same backbone finds the entry."""
    describe = getattr(transform, "describe", None)
    parts = {
        "backbone": _backbone_fingerprint(model, head_name),
        "transform": describe() if describe else repr(transform),
        "data": source.fingerprint(),
        "indices": hashlib.sha256(
            np.asarray(indices if indices is not None else [], dtype=np.int64).tobytes()
        ).hexdigest(),
        "extract": (extractor or HeadInputs(head_name)).describe(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class _Pass:
    """How one process extracts: the model, the data and the callbacks."""

    model: nn.Module
    source: Source
    labels: np.ndarray
    transform: Callable
    extractor: FeatureExtractor
    device: str
    batch_size: int
    workers: int
    on_thumbnails: Callable[[np.ndarray, list], None] | None
    progress: Callable[[int, int], None] | None
    requested: np.ndarray
    done: int = 0

    def chunk(self, entry: FeatureEntry, chunk: int) -> np.ndarray:
        """The requested positions of chunk ``chunk``."""
        first = chunk * entry.chunk_rows
        return self.requested[first : first + entry.chunk_rows]

    def extract(self, entry: FeatureEntry, chunk: int) -> None:
        """Fill one chunk of ``entry`` by positional writes and seal it."""
        positions = self.chunk(entry, chunk)
        first = chunk * entry.chunk_rows
        entry.write_positions(first, positions)
        row_of = {int(p): first + k for k, p in enumerate(positions)}
        errors = ErrorLog()
        for batch in pool_pass(
            self.source,
            self.labels,
            self.transform,
            self.batch_size,
            indices=positions,
            thumbnails=self.on_thumbnails is not None,
            workers=self.workers,
            errors=errors,
        ):
            values = self.extractor(self.model, batch, self.device).detach().float().cpu().numpy()
            rows = np.asarray([row_of[p] for p in batch.index.tolist()], dtype=np.int64)
            block = np.zeros((rows[-1] - rows[0] + 1, values.shape[1]), dtype=np.float32)
            block[rows - rows[0]] = values
            entry.write_rows(int(rows[0]), block)
            if self.on_thumbnails is not None:
                self.on_thumbnails(batch.index.numpy(), batch.thumbs)
            self.advance(len(batch.index) + len(batch.bad))
        row_of_id = {str(self.source.sample_ids[p]): row for p, row in row_of.items()}
        entry.seal(chunk, [(row_of_id[b.sample_id], b) for b in errors if b.sample_id in row_of_id])

    def advance(self, count: int) -> None:
        """Count ``count`` more samples done and report progress."""
        self.done += count
        if self.progress is not None:
            self.progress(self.done, len(self.requested))


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: Source,
    labels: np.ndarray,
    transform,
    *,
    head_name: str,
    device: str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    indices: np.ndarray | None = None,
    on_thumbnails: Callable[[np.ndarray, list], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
    extractor: FeatureExtractor | None = None,
    dist: DistContext | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Features:
    """Features of every good sample (eval mode; by default the head's inputs), from the cache when the
    same backbone, transform, data and extractor were seen before, else streamed into it chunk by chunk
    (resuming a killed extraction). ``head_name`` is the head as found when the run built its models.
    ``on_thumbnails(positions, thumbs)`` receives a thumbnail of every good sample when the matrix was
    not already cached (decoded with the features where this process extracts them). ``dist``: the
    ranks of a torchrun share the chunks of one entry (every rank must call, with the same arguments)."""
    extractor = extractor or HeadInputs(head_name)
    ctx = dist or DistContext()
    requested = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    key = feature_key(model, head_name, transform, source, indices, extractor)
    extract = functools.partial(
        _extract,
        key=key,
        model=model,
        source=source,
        labels=labels,
        transform=transform,
        extractor=extractor,
        device=device,
        batch_size=batch_size,
        workers=workers,
        on_thumbnails=on_thumbnails,
        progress=progress,
        requested=requested,
        ctx=ctx,
        chunk_rows=chunk_rows,
    )
    if not use_cache:
        with tempfile.TemporaryDirectory(prefix="features-") as folder:
            features = extract(FeatureEntry(Path(folder) / key))
            return Features(
                np.array(features.positions), torch.from_numpy(np.array(features.values.numpy())), features.bad, False
            )
    (features_cache_dir() / f"{key}.pt").unlink(missing_ok=True)  # an earlier version's entry: never trusted
    return extract(FeatureEntry(features_cache_dir() / key))


def _extract(
    entry: FeatureEntry,
    key: str,
    model: nn.Module,
    source: Source,
    labels: np.ndarray,
    transform,
    extractor: FeatureExtractor,
    device: str,
    batch_size: int,
    workers: int,
    on_thumbnails,
    progress,
    requested: np.ndarray,
    ctx: DistContext,
    chunk_rows: int,
) -> Features:
    if ctx.all_ok(entry.open_complete()):
        return _features(entry, cached=True)
    work = _Pass(
        model, source, labels, transform, extractor, device, batch_size, workers, on_thumbnails, progress, requested
    )
    was_training = model.training
    model.eval()
    mine: set[int] = set()
    try:
        if ctx.active:  # every rank fills its share of the chunks, then one at a time finishes
            with entry.locked():
                entry.start(key, len(requested), extractor.dim(model), chunk_rows)
            ctx.barrier()
            mine |= _fill(entry, work, range(ctx.rank, entry.chunk_count, ctx.world))
            ctx.barrier()
        with entry.locked():  # chunks no rank could fill (or a single process's every chunk), then finish
            if not entry.open_complete():
                entry.start(key, len(requested), extractor.dim(model), chunk_rows)
                mine |= _fill(entry, work, range(entry.chunk_count), count_sealed=not ctx.active)
                entry.finish()
    finally:
        model.train(was_training)
    if on_thumbnails is not None:  # chunks another rank (or a killed run) extracted: decode for thumbnails
        for chunk in range(-(-len(requested) // chunk_rows)):
            if chunk not in mine:
                thumbnail_pass(
                    source,
                    labels,
                    on_thumbnails,
                    workers,
                    indices=requested[chunk * chunk_rows : (chunk + 1) * chunk_rows],
                )
    return _features(entry, cached=False)


def _fill(entry: FeatureEntry, work: _Pass, chunks, count_sealed: bool = True) -> set[int]:
    """Extract the unsealed chunks among ``chunks``; the ones extracted here."""
    extracted = set()
    for chunk in chunks:
        if entry.sealed(chunk):
            if count_sealed:
                work.advance(len(work.chunk(entry, chunk)))
            continue
        work.extract(entry, chunk)
        extracted.add(chunk)
    return extracted


def _features(entry: FeatureEntry, cached: bool) -> Features:
    if not entry.open_complete():
        raise RuntimeError(f"the feature cache entry {entry.folder} could not be finished")
    return Features(entry.positions(), torch.from_numpy(entry.values()), entry.bad(), cached, entry)
