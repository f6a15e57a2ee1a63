"""``score`` and ``train`` on a whole dataset from Python: the command line's runs, with models and data in memory.

Why the command line's drivers and not a loop of ``mimic_scores``: a run is more than scores — the
bad samples recorded, Stage 2's keep/drop vote and the baselines beside it, thumbnails for the app,
resuming after a crash, ``torchrun`` — and all of it lives in ``commands.score`` / ``commands.train``.
These functions build the same options the command line does and call the same ``run_score`` /
``run_train``, so ``me.score(...)`` writes the very run ``mimic-explorer score`` would.

What is handed in without a file (``tasks.base.Given``): a dataset in memory becomes a ``Source``
(``data.torch_source.TorchSource``; a data SPEC string goes the command line's way), and models
built in memory are handed to the task as they are. The alternative — saving them as checkpoints for
the drivers to load — needs an ``--arch`` that rebuilds the module, which an arbitrary module built in
a notebook does not have; the seam is one optional argument of the drivers instead. Models given
as checkpoint paths (with ``arch=``) take the command line's path, dual encoders included.

``out=None`` writes the run to a temporary folder that lives as long as the result; ``out=DIR`` is a
run directory like ``--out``: the same call again returns the finished run without computing, and a
run that was stopped resumes.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mimic_explorer.commands.lifecycle import RunOutcome
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.torch_source import ModelInputs, TorchSource, dataset_of
from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.models.build import build_for_run
from mimic_explorer.models.checkpoints import load_checkpoint
from mimic_explorer.models.preprocessing import declared_input_size
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.reader import Run, open_run
from mimic_explorer.tasks.base import Given
from mimic_explorer.util.progress import tqdm_progress

__all__ = ["DatasetPositions", "Result", "score", "train"]


class Result:
    """A finished run, read for Python: its samples, the keep mask, the ranking and (``train``) the trained model.

    Attributes
    ----------
    path
        The run directory (``Explorer(result.path)`` shows it; ``mimic-explorer export`` reads it).
    run
        The run opened as ``open_run`` does (``meta``, ``scores``, ``thumbnails``).
    summary
        The run's summary (``meta.json``): estimated quality, detection metrics when the noise is known.
    cached
        Whether ``out`` held this run already (nothing was computed).
    model
        ``train`` of a labelled pool: the trained model (a copy of the module given, or ``arch`` rebuilt); else None.
    model_path
        ``train``: the file the trained weights were saved to (inside the run directory); else None.
    """

    def __init__(
        self,
        outcome: RunOutcome,
        positions: DatasetPositions | None = None,
        model: nn.Module | None = None,
        model_path: Path | None = None,
        keep_alive: Any = None,
    ):
        self.path = Path(outcome.path)
        self.summary = dict(outcome.summary)
        self.cached = outcome.cached
        self.report = outcome.report
        self.model = model
        self.model_path = model_path
        self.run: Run = open_run(self.path)
        self._positions = positions
        self._keep_alive = keep_alive  # a temporary run directory is removed with the last reference to it
        self._samples: pd.DataFrame | None = None

    def __repr__(self) -> str:
        samples = self.samples
        return f"<Result {self.path}: {len(samples)} samples, {int(samples['keep'].sum())} kept>"

    @property
    def samples(self) -> pd.DataFrame:
        """``samples.parquet``: ``sample_id``, ``mimic_score``, ``keep``, the baselines and the pool's columns; with
        ``index``, the dataset position of each sample, when the data was a dataset in memory."""
        if self._samples is None:
            frame = self.run.samples.copy()
            if self._positions is not None:
                frame.insert(1, "index", self._positions.of(frame["sample_id"]))
            self._samples = frame
        return self._samples

    @property
    def keep_mask(self) -> np.ndarray:
        """Stage 2's keep/drop vote as a boolean array: by dataset position for a dataset in memory (an item that
        could not be read is not kept), else in the order of ``samples``."""
        samples = self.samples
        if self._positions is None:
            return samples["keep"].to_numpy(dtype=bool)
        mask = np.zeros(self._positions.length, dtype=bool)
        mask[samples["index"].to_numpy()] = samples["keep"].to_numpy(dtype=bool)
        return mask

    def ranked(self, column: str = "mimic_score", ascending: bool = True) -> pd.DataFrame:
        """The samples ordered by ``column``, least useful first by default (missing values last)."""
        if column not in self.samples:
            raise ValueError(f"no column {column!r} in the samples; they have: {', '.join(self.samples.columns)}")
        return self.samples.sort_values(column, ascending=ascending, na_position="last", kind="stable")


@dataclass(frozen=True)
class DatasetPositions:
    """Where each sample of a dataset in memory sits in it: ``of(ids)`` → positions, and the dataset's length."""

    position: dict[str, int]
    length: int

    @classmethod
    def of_source(cls, source: TorchSource | None) -> DatasetPositions | None:
        """The positions of ``source``'s samples in its dataset (None for a pool opened from a SPEC)."""
        if source is None:
            return None
        ids = source.sample_ids.tolist()
        return cls({sid: int(source.dataset_index(k)) for k, sid in enumerate(ids)}, len(source.dataset))

    def of(self, sample_ids: Any) -> np.ndarray:
        """The dataset positions of ``sample_ids``."""
        return np.asarray([self.position[str(s)] for s in sample_ids], dtype=np.int64)


