"""What a task supplies so that one train driver and one score driver run any modality.

Why this split (after open_clip's ``TrainingTask``): labelled images and image-text pairs differ in
their loss (a classifier's closed-form cross-entropy; the batch-coupled InfoNCE), in how the mimic
layers are found (the classifier's head; a tower's projection), in how models are built and checked,
in the per-sample columns and end-of-run signals, and in the held-out metric. Everything else — a
run's life, resuming, torchrun, recording, Stage 2 — is the same, and lives in ``commands`` once.
So the commands never ask which modality they run: they ask a ``Task`` (chosen by the pool's kind,
``tasks.task_for``) and, for training, its ``TrainMode`` (what the first pass computes and caches,
what trains, the batches, the inputs of the end-of-run signals), and for scoring its ``ScoreMode``.

The task × mode table is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.pool import Pool
from mimic_explorer.data.source import Source
from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.scoring.losses import PerSampleLoss
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.training.drift import DriftMeter

if TYPE_CHECKING:  # pragma: no cover
    from mimic_explorer.scoring.prepared import BatchScores

Inputs = TypeVar("Inputs")
#: what a finished run's samples need per range of pool positions (``commands.finalize.PoolView``)
BaseRows = Callable[[np.ndarray], pd.DataFrame]
Signals = Callable[[np.ndarray], dict[str, np.ndarray]]
#: the sums of a pool's embeddings by name, or None: a call, since a score run reads them from every chunk file
EmbeddingSums = Callable[[], dict[str, np.ndarray] | None]


@dataclass
class Prepared(Generic[Inputs]):
    """What a command knows before the run directory is touched."""

    inputs: Inputs  # the command's own prepared objects (pool and models), handed to its work loop
    fingerprints: dict[str, Any]  # of data, init, model, reference: with the options, the run id
    facts: dict[str, Any] = field(default_factory=dict)  # ``RunMeta`` fields recorded when the run starts
    warnings: list[str] = field(default_factory=list)  # printed, and kept in ``meta.json``
    notes: list[str] = field(default_factory=list)  # defaults that were assumed: printed and in ``run.log``


@dataclass
class Given:
    """What a Python caller hands a run in place of what its options name (``mimic_explorer.commands.python_api``).

    ``source``: the pool, already opened (a dataset in memory, ``data.torch_source``), in place of
    ``--data``. ``model`` and ``reference``: models already built, in place of ``--arch`` with its
    checkpoint files — the caller's own module need not be rebuildable from a name, so it is handed in
    as it is (the caller passes copies: a run moves them to its device and trains them). ``transform``:
    picture → model input, in place of the model's preprocessing (``data.torch_source.ModelInputs``).
    A field left None: the options' own."""

    source: Source | None = None
    model: nn.Module | None = None
    reference: nn.Module | None = None
    transform: Callable | None = None


@dataclass
class Models:
    """The model, the reference and everything known about them, whatever the task.

    A classifier's mimic layers are its head (``head_name``); a dual encoder's are named by
    ``mimic_layers`` ("image", "text", "all" or parameter names)."""

    model: nn.Module
    reference: nn.Module | None
    transform: ImageTransform
    arch: str = ""
    input_shape: tuple[int, int, int] = (3, 32, 32)
    class_names: list[str] = field(default_factory=list)
    head_name: str | None = None
    mimic_layers: str | list[str] | None = None
    #: fingerprint of the weights the model started from (train: after ``--init``; score: the init the
    #: scored ``--model`` was trained from, by its sidecar), None when unknown
    init_fingerprint: str | None = None
    reference_fingerprint: str | None = None
    reference_init_fingerprint: str | None = None
    load_reports: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: which defaults were assumed (e.g. the input size of a ``file.py:function`` model): stderr and run.log
    notes: list[str] = field(default_factory=list)
    #: ``BuiltModel.describe()`` (architecture, head, preprocessing and its source, weights, load report)
    description: dict = field(default_factory=dict)
    basis: dict = field(default_factory=dict)
    #: whether model and reference started from the same weights; None when not compared
    same_init: bool | None = None

    @property
    def preprocessing(self) -> dict:
        """What the model is fed (``ImageTransform.describe()``): meta.json, the checkpoint sidecar."""
        return self.transform.describe()


@dataclass
class Job:
    """What a command prepared before its run directory is touched: the task, the pool, the models
    and the task's own data (the captions of a pairs pool)."""

    task: Task
    pool: Pool
    models: Models
    data: Any = None

    @property
    def sample_ids(self) -> np.ndarray:
        """The ids of the pool's samples, by pool position."""
        return self.pool.source.sample_ids


@dataclass
class Held:
    """What a training mode's first pass leaves the loop: the pool position of each row the loop
    indexes (the good samples, in pool order), and whatever the mode holds for them."""

    positions: np.ndarray
    rows: Any = None  # features, tower outputs or image inputs held in memory; None when decoded per epoch
    extra: dict = field(default_factory=dict)


@dataclass
class Passes:
    """What a first pass may use: where thumbnails go (None when a resumed run has them), where bad
    samples go, the run's timings, and how to report progress."""

    thumbs: ThumbnailWriter | None
    errors: ErrorLog
    timings: dict
    progress: Callable[[str, int, int], None]


