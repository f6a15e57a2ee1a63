"""A run's pool: the source opened from ``--data``, restricted to ``--subset``, with ``--label-noise``
injected (seeded) and the truth recorded; and its fingerprints.

Why one step for every task: whatever the pool holds (labelled images or image-text pairs), a run
reads only the samples a keep-list names (nothing outside it is decoded), and its data fingerprint —
part of the run id — must say so. Options that only one kind of pool can use are refused by the
task (``tasks``) once the pool's kind is known, still before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mimic_explorer.data.keep_lists import read_keep_list
from mimic_explorer.data.metadata import PoolMetadata, join_metadata, metadata_files
from mimic_explorer.data.noise import CIFAR10_ASYMMETRIC, asymmetric_noise, symmetric_noise
from mimic_explorer.data.source import Source
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.subset import restrict_to_keep_list
from mimic_explorer.util.fingerprint import state_fingerprint


@dataclass
class Pool:
    """The pool a run trains on or scores: the source (restricted to ``--subset``), the labels used (noisy when noise
    was injected), the truth and what was injected (``noise``), and how the keep-list met the pool (``subset``). Every
    command reads its samples through this one object."""

    source: Source
    labels: np.ndarray  # labels used for training (noisy when noise was injected)
    true_labels: np.ndarray | None
    is_noisy: np.ndarray | None
    noise: dict
    #: how ``--subset`` met the pool (``meta.json``'s ``subset``), None without one
    subset: dict | None = None
    #: what opening the pool found worth saying (listed ids the pool lacks): printed and kept in meta.json
    warnings: list[str] = field(default_factory=list)
    #: ``--metadata`` (or the parquet beside each shard) joined by id: columns every task's base rows append
    metadata: PoolMetadata | None = None

    def source_facts(self) -> dict:
        """What ``meta.json``'s ``source`` adds about the pool's metadata (``metadata``: files, key, sha256, joined
        columns and how the ids met the pool); nothing without metadata."""
        return {} if self.metadata is None else {"metadata": self.metadata.facts}

    def extra_rows(self, positions: np.ndarray):
        """The joined metadata columns at ``positions`` (None without metadata): what ``samples.parquet`` adds
        after the base columns, for every task."""
        return None if self.metadata is None else self.metadata.rows(positions)


def open_pool(options, source: Source | None = None) -> Pool:
    """Open ``--data`` (``options``: a command's options; ``source``: the pool already opened, when the
    caller had to look at its kind first), keep only the samples ``--subset`` lists (``data.subset``: every
    command reads the restricted pool, and nothing outside it is decoded) and inject ``--label-noise`` (seeded) into
    what is left, recording the truth. Shard indexes live in the shared cache: built once per shard,
    reused by every run."""
    source = open_source(options.data) if source is None else source
    subset = None
    if options.subset:
        source, subset = restrict_to_keep_list(source, read_keep_list(options.subset))
    labels, true_labels, is_noisy, noise = source.labels, source.true_labels, None, {}
    if true_labels is not None:
        is_noisy = labels != true_labels
        noise = {"kind": "given", "column": "true_label"}
    if options.label_noise:
        if options.noise_type == "symmetric":
            injected = symmetric_noise(labels, options.label_noise, len(source.class_names), options.noise_seed)
        elif options.noise_type == "asymmetric":
            injected = asymmetric_noise(labels, options.label_noise, CIFAR10_ASYMMETRIC, options.noise_seed)
        else:
            raise ValueError(f"unknown --noise-type {options.noise_type!r}; choose symmetric or asymmetric")
        labels, true_labels, is_noisy = injected.labels, injected.true_labels, injected.is_noisy
        noise = {
            "kind": options.noise_type,
            "rate": options.label_noise,
            "seed": options.noise_seed,
            "flipped": int(is_noisy.sum()),
        }
    warnings = list(getattr(source, "warnings", []))  # what opening found (a truncated shard), printed and in meta.json
    if subset is not None:
        warnings += subset.warnings
    metadata = open_metadata(source, getattr(options, "metadata", None))
    if metadata is not None:
        warnings += metadata.warnings
    return Pool(
        source, labels, true_labels, is_noisy, noise, None if subset is None else subset.facts, warnings, metadata
    )


def open_metadata(source: Source, pattern: str | None) -> PoolMetadata | None:
    """``--metadata PATTERN`` joined onto the pool, else the parquet files published beside its shards
    (DataComp's layout, ``Source.beside_metadata``), else None (``data.metadata``)."""
    if pattern:
        return join_metadata(source.sample_ids, metadata_files(pattern), f"--metadata {pattern}")
    beside = source.beside_metadata()
    if not beside:
        return None
    return join_metadata(source.sample_ids, beside, "the parquet beside the shards")


def check_decodable(source: Source, transform) -> None:
    """Raise ``ValueError`` when none of the pool's first samples can be decoded and transformed: a
    pool that cannot feed the model is refused before a run directory is made."""
    for i in range(min(len(source), 50)):
        try:
            transform(source.load(i))
            return
        except Exception:  # noqa: BLE001 - a bad first file must not decide alone
            continue
    raise ValueError(f"none of the first samples of {source.spec} could be decoded")


def pool_fingerprints(pool: Pool) -> dict[str, str]:
    """Fingerprints of the pool's data and of the labels the run uses (noisy ones when injected), with
    ``--subset`` the keep-list's content hash (the same ids in any file format: the same run), and with metadata
    the content hash of its files."""
    found = {"data": pool.source.fingerprint(), "labels": state_fingerprint({"l": torch.from_numpy(pool.labels)})}
    if pool.subset is not None:
        found["subset"] = pool.subset["sha256"]
    if pool.metadata is not None:
        found["metadata"] = pool.metadata.sha256
    return found