def _option_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _pool(data: Any, class_names: Sequence[str] | None, columns: Mapping[str, str] | None):
    """(data SPEC, the opened source or None, the DataLoader's batch size or None) of ``data``."""
    if isinstance(data, (str, os.PathLike)):
        if class_names is not None or columns is not None:
            raise ValueError("class_names= and columns= are for datasets in memory; a data SPEC names its own")
        return os.fspath(data), None, None
    dataset, batch_size = dataset_of(data)
    source = TorchSource(dataset, class_names=class_names, columns=columns)
    return source.spec, source, batch_size


def _label(model: nn.Module) -> str:
    """How the run names a model built in memory (``module:Class``: what it is, not something to rebuild)."""
    return f"{type(model).__module__}:{type(model).__qualname__}"


def _transform_for(model: nn.Module, transform: Any, source: TorchSource | None) -> ModelInputs:
    """Picture → input for a model given in memory: the dataset's own tensors, the ``transform`` given, else the
    input size the model declares (``input_size``) with ImageNet's normalisation."""
    if source is not None and source.gives_tensors:
        if transform is not None:
            raise ValueError("the dataset gives tensors, which are the model's inputs as they are: drop transform=")
        return source.model_inputs()
    if isinstance(transform, int):
        transform = ImageTransform(transform, transform)
    if transform is None:
        size = declared_input_size(model, type(model))
        if size is None:
            raise ValueError(
                "how do pictures become this model's inputs? pass transform= (a callable picture -> tensor, an "
                "ImageTransform, or a size in pixels), or declare input_size = N on the model"
            )
        transform = ImageTransform(size, size)
    if not callable(transform):
        raise ValueError(
            f"transform= must be callable (picture -> tensor), an ImageTransform or a size, got {transform!r}"
        )
    return ModelInputs(transform)


def _given_modules(model: nn.Module, reference: Any, arch: str | None, transform: Any, source: TorchSource | None):
    """(how the options name the modules, the ``Given`` that hands copies of them to the drivers)."""
    if reference is not None and not isinstance(reference, nn.Module):
        raise ValueError("give model and reference both as modules or both as checkpoint paths")
    if arch is not None:
        raise ValueError("arch= names the architecture of checkpoint files; the modules given are built already")
    given = Given(
        source,
        copy.deepcopy(model),  # a run moves its models to the device and trains them: the caller's stay as they are
        None if reference is None else copy.deepcopy(reference),
        _transform_for(model, transform, source),
    )
    names = {"arch": _label(model), "model": f"{_label(model)} (in memory)"}
    names["reference"] = None if reference is None else f"{_label(reference)} (in memory)"
    return names, given


