"""Sources as torch data: a ``Dataset`` of (position, tensor, label), batches that skip bad samples,
and a loader of a whole pool into memory.

Why: training and scoring loops should see only good samples, and a bad file met in a DataLoader
worker must reach the run's error log instead of killing the worker. Items carry the sample's
position in the source so every recorded score maps back to its sample id
(``source.sample_ids[index]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mimic_explorer.data.errors import BadSample, BadSampleError, ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.data.transforms import default_transform
from mimic_explorer.util.seeds import epoch_generator

Transform = Callable[..., torch.Tensor]


class Batch(NamedTuple):
    """One decoded mini-batch: the source positions of its good samples, their inputs and targets, and the samples that
    could not be read (dropped from the batch, reported, never fatal)."""

    index: torch.Tensor  # int64 source positions of the good samples
    inputs: torch.Tensor
    targets: torch.Tensor
    bad: list[BadSample]


def _load_item(source: Source, transform: Transform, i: int):
    try:
        image = source.load(i)
    except BadSampleError as exc:
        return i, None, exc.bad
    try:
        return i, transform(image), int(source.labels[i])
    except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image is one bad sample
        return (
            i,
            None,
            BadSample(source.sample_ids[i], source.source_of(i), f"transform failed ({type(exc).__name__}: {exc})"),
        )


class SourceDataset(Dataset):
    """``ds[k]`` → ``(position, tensor, label)``, or ``(position, None, BadSample)`` for a bad file.

    ``indices`` restricts to a subset of positions; ``transform`` overrides ``default_transform(arch)``.
    Use ``collate_good`` as the DataLoader's ``collate_fn``.
    """

    def __init__(
        self,
        source: Source,
        transform: Transform | None = None,
        *,
        arch: str | None = None,
        indices: Sequence[int] | None = None,
    ):
        self.source = source
        self.transform = transform if transform is not None else default_transform(arch)
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        return _load_item(self.source, self.transform, int(self.indices[k]))


def collate_good(items: list) -> Batch:
    """Stack the good items; keep the bad ones aside (the batch shrinks, nothing raises)."""
    good = [it for it in items if it[1] is not None]
    bad = [it[2] for it in items if it[1] is None]
    if not good:
        return Batch(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(0, dtype=torch.int64), bad)
    return Batch(
        torch.tensor([it[0] for it in good], dtype=torch.int64),
        torch.stack([it[1] for it in good]),
        torch.tensor([it[2] for it in good], dtype=torch.int64),
        bad,
    )


class SourceBatches:
    """Seeded shuffled mini-batches from a ``Source``; same interface as ``train.TensorBatches``.

    ``epoch(e)`` yields ``(index, inputs, targets)`` with ``index`` the samples' source positions; bad
    samples are dropped from their batch and added to ``self.errors``. The order for a (seed, epoch)
    is the one ``TensorBatches`` would use on the same ``indices``.
    """

    def __init__(
        self,
        source: Source,
        batch_size: int,
        seed: int = 0,
        *,
        transform: Transform | None = None,
        arch: str | None = None,
        indices: Sequence[int] | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        errors: ErrorLog | None = None,
    ):
        self.dataset = SourceDataset(source, transform, arch=arch, indices=indices)
        self.batch_size, self.seed, self.num_workers, self.shuffle = batch_size, seed, num_workers, shuffle
        self.errors = errors if errors is not None else ErrorLog()
        self.errors.extend(source.open_errors)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        """The mini-batches of epoch ``epoch`` (shuffled by seed and epoch when ``shuffle``, so a resumed run draws
        the same ones), decoded by ``num_workers`` DataLoader workers."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, epoch)).tolist()
        else:
            order = list(range(n))
        chunks = [order[s : s + self.batch_size] for s in range(0, n, self.batch_size)]
        loader = DataLoader(
            self.dataset,
            batch_sampler=chunks,
            collate_fn=collate_good,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        for batch in loader:
            self.errors.extend(batch.bad)
            if len(batch.index):
                yield batch

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(index, inputs, targets)`` per batch: the interface the training loop takes from ``TensorBatches`` too (bad
        samples go to ``self.errors``)."""
        for batch in self.batches(epoch):
            yield batch.index, batch.inputs, batch.targets


def load_tensors(
    source: Source,
    transform: Transform | None = None,
    *,
    arch: str | None = None,
    indices: Iterable[int] | None = None,
    errors: ErrorLog | None = None,
    workers: int = 0,
    on_image: Callable[[int, object], None] | None = None,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Decode and transform a pool into memory: ``(positions of good samples, inputs, labels)``.

    Bad samples go to ``errors`` (with the source's ``open_errors``). ``on_image(position, pil_image)``
    is called for every good sample, e.g. to write its thumbnail in the same pass. ``workers`` threads
    decode in parallel; the output order is always the order of ``indices``.
    """
    transform = transform if transform is not None else default_transform(arch)
    if errors is None:
        errors = ErrorLog()
    errors.extend(source.open_errors)
    order = list(range(len(source))) if indices is None else [int(i) for i in indices]

    def work(i: int):
        try:
            image = source.load(i)
        except BadSampleError as exc:
            return i, None, None, exc.bad
        try:
            return i, image, transform(image), None
        except Exception as exc:  # noqa: BLE001 - an image the transform cannot take is one bad sample
            return (
                i,
                None,
                None,
                BadSample(source.sample_ids[i], source.source_of(i), f"transform failed ({type(exc).__name__}: {exc})"),
            )

    positions, tensors = [], []
    results: Iterable
    pool = ThreadPoolExecutor(workers) if workers and workers > 0 else None
    try:
        results = Source._ordered_map(pool, work, order, workers) if pool else map(work, order)
        for i, image, tensor, bad in results:
            if bad is not None:
                errors.add(bad)
                continue
            if on_image is not None:
                on_image(i, image)
            positions.append(i)
            tensors.append(tensor)
    finally:
        if pool is not None:
            pool.shutdown()
    if not tensors:
        return np.zeros(0, np.int64), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    pos = np.asarray(positions, dtype=np.int64)
    return pos, torch.stack(tensors), torch.from_numpy(source.labels[pos].copy())
