"""A pool restricted to the samples a keep-list names: ``SubsetSource``, a ``Source`` over some
positions of another, and ``restrict_to_keep_list``, which matches a keep-list against a pool.

Why a view and not a filter in each command: every command (train and score, labelled pools and
image-text pairs, fine-tuning, linear probes and frozen towers) reads its pool through one ``Source``;
a source that simply has fewer samples gives all of them the subset at once, and samples outside it
are never decoded because no position leads to them. Positions stay in the pool's order, so a
restricted run reads its shards forward as a full one does.

Ids of the keep-list that the pool lacks are a warning, not an error: a DataComp subset file names
pairs of the whole pool, and a local pool is routinely a part of it (shards not downloaded, images
that failed to download), so some listed ids are always absent there. The count and examples are
printed, kept in ``meta.json`` (``subset``), and an empty intersection is an error. Listed ids that
the pool holds as unusable samples (``open_errors``) stay recorded as bad samples of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.keep_lists import KeepList
from mimic_explorer.data.source import Source, _preview

#: listed ids shown as examples in the warning and in meta.json
EXAMPLES = 5


class SubsetSource(Source):
    """The samples of ``base`` at ``positions`` (ascending), with their ids, labels and captions; every
    read is the base source's read at the mapped position."""

    def __init__(self, base: Source, positions: np.ndarray, open_errors=()):
        positions = np.asarray(positions, dtype=np.int64)
        self.base, self.positions = base, positions
        self.kind = base.kind
        super().__init__(
            base.spec,
            base.sample_ids[positions],
            base.labels[positions],
            base.class_names,
            None if base.true_labels is None else base.true_labels[positions],
            open_errors,
            captions=None if base.captions is None else base.captions[positions],
            pool_errors=base.pool_errors,
            warnings=base.warnings,  # a damaged shard stays reported in a view
        )

    def source_of(self, i: int) -> str:
        """Where the base source keeps this sample."""
        return self.base.source_of(int(self.positions[i]))

    def read_bytes(self, i: int) -> bytes | None:
        """The base source's bytes of this sample."""
        return self.base.read_bytes(int(self.positions[i]))

    def _load(self, i: int) -> Image.Image:
        return self.base._load(int(self.positions[i]))

    def _load_encoded(self, i: int) -> tuple[Image.Image, bytes | None]:
        return self.base._load_encoded(int(self.positions[i]))

    def _sizes_now(self) -> np.ndarray:
        return self.base.sizes()[self.positions]

    def beside_metadata(self) -> list:
        """The base source's metadata files (joined on the subset's ids)."""
        return self.base.beside_metadata()

    def all_captions(self, i: int) -> list[str]:
        """The base source's captions of this pair."""
        return self.base.all_captions(int(self.positions[i]))

    def describe(self) -> dict:
        """The base source's description with the size of the whole pool the subset came from."""
        return {**super().describe(), "pool_samples": len(self.base)}


@dataclass
class SubsetReport:
    """How a keep-list met the pool: what ``meta.json`` records as ``subset``, and the warnings."""

    facts: dict
    warnings: list[str] = field(default_factory=list)


def restrict_to_keep_list(source: Source, keep: KeepList) -> tuple[SubsetSource, SubsetReport]:
    """``source`` restricted to the ids ``keep`` names (DataComp uids matched without regard to case).

    Raises ``DataSourceError`` when no listed id is a usable sample of the pool, naming examples of
    both sides; listed ids the pool lacks are counted and named in a warning (module docstring)."""
    pool_ids = source.sample_ids.astype(str)
    match_ids = np.char.lower(pool_ids.astype(str)) if keep.case_insensitive else pool_ids
    listed = keep.ids.astype(str)
    inside = np.isin(match_ids, listed)
    positions = np.flatnonzero(inside)
    bad_ids = {b.sample_id.lower() if keep.case_insensitive else b.sample_id: b for b in source.open_errors}
    unusable = [bad_ids[i] for i in listed.tolist() if i in bad_ids]
    found = set(match_ids[positions].tolist()) | {str(i) for i in listed.tolist() if i in bad_ids}
    missing = [i for i in listed.tolist() if i not in found]
    if not len(positions):
        hint = ""
        if keep.case_insensitive:
            hint = " (a DataComp uid list matches pools whose ids are 32-hex-digit uids, e.g. shards with a .json uid)"
        raise DataSourceError(
            f"--subset {keep.path}: none of its {len(listed)} id(s) is a usable sample of {source.spec} "
            f"(listed e.g. {_preview(listed.tolist()[:EXAMPLES])}; the pool has e.g. "
            f"{_preview(pool_ids.tolist()[:EXAMPLES])})"
            + hint
            + (
                "; the listed samples it holds are unusable: " + _preview(b.reason for b in unusable)
                if unusable
                else ""
            )
        )
    facts = {
        **keep.describe(),
        "pool_samples": len(source),
        "kept": len(positions),
        "unusable": len(unusable),
        "missing": len(missing),
        "missing_examples": missing[:EXAMPLES],
    }
    warnings = []
    if missing:
        warnings.append(
            f"SUBSET: {len(missing)} of the {len(listed)} id(s) in --subset {keep.path} are not in the pool "
            f"{source.spec} (e.g. {', '.join(missing[:EXAMPLES])}); the run uses the {len(positions)} listed "
            "sample(s) it has"
        )
    return SubsetSource(source, positions, open_errors=unusable), SubsetReport(facts, warnings)