def _given_paths(model: Any, reference: Any, arch: str | None, transform: Any, source: TorchSource | None):
    """(the options naming checkpoint files as the command line does, the ``Given`` holding the pool, if any)."""
    if isinstance(reference, nn.Module):
        raise ValueError("give model and reference both as modules or both as checkpoint paths")
    for role, value in (("model", model), ("reference", reference)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{role} must be an nn.Module or a checkpoint path, got {type(value).__name__}")
    if not arch:
        raise ValueError("checkpoint paths need arch= (their architecture, as --arch spells it)")
    if transform is not None and not isinstance(transform, str):
        raise ValueError("with checkpoint paths, transform= is --transform text (e.g. 'resize=36,crop=32')")
    names = {
        "arch": arch,
        "model": None if model is None else os.fspath(model),
        "reference": None if reference is None else os.fspath(reference),
        "transform": transform,
    }
    tensors = source is not None and source.gives_tensors
    return names, Given(source, transform=source.model_inputs() if tensors else None)


def _check_names(cls, extra: dict) -> None:
    """Refuse keyword options that are no field of ``cls``, naming the ones it takes."""
    unknown = sorted(set(extra) - _option_names(cls))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; {cls.__name__} takes: {', '.join(sorted(_option_names(cls)))}"
        )


@contextmanager
def _removed_on_failure(folder: tempfile.TemporaryDirectory | None) -> Iterator[None]:
    """A temporary run directory whose run failed is removed at once (the error holds on to it otherwise)."""
    try:
        yield
    except BaseException:
        if folder is not None:
            folder.cleanup()
        raise


def _out(out: str | os.PathLike | None):
    """(run directory, what keeps a temporary one alive)."""
    if out is not None:
        return os.fspath(out), None
    folder = tempfile.TemporaryDirectory(prefix="mimic-explorer-")
    return str(Path(folder.name) / "run"), folder