class TrainMode(Protocol):
    """How one task trains in one way (a linear probe, a fine-tune, frozen towers …)."""

    name: str

    def first_pass(self, passes: Passes) -> Held:
        """Decode the pool once: what is cached or held for the epochs, thumbnails, bad samples."""
        ...

    def parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(what the optimiser trains, the reference as that part sees its inputs — None without one)."""
        ...

    def batches(self, held: Held) -> Any:
        """The epochs' batches (``len``, ``.plan``, ``.epoch(e)`` → (rows, inputs, targets))."""
        ...

    def loop_options(self) -> dict[str, Any]:
        """What ``training.loop.train`` needs beyond the batches: ``head_name``, ``loss``, ``mimic_params``."""
        ...

    def drift(self) -> DriftMeter | None:
        """A meter of the shared part's drift when this mode trains beyond the mimic layers (with a reference)."""
        ...

    def signals(self, held: Held, batches: Any) -> Any:
        """The end-of-run signals' raw values (the task turns them into samples columns); with a reference only."""
        ...


@dataclass
class ScoreBatch:
    """One scoring batch: pool positions, the model's inputs and targets, and what the task's rows need."""

    positions: np.ndarray
    inputs: Any
    targets: torch.Tensor | None
    extra: dict = field(default_factory=dict)


@dataclass
class ReferencePass:
    """What the reference's pass over one scoring batch gives beside the model's scores: columns of the
    batch's score rows (pairs: the reference's CLIP score and loss), and per-sample signals kept until
    the run is finished (``store.chunk_signals``): the suggested label, the class probabilities and the
    map's vectors, which become samples columns and run arrays as a train run's end-of-run signals do."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)
    signals: dict[str, np.ndarray] = field(default_factory=dict)


class ScoreMode(Protocol):
    """How one task scores a fixed checkpoint."""

    def prepare(self, passes: Passes) -> None:
        """Anything computed once before the chunks (a linear probe's cached features)."""
        ...

    def scorer(self) -> Any:
        """The ``PreparedScorer`` of the run (reference checked and task vector computed once)."""
        ...

    def batches(self, start: int, stop: int, passes: Passes) -> Iterator[ScoreBatch]:
        """Batches of the pool positions ``start … stop − 1`` (thumbnails recorded when ``passes.thumbs``)."""
        ...

    def redrawn_batches(self, start: int, stop: int, draw: int) -> Iterator[ScoreBatch]:
        """``--redraws``: the same positions cut into batches after shuffle ``draw`` (scores alone). Only a task
        whose loss couples the batch has it; the others refuse ``--redraws`` in ``Task.check_options``."""
        ...

    def decodes(self) -> bool:
        """Whether ``batches`` decodes images (so thumbnails come with it)."""
        ...

    def reference_pass(self, batch: ScoreBatch) -> ReferencePass:
        """The reference's outputs for one batch (eval mode, no autograd): its rows' columns and signals."""
        ...


class Task(Protocol):
    """A modality: labelled classification, or image-text pairs."""

    kind: str
    noun: str  # "sample" | "pair": how messages name one row
    min_batch: int  # the fewest samples a batch may hold (InfoNCE: two)
    loss: PerSampleLoss | None  # None: the classifier's closed-form cross-entropy

    def check_options(self, options: Any) -> None:
        """Raise ``ValueError`` for an option this task cannot use, before anything is written."""

    def prepare_train(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Any:
        """Build and check the models of a ``train`` run (or take the ones ``given``): a ``Prepared`` with the
        ``Job``, the fingerprints of data, init and reference, and the facts ``meta.json`` records."""

    def prepare_score(self, options: Any, pool: Pool, device: str, given: Given | None = None) -> Any:
        """Build and check the model and reference of a ``score`` run (or take the ones ``given``): a ``Prepared`` as
        for ``train``."""

    def train_mode(self, job: Job, options: Any, run: Any) -> TrainMode:
        """The way this run trains (the options choose: linear probe, fine-tune, frozen towers …)."""

    def score_mode(self, job: Job, options: Any, run: Any) -> ScoreMode:
        """The way this run scores a fixed checkpoint."""

    def default_binarisation(self) -> str:
        """Stage 2's per-epoch vote of a ``train`` run when ``--binarise`` is not given."""

    def score_rows(
        self,
        job: Job,
        batch: ScoreBatch,
        scores: BatchScores,
        weights: torch.Tensor,
        step: int,
        reference: ReferencePass,
    ) -> pd.DataFrame:
        """The score rows of one scoring batch (``training.recording.score_rows`` plus the task's columns, among
        them ``reference.rows``)."""

    def train_rows(self, job: Job, held: Held, signals: Any) -> tuple[BaseRows, Signals | None]:
        """``samples.parquet``'s base columns of a trained run, and its end-of-run signals as columns."""

    def score_base_rows(self, job: Job, layout: Any) -> BaseRows:
        """``samples.parquet``'s base columns of a scored run."""

    def save_model(self, job: Job, options: Any, meta: Any, held: Held) -> None:
        """``--save-model``: the trained weights and what a later run needs to load them."""

    def held_out(self, job: Job, options: Any, trained: nn.Module, device: str) -> dict:
        """``--test-data``: the held-out metric of the trained model (accuracy; recall@k)."""

    def clean_pairs(self, job: Job, options: Any, sums: EmbeddingSums, device: str) -> Any:
        """What a run's split may know of the pool's clean fraction beyond its scores — an image-text pool's
        held-out clean pairs (``--test-data``, ``stage2.pair_quality.CleanPairs``, with ``sums()``: the pool's
        embedding sums by name, asked for only then) — or None."""

    def train_summary(self, job: Job, options: Any, held: Held, scored: bool, log: Callable[[str], None]) -> dict:
        """The task's part of a ``train`` run's summary (said to ``log`` where a person should know)."""

    def score_summary(self, job: Job, options: Any, layout: Any, log: Callable[[str], None]) -> dict:
        """The task's part of a ``score`` run's summary (said to ``log`` where a person should know)."""

    def losses_from_rows(self) -> bool:
        """Whether a scored sample's model loss and prediction come from its score rows."""
