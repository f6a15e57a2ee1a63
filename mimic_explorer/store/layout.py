"""The run-directory contract: the name of every file and part a run directory holds.

Why one module: the commands write a run directory, the app and exports read it, and a resumed run
must find exactly what a killed one left. When every name is spelled here (and nowhere else in the
package), the contract is one page to read and a rename is one edit; the score parts are listed and
dropped only here, so resuming and reading agree on which files belong to a run. The layout is
described for readers in docs/ARCHITECTURE.md (the run-directory contract).

    meta.json            what the run is and its status (``store.meta.RunMeta``)
    samples.parquet      one row per sample: labels, mimic_score, keep, signals
    scores/              per-epoch (train, demo) or per-chunk (score) score parts, per rank under torchrun
    scores.parquet       older runs: every score row in one file
    errors.parquet       samples that could not be read, with the reason (and pool position)
    thumbs/              thumbnails: one blob file plus an index of (sample_id, offset, length)
    filters/             keep-lists and their specs saved from the app
    reference_probs.npy  labelled runs with a reference: the reference's class probabilities,
                         (samples, classes) float32, row r = samples.parquet row r (cleanlab's ``pred_probs``)
    embeddings/          one vector per sample, float16, row r = samples.parquet row r: ``image.npy``
                         (a classifier's head inputs — a score run's are the reference's — a pair's image
                         embedding under the reference) and
                         ``text.npy`` (a pair's caption embedding under the reference)
    maps/                2-D layouts of the samples: ``NAME.npy`` (samples, 2) float32 by row and
                         ``NAME.json`` (how it was made); NAME is SOURCE-METHOD or ``coords`` (the user's own)
    neighbours/          approximate-nearest-neighbour indexes of the embeddings (``SOURCE.hnsw``), built on
                         request ("more like this" on large pools)
    reviews.parquet      per-sample decisions (keep, drop, relabel) appended over time; the latest per sample wins
    .reviews.lock        taken while a decision is appended
    index/               the app's per-run indexes (built on first open): manifest.json, one .npy per
                         numeric column, per score column its ascending order and sorted values, and the
                         text columns in one Arrow file; built in .index-building-* and renamed into place
    .index.lock          taken while an index is built, so two app sessions build it once
    state.pt             training state of an unfinished run (resume point)
    run.log              every message the run printed
    .lock                the pid of the process writing the run

Row formats (what a reader may rely on; ``store.score_rows`` reads them):

- **position** is a sample's *pool position*: its index in the ``--data`` source (0 … pool size − 1),
  known before any image is decoded and the same on every rank. ``samples.parquet`` holds the pool's
  good samples in ascending position; the bad ones are the rows of ``errors.parquet``, whose
  ``position`` column (int64) gives where they sit, so row ↔ position needs no string lookup
  (``score_rows.samples_positions``). Runs written before positions existed have neither column;
  their readers fall back to ``sample_id``.
- **Score parts** (``epoch-*.parquet``, ``chunk-*.parquet``) hold the columns ``sample_id`` (string),
  ``epoch`` (int32), ``step`` (int64: the batch the row was scored in, unique within an epoch across
  ranks), ``position`` (int64), ``proj``, ``weight``, ``cos``, ``loss`` (float64), ``pred``,
  ``batch_size`` (int32); each part is sorted by (epoch, position) and written in row groups of at
  most ``SCORE_ROW_GROUP_ROWS`` rows with min/max statistics, so a filter on ``position`` (one sample,
  or a range of samples) reads only the row groups that can hold it. A ``score`` chunk part covers the
  contiguous positions ``[chunk × chunk_size, (chunk + 1) × chunk_size)``; chunks go to ranks in turn
  (chunk c to rank c mod world), so listing chunk parts by name lists them by position.
- **samples.parquet** is written in row groups of ``SAMPLES_ROW_GROUP_ROWS`` rows (the last may be
  shorter), whatever chunk size Stage 2 worked in, so row r is in row group r // SAMPLES_ROW_GROUP_ROWS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

META = "meta.json"
SAMPLES = "samples.parquet"
SCORES_DIR = "scores"
SCORES_FILE = "scores.parquet"
ERRORS = "errors.parquet"
THUMBS_DIR = "thumbs"
THUMBS_BLOB = "thumbs.bin"
THUMBS_INDEX = "index.parquet"
FILTERS_DIR = "filters"
REFERENCE_PROBS = "reference_probs.npy"
EMBEDDINGS_DIR = "embeddings"
MAPS_DIR = "maps"
NEIGHBOURS_DIR = "neighbours"
REVIEWS = "reviews.parquet"
REVIEWS_LOCK = ".reviews.lock"
INDEX_DIR = "index"
INDEX_LOCK = ".index.lock"
INDEX_MANIFEST = "manifest.json"
INDEX_TEXT = "text.arrow"
_INDEX_BUILDING = ".index-building-"
_INDEX_OLD = ".index-old-"
LOCK = ".lock"
STATE = "state.pt"
LOG = "run.log"
TRAINED_MODEL = "trained_model.pt"
#: suffix of the metadata file saved beside a checkpoint by ``train --save-model``
CHECKPOINT_SIDECAR_SUFFIX = ".meta.json"
#: suffix of the filter spec written beside every keep-list (``keep.csv`` -> ``keep.csv.spec.json``)
SPEC_SUFFIX = ".spec.json"
#: most rows in one row group of a score part (bounded reads of one sample or a range of samples)
SCORE_ROW_GROUP_ROWS = 65_536
#: rows in each row group of samples.parquet (all but the last)
SAMPLES_ROW_GROUP_ROWS = 65_536

_EPOCH = "epoch-"
_CHUNK = "chunk-"
_ERRORS_PART = ".errors-chunk-"
_PART = ".parquet"
_ERRORS_PART_SUFFIX = ".parquet.part"  # hidden and not ``*.parquet``: never read as a score part
_SCRATCH_SUFFIX = ".scratch"


def _rank_suffix(rank: int | None) -> str:
    return "" if rank is None else f"-rank{rank:03d}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is created or read by building one)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    # ------------------------------------------------------------------------------ files and folders
    @property
    def meta(self) -> Path:
        """``meta.json``: what the run is and its status."""
        return self.root / META

    @property
    def samples(self) -> Path:
        """``samples.parquet``: one row per good sample, with its Stage-2 result and signals."""
        return self.root / SAMPLES

    @property
    def errors(self) -> Path:
        """``errors.parquet``: the samples that could not be read, with the reason."""
        return self.root / ERRORS

    @property
    def scores_dir(self) -> Path:
        """``scores/``: the score parts (per epoch, or per chunk for ``score``)."""
        return self.root / SCORES_DIR

    @property
    def scores_file(self) -> Path:
        """The single score file of older runs (newer runs write parts under ``scores_dir``)."""
        return self.root / SCORES_FILE

    @property
    def thumbs_dir(self) -> Path:
        """``thumbs/``: the thumbnails' blob and index."""
        return self.root / THUMBS_DIR

    @property
    def thumbs_blob(self) -> Path:
        """``thumbs/thumbs.bin``: every thumbnail's bytes, one after another."""
        return self.thumbs_dir / THUMBS_BLOB

    @property
    def thumbs_index(self) -> Path:
        """``thumbs/index.parquet``: (sample_id, offset, length) of every thumbnail in the blob."""
        return self.thumbs_dir / THUMBS_INDEX

    @property
    def filters_dir(self) -> Path:
        """Keep-lists and their specs saved from the app (restored on reopen)."""
        return self.root / FILTERS_DIR

    @property
    def reference_probs(self) -> Path:
        """``reference_probs.npy``: the reference's class probabilities, one row per samples.parquet row."""
        return self.root / REFERENCE_PROBS

    @property
    def embeddings_dir(self) -> Path:
        """``embeddings/``: one vector per sample (float16), row r = samples.parquet row r."""
        return self.root / EMBEDDINGS_DIR

    def embedding(self, source: str) -> Path:
        """``embeddings/SOURCE.npy`` (``image`` or ``text``)."""
        return self.embeddings_dir / f"{source}.npy"

    def embedding_sources(self) -> list[str]:
        """The embeddings the run holds (``image``, ``text``), sorted."""
        if not self.embeddings_dir.is_dir():
            return []
        return sorted(p.stem for p in self.embeddings_dir.glob("*.npy") if not p.name.startswith("."))

    @property
    def maps_dir(self) -> Path:
        """``maps/``: 2-D layouts of the samples."""
        return self.root / MAPS_DIR

    def map_coords(self, name: str) -> Path:
        """``maps/NAME.npy``: (samples, 2) float32 coordinates by samples.parquet row."""
        return self.maps_dir / f"{name}.npy"

    def map_info(self, name: str) -> Path:
        """``maps/NAME.json``: how the layout was made (method, source, rows, when)."""
        return self.maps_dir / f"{name}.json"

    def map_names(self) -> list[str]:
        """The layouts the run holds (those with both their files), sorted."""
        if not self.maps_dir.is_dir():
            return []
        return sorted(
            p.stem for p in self.maps_dir.glob("*.npy") if not p.name.startswith(".") and self.map_info(p.stem).exists()
        )

    def neighbour_index(self, source: str) -> Path:
        """``neighbours/SOURCE.hnsw``: an approximate-nearest-neighbour index of ``embedding(source)``."""
        return self.root / NEIGHBOURS_DIR / f"{source}.hnsw"

    @property
    def reviews(self) -> Path:
        """``reviews.parquet``: per-sample decisions, appended; the latest per sample wins."""
        return self.root / REVIEWS

    @property
    def reviews_lock(self) -> Path:
        """Held (``flock``) while a decision is appended to ``reviews``: two sessions marking at once both land."""
        return self.root / REVIEWS_LOCK

    @property
    def index_dir(self) -> Path:
        """The app's per-run index (``IndexFiles``): built on first open, never the source of truth."""
        return self.root / INDEX_DIR

    @property
    def index_lock(self) -> Path:
        """Held (``flock``) while the app's index is checked or built: one build however many sessions open."""
        return self.root / INDEX_LOCK

    def index_build_dir(self, token: str) -> Path:
        """Where an index is built before it is renamed to ``index_dir`` (hidden; removed if the build fails)."""
        return self.root / f"{_INDEX_BUILDING}{token}"

    def index_old_dir(self, token: str) -> Path:
        """Where a stale index is moved aside for the instant a fresh one takes its name."""
        return self.root / f"{_INDEX_OLD}{token}"

    def index_leftovers(self) -> list[Path]:
        """Build and set-aside folders a killed build left behind (safe to remove under ``index_lock``)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.name.startswith((_INDEX_BUILDING, _INDEX_OLD)))

    @property
    def lock(self) -> Path:
        """``.lock``: holds the pid of the process writing the run (one writer at a time)."""
        return self.root / LOCK

    @property
    def state(self) -> Path:
        """``state.pt``: the training state an unfinished run resumes from."""
        return self.root / STATE

    @property
    def trained_model(self) -> Path:
        """The weights a ``train`` run from Python saves (``mimic_explorer.commands.python_api``: read back when the
        run is found finished); the command line saves them where ``--save-model`` says."""
        return self.root / TRAINED_MODEL

    @property
    def log(self) -> Path:
        """``run.log``: every message the run printed."""
        return self.root / LOG

    # ------------------------------------------------------------------------------ score parts
    def epoch_part(self, first: int, last: int | None = None, rank: int | None = None) -> Path:
        """``scores/epoch-FIRST[-LAST][-rankRRR].parquet``: the rows of epochs FIRST..LAST (one rank's)."""
        span = f"{first:04d}" if last is None or last == first else f"{first:04d}-{last:04d}"
        return self.scores_dir / f"{_EPOCH}{span}{_rank_suffix(rank)}{_PART}"

    def chunk_part(self, chunk: int, rank: int | None = None) -> Path:
        """``scores/chunk-NNNNNN[-rankRRR].parquet``: the rows of one chunk of a ``score`` pass."""
        return self.scores_dir / f"{_CHUNK}{chunk:06d}{_rank_suffix(rank)}{_PART}"

    def error_part(self, chunk: int) -> Path:
        """The bad samples of one chunk of a ``score`` pass, written before the chunk's score part (so
        a finished chunk's bad samples survive a kill) and merged into ``errors`` by rank 0."""
        return self.scores_dir / f"{_ERRORS_PART}{chunk:06d}{_ERRORS_PART_SUFFIX}"

    @property
    def first_pass_errors(self) -> Path:
        """The bad samples a ``train`` run's first pass found, written before the thumbnails' index (which
        marks that pass done): a resumed run keeps the thumbnails and skips the pass, and reads them here.
        One of the ``error_parts``, so it goes with them."""
        return self.scores_dir / f"{_ERRORS_PART}first-pass{_ERRORS_PART_SUFFIX}"

    def _glob(self, pattern: str) -> list[Path]:
        return sorted(self.scores_dir.glob(pattern)) if self.scores_dir.is_dir() else []

    def epoch_parts(self) -> list[Path]:
        """The per-epoch score parts present, sorted."""
        return self._glob(f"{_EPOCH}*{_PART}")

    def chunk_parts(self) -> list[Path]:
        """The per-chunk score parts present (``score``), sorted."""
        return self._glob(f"{_CHUNK}*{_PART}")

    def error_parts(self) -> list[Path]:
        """The per-chunk error parts present (bad samples of the chunks written so far), sorted."""
        return self._glob(f"{_ERRORS_PART}*{_ERRORS_PART_SUFFIX}")

    def chunk_part_of(self, chunk: int) -> Path | None:
        """The finished part of ``chunk`` whichever rank wrote it (a resumed run may have another
        number of ranks), or None."""
        found = self._glob(f"{_CHUNK}{chunk:06d}{_PART}") + self._glob(f"{_CHUNK}{chunk:06d}-rank*{_PART}")
        return found[0] if found else None

    def scratch(self, name: str) -> Path:
        """A hidden working file of the finishing stage (``scores/.NAME.scratch``): never a score part,
        removed when the run completes and by ``clear_score_parts``."""
        return self.scores_dir / f".{name}{_SCRATCH_SUFFIX}"

    def scratch_files(self) -> list[Path]:
        """The finishing stage's working files present (removed when the run completes)."""
        return self._glob(f".*{_SCRATCH_SUFFIX}")

    def score_parts(self) -> list[Path]:
        """Every file holding score rows: the legacy single file when it exists, else every part."""
        if self.scores_file.exists():
            return [self.scores_file]
        return sorted(self.epoch_parts() + self.chunk_parts())

    @staticmethod
    def part_epochs(path: Path) -> tuple[int, int]:
        """(first, last) epoch of an epoch part named by ``epoch_part``; ``ValueError`` for any other file."""
        if not Path(path).name.startswith(_EPOCH):
            raise ValueError(f"{Path(path).name} is not an epoch part")
        numbers = [int(token) for token in Path(path).name.split(".")[0].split("-")[1:] if token.isdigit()]
        return numbers[0], numbers[-1]

    def drop_epoch_parts_after(self, epoch: int) -> None:
        """Remove epoch parts holding any epoch after ``epoch`` (written after the last state a kill left)."""
        for part in self.epoch_parts():
            if self.part_epochs(part)[1] > epoch:
                part.unlink(missing_ok=True)

    def clear_score_parts(self) -> None:
        """Remove every score and error part (a fresh or forced run starts from nothing)."""
        for part in self.epoch_parts() + self.chunk_parts() + self.error_parts() + self._glob(f".*{_SCRATCH_SUFFIX}"):
            part.unlink(missing_ok=True)


@dataclass(frozen=True)
class IndexFiles:
    """The files inside one app index folder (the final ``index_dir`` or a build folder).

    Column files are numbered (``column-003.npy``), not named after the column, so any column name is
    safe; the manifest maps names to numbers."""

    folder: Path

    @property
    def manifest(self) -> Path:
        """What the index was built from (sizes and mtimes) and every file's size: stale or truncated is rebuilt."""
        return self.folder / INDEX_MANIFEST

    @property
    def text(self) -> Path:
        """The non-numeric columns (sample_id, source, ...) as one uncompressed Arrow IPC file (memory-mapped)."""
        return self.folder / INDEX_TEXT

    def column(self, number: int) -> Path:
        """The ``.npy`` file of numeric column ``number`` (the manifest maps names to numbers)."""
        return self.folder / f"column-{number:03d}.npy"

    @property
    def thumb_offsets(self) -> Path:
        """Each sample's thumbnail offset in thumbs.bin, by sample position (-1: none)."""
        return self.folder / "thumb-offsets.npy"

    @property
    def thumb_lengths(self) -> Path:
        """Each sample's thumbnail length in bytes, by sample position."""
        return self.folder / "thumb-lengths.npy"

    def order(self, number: int) -> Path:
        """Row positions of a score column, ascending (stable, NaN last)."""
        return self.folder / f"order-{number:03d}.npy"

    def grouped(self, number: int) -> Path:
        """The positions of the score column's non-NaN values sorted by (class, mislabeled) group, then by value."""
        return self.folder / f"grouped-{number:03d}.npy"

    def sorted_record(self, number: int) -> Path:
        """A column sorted on first use: its counts, histogram and file sizes (written after its files)."""
        return self.folder / f"sorted-{number:03d}.json"

    def trajectory(self, number: int) -> Path:
        """One per-epoch signal as an (epochs × samples) array: a sample's trajectory is one column."""
        return self.folder / f"trajectory-{number:02d}.npy"

    @property
    def id_hashes(self) -> Path:
        """Every sample id's 64-bit hash, ascending (``store.id_lookup``: rows by id in O(log n))."""
        return self.folder / "id-hashes.npy"

    @property
    def id_order(self) -> Path:
        """The row of each hash in ``id_hashes``."""
        return self.folder / "id-order.npy"

    @property
    def trajectory_rows(self) -> Path:
        """How many score rows each (sample, epoch) cell averages (0: the sample has none that epoch)."""
        return self.folder / "trajectory-rows.npy"


def checkpoint_sidecar(checkpoint: str | os.PathLike) -> Path:
    """The metadata file beside a checkpoint saved by ``train --save-model`` (arch, init fingerprint…)."""
    return Path(str(checkpoint) + CHECKPOINT_SIDECAR_SUFFIX)


def spec_beside(keep_list: str | os.PathLike) -> Path:
    """The filter spec written beside a keep-list (``keep.csv`` -> ``keep.csv.spec.json``)."""
    return Path(str(keep_list) + SPEC_SUFFIX)


def keep_list_of(spec: str | os.PathLike) -> Path:
    """The keep-list a spec file describes (``keep.csv.spec.json`` -> ``keep.csv``)."""
    return Path(str(spec)[: -len(SPEC_SUFFIX)] if str(spec).endswith(SPEC_SUFFIX) else spec)