def score(
    model: nn.Module | str | os.PathLike,
    reference: nn.Module | str | os.PathLike,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    arch: str | None = None,
    transform: Any = None,
    params: str | Sequence[str] = "head",
    method: str = "proj",
    batch_size: int | None = None,
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Result:
    """Mimic scores of every sample of ``data`` for ``model`` against ``reference``, and Stage 2 — ``mimic-explorer
    score`` from Python.

    Parameters
    ----------
    model, reference
        Both ``nn.Module`` (labelled images: a classifier and its better reference, same architecture), or both
        checkpoint paths with ``arch=`` (any model the command line takes, dual encoders included).
    data
        A data SPEC (``"digits"``, ``"wds:…"``, …), a map-style torch ``Dataset`` of ``(image, target)`` items or dict
        rows (a Hugging Face ``datasets.Dataset``), or a ``DataLoader`` over one (its batch size is used; its order is
        not: a run reads by position). Images are PIL images, uint8 arrays or tensors; tensors reach the model as
        they are.
    out
        The run directory (reused when it holds this run, resumed when it holds it unfinished); None: a temporary
        one that lives as long as the result.
    arch
        The architecture of checkpoint paths (``--arch``).
    transform
        How pictures become inputs: for modules, a callable picture → tensor, an ``ImageTransform`` or a size in
        pixels (default: the ``input_size`` the model declares); for checkpoints, ``--transform`` text. Not with a
        dataset of tensors.
    params, method
        The mimic layers (``"head"``, ``"all"`` or parameter names) and ``"proj"`` or ``"cos"``.
    batch_size
        Samples per scoring batch (default: the DataLoader's, else 128).
    class_names, columns
        For a dataset in memory: its classes in label order, and which keys of dict items hold ``image``, ``label``,
        ``caption``, ``id`` (``data.torch_source``).
    progress
        Show progress bars.
    log
        Called with each line for the person running it (default: standard error).
    **options
        Any other field of ``ScoreOptions`` (``label_noise``, ``linear_probe``, ``device``, ``threads``,
        ``chunk_size``, ``binarisation``, ``force``, …).

    Returns
    -------
    Result
        ``.samples`` (``sample_id``, ``mimic_score``, ``keep``, baselines; ``index`` for a dataset in memory),
        ``.keep_mask``, ``.ranked()``, ``.path``, ``.summary``.

    Raises
    ------
    ValueError
        A bad argument or option, a model that does not fit the pool, or ``out`` holding another run (unless
        ``force=True``); one line, before anything is written.
    """
    spec, source, loader_batch = _pool(data, class_names, columns)
    if isinstance(model, nn.Module):
        names, given = _given_modules(model, reference, arch, transform, source)
    else:
        names, given = _given_paths(model, reference, arch, transform, source)
    if names["reference"] is None:
        raise ValueError("score needs a reference (the better model)")
    _check_names(ScoreOptions, options)
    run_dir, keep_alive = _out(out)
    params_text = params if isinstance(params, str) else ",".join(params)
    base = dict(
        data=spec,
        out=run_dir,
        params=params_text,
        score_method=method,
        batch_size=batch_size or loader_batch or 128,
        quiet=not progress,
        **names,
    )
    run_options = ScoreOptions(**{**base, **options})
    with _removed_on_failure(keep_alive):
        outcome = run_score(run_options, tqdm_progress() if progress else None, log, given=given)
    return Result(outcome, DatasetPositions.of_source(source), keep_alive=keep_alive)


def train(
    model: nn.Module | str | os.PathLike | None,
    reference: nn.Module | str | os.PathLike | None,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    arch: str | None = None,
    transform: Any = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int | None = None,
    class_names: Sequence[str] | None = None,
    columns: Mapping[str, str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Result:
    """Stage 1 on ``data`` — Grad-Mimic with a ``reference``, plain training without one — and Stage 2:
    ``mimic-explorer train`` from Python.

    Parameters
    ----------
    model
        The model to train: an ``nn.Module`` (a copy is trained; the one given is left as it is), or with ``arch=``
        a checkpoint path to start from (``--init``) or None (the architecture's fresh weights).
    reference
        The better model (an ``nn.Module`` with a module ``model``, a checkpoint path with ``arch=``), or None for
        plain training (how a reference is made).
    data, out, arch, transform, batch_size, class_names, columns, progress, log
        As for ``score``.
    epochs, lr
        The training schedule.
    **options
        Any other field of ``TrainOptions`` (``linear_probe``, ``label_noise``, ``method``, ``temperature``,
        ``weight_decay``, ``seed``, ``device``, ``threads``, ``force``, …).

    Returns
    -------
    Result
        As for ``score``, per-epoch scores in ``.run.scores``, and the trained model in ``.model``.

    Raises
    ------
    ValueError
        As for ``score``.
    """
    spec, source, loader_batch = _pool(data, class_names, columns)
    if isinstance(model, nn.Module):
        names, given = _given_modules(model, reference, arch, transform, source)
        names.pop("model")
    else:
        names, given = _given_paths(model, reference, arch, transform, source)
        names["init"] = names.pop("model")  # train starts from the checkpoint: --init
    _check_names(TrainOptions, options)
    run_dir, keep_alive = _out(out)
    saved = RunLayout(run_dir).trained_model  # read back when the run is found finished
    base = dict(
        data=spec,
        out=run_dir,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size or loader_batch or 128,
        quiet=not progress,
        save_model=str(saved),
        **names,
    )
    run_options = TrainOptions(**{**base, **options})
    with _removed_on_failure(keep_alive):
        outcome = run_train(run_options, tqdm_progress() if progress else None, log, given=given)
    result = Result(outcome, DatasetPositions.of_source(source), model_path=saved, keep_alive=keep_alive)
    result.model = _trained(given.model, saved, run_options, result.run.class_names)
    return result


def _trained(module: nn.Module | None, saved: Path, options: TrainOptions, classes: list[str]) -> nn.Module | None:
    """The trained weights read back into a model — the copy given, or ``arch`` rebuilt —, from the saved file
    whether the run trained now or was found finished in ``out``. None for a dual encoder (``model_path`` is its
    checkpoint, for ``arch=`` and ``init=`` of a later call)."""
    if not classes:
        return None
    if module is None:
        module = build_for_run(options.arch, len(classes), image_size=options.image_size, transform=options.transform)
        module = module.model
    load_checkpoint(module.cpu(), saved)
    return module.eval()
