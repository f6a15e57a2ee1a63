"""One ordered pass over a pool that decodes each image once for both the model and the gallery.

Why: decoding is often the most expensive part of a pass over small images; the same decoded image
gives the model's input tensor and the 96-px thumbnail, and DataLoader workers do both in parallel.
Bad files become ``BadSample`` records instead of exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mimic_explorer.data.errors import BadSample, BadSampleError, ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.store.thumbs import thumbnail_bytes


class PassBatch(NamedTuple):
    """One decoded batch of a pass over the pool: source positions, inputs, targets, thumbnails (when asked) and the
    samples that could not be read."""

    index: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    thumbs: list[bytes | None]
    bad: list[BadSample]


class _PassDataset(Dataset):
    def __init__(self, source: Source, labels: np.ndarray, transform: Callable, indices: np.ndarray, thumbs: bool):
        self.source, self.labels, self.transform, self.indices, self.thumbs = source, labels, transform, indices, thumbs

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        try:
            image, original = self.source.load_encoded(i) if self.thumbs else (self.source.load(i), None)
            tensor = self.transform(image)
        except BadSampleError as exc:
            return i, None, exc.bad, None
        except Exception as exc:  # noqa: BLE001 - one odd image is one bad sample, never a dead run
            return (
                i,
                None,
                BadSample(self.source.sample_ids[i], self.source.source_of(i), f"{type(exc).__name__}: {exc}"),
                None,
            )
        thumb = thumbnail_bytes(image, original) if self.thumbs else None
        return i, tensor, int(self.labels[i]), thumb


def _collate(items: list) -> PassBatch:
    good = [it for it in items if it[1] is not None]
    bad = [it[2] for it in items if it[1] is None]
    if not good:
        return PassBatch(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, dtype=torch.int64), [], bad)
    return PassBatch(
        torch.tensor([it[0] for it in good], dtype=torch.int64),
        torch.stack([it[1] for it in good]),
        torch.tensor([it[2] for it in good], dtype=torch.int64),
        [it[3] for it in good],
        bad,
    )


def pool_pass(
    source: Source,
    labels: np.ndarray,
    transform: Callable,
    batch_size: int,
    *,
    indices: Sequence[int] | None = None,
    thumbnails: bool = False,
    workers: int = 0,
    errors: ErrorLog | None = None,
) -> Iterator[PassBatch]:
    """Batches of good samples in ``indices`` order; bad ones are added to ``errors``."""
    indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    dataset = _PassDataset(source, labels, transform, indices, thumbnails)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    for batch in loader:
        if errors is not None:
            errors.extend(batch.bad)
        if len(batch.index):
            yield batch


def concat_batches(parts: list[PassBatch]) -> PassBatch:
    """One batch of the good samples of ``parts``, in order (their bad samples were already logged)."""
    if len(parts) == 1:
        return parts[0]
    return PassBatch(
        torch.cat([p.index for p in parts]),
        torch.cat([p.inputs for p in parts]),
        torch.cat([p.targets for p in parts]),
        [t for p in parts for t in p.thumbs],
        [],
    )


def at_most(stream: Iterable[PassBatch], count: int) -> Iterator[PassBatch]:
    """``stream``'s batches, those from the ``count``-th on joined into one: a rank of a distributed
    run must step as often as the others (``train.shared_batch_edges``), so the one sample its share
    holds beyond theirs goes into its last batch instead of a batch of its own."""
    tail = []
    for made, batch in enumerate(stream):
        if made < count - 1:
            yield batch
        else:
            tail.append(batch)
    if tail:
        yield concat_batches(tail)


def no_input(image) -> torch.Tensor:
    """A transform that makes no model input: for passes that want the thumbnails or the good
    positions alone."""
    return torch.zeros(0)


def thumbnail_pass(
    source: Source,
    labels: np.ndarray,
    on_thumbnails: Callable[[np.ndarray, list], None],
    workers: int = 0,
    *,
    indices: Sequence[int] | None = None,
    errors: ErrorLog | None = None,
    batch_size: int = 256,
) -> None:
    """Decode samples once for their thumbnails alone (no model input is made):
    ``on_thumbnails(positions, thumbs)`` per batch, bad samples into ``errors``."""
    for batch in pool_pass(
        source, labels, no_input, batch_size, indices=indices, thumbnails=True, workers=workers, errors=errors
    ):
        on_thumbnails(batch.index.numpy(), batch.thumbs)
