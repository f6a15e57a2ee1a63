"""The embedded default: scikit-learn's digits with 30 % symmetric label noise, end to end.

Protocol (the valid one: model and reference share a feature basis): one seeded MLP init; the
reference trains from it on the *clean* labels; a plain run and a Grad-Mimic run (normed_proj, T = 1,
batch 32, AdamW) train from the same init on the *noisy* labels. Grad-Mimic records proj and weight for
every sample at every epoch; Stage 2 (weight ≥ 1/B per epoch, majority vote) gives ``mimic_score`` and
``keep``. Held-out digits measure test accuracy. CPU, seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mimic_explorer.commands.finalize import add_signals, add_stage2, evaluate, write_signal_arrays
from mimic_explorer.commands.lifecycle import Log, Prepared, RunContext, RunOutcome, run_lifecycle
from mimic_explorer.data.digits import ArrayDataset, load_digits_dataset
from mimic_explorer.data.noise import NoisyLabels, symmetric_noise
from mimic_explorer.models.small import MLP
from mimic_explorer.stage2 import votes as stage2
from mimic_explorer.store.sample_rows import samples_table
from mimic_explorer.store.thumbs import ThumbnailWriter
from mimic_explorer.training.batches import TensorBatches
from mimic_explorer.training.loop import TrainConfig, accuracy, clone_model, train
from mimic_explorer.training.recording import epoch_frame
from mimic_explorer.training.signals import evaluate_signals
from mimic_explorer.util.distributed import DistContext
from mimic_explorer.util.fingerprint import dataset_fingerprint, state_fingerprint
from mimic_explorer.util.progress import Progress
from mimic_explorer.util.threads import check_threads


@dataclass
class DemoConfig:
    """Settings of the demo run: label noise, held-out split, epochs, MLP width, Stage-1 method and seed. The defaults
    give a run of seconds on a CPU in which the mimic score visibly finds the flipped labels."""

    noise_rate: float = 0.3
    test_fraction: float = 0.2
    epochs: int = 20
    reference_epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    hidden: int = 128
    method: str = "normed_proj"
    temperature: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting (as the ``demo`` command spells it)."""
        checks = [
            (0.0 <= self.noise_rate < 1.0, f"--noise must be in [0, 1), got {self.noise_rate}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (0.0 < self.test_fraction < 1.0, f"test_fraction must be in (0, 1), got {self.test_fraction}"),
            (self.reference_epochs >= 1, f"reference_epochs must be >= 1, got {self.reference_epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class _DemoOptions:
    """The demo as a run (``commands.lifecycle.RunSpec``): where it goes and whether to recompute it."""

    command: ClassVar[str] = "demo"
    device: ClassVar[str] = "cpu"
    out: str
    config: DemoConfig = field(default_factory=DemoConfig)
    force: bool = False
    threads: int | None = None  # torch's intra-op threads (``util.threads``); not part of the run's identity

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting, before anything is written."""
        self.config.validate()
        if self.threads is not None:
            check_threads(self.threads, "--threads")

    def identity(self) -> dict:
        """The demo's settings and the command: what decides its numbers, so the run id changes with them."""
        return {"command": self.command, **asdict(self.config)}

    def to_dict(self) -> dict:
        """What ``meta.json`` records under ``config``: the settings, with the fixed data and architecture."""
        return {"data": "digits", "arch": "mlp", **asdict(self.config)}

    def describe(self) -> str:
        """One line for ``run.log``."""
        return "demo digits mlp"


@dataclass
class _DemoInputs:
    """The split, the noisy labels and the one init every model of the demo starts from."""

    pool: ArrayDataset
    test: ArrayDataset
    noisy: NoisyLabels  # of the pool
    class_names: list[str]
    init: MLP


DemoRun = RunContext[_DemoOptions, _DemoInputs]


def build_demo(
    out: str,
    config: DemoConfig | None = None,
    progress: Progress | None = None,
    *,
    force: bool = False,
    log: Log | None = None,
    threads: int | None = None,
) -> dict:
    """Write a complete demo run into ``out`` (or find it there already) and return its summary.

    The demo shows the whole tool in seconds on a CPU and needs nothing downloaded: the digits, label
    noise, a clean reference, a plain and a Grad-Mimic run from one init, Stage 2 and thumbnails.

    Parameters
    ----------
    out
        The run directory.
    config
        The demo's settings (default: ``DemoConfig()``).
    progress
        Called as ``progress(stage, done, total)`` as the work advances (default: nothing).
    force
        Recompute even when ``out`` already holds the demo (or holds another run).
    log
        Called with each line for the person running it (default: standard error).
    threads
        torch's intra-op threads for the run (default: ``MIMIC_EXPLORER_THREADS``, else the cores this
        process may use; ``util.threads``).

    Returns
    -------
    dict
        The run's summary (also in ``meta.json``): test accuracy of the reference, plain and Grad-Mimic
        models, the noisy-label detection metrics, and the estimated and true quality.

    Raises
    ------
    ValueError
        A bad setting in ``config``, or ``out`` holding a different run (unless ``force``).
    RunDirectoryError
        ``out`` cannot be used, or another process is writing it.
    """
    options = _DemoOptions(str(out), config or DemoConfig(), force, threads)
    outcome = run_lifecycle(options, _prepare, _run, resumable=False, progress=progress, log=log)
    return outcome.summary


def _prepare(options: _DemoOptions, ctx: DistContext, device: str) -> Prepared[_DemoInputs]:
    config = options.config
    torch.manual_seed(config.seed)
    data = load_digits_dataset()
    order = np.random.default_rng(config.seed).permutation(len(data))
    n_test = round(config.test_fraction * len(data))
    test, pool = data.subset(order[:n_test]), data.subset(np.sort(order[n_test:]))
    noisy = symmetric_noise(pool.labels, config.noise_rate, len(data.class_names), seed=config.seed)
    init = MLP(pool.images[0].size, len(data.class_names), (config.hidden,))
    fingerprints = {
        "data": dataset_fingerprint(pool.sample_ids, noisy.labels),
        "init": state_fingerprint(init.state_dict()),
    }
    facts = dict(
        class_names=data.class_names,
        source={"spec": "digits", "root": None},
        method=config.method,
        reference={"kind": "clean-label training from the same init", "epochs": config.reference_epochs},
        noise={
            "kind": "symmetric",
            "rate": config.noise_rate,
            "seed": config.seed,
            "flipped": int(noisy.is_noisy.sum()),
        },
        same_init=True,
        stage2={"binarisation": "weight", "aggregation": "majority"},
    )
    return Prepared(_DemoInputs(pool, test, noisy, list(data.class_names), init), fingerprints, facts)


def _run(run: DemoRun) -> RunOutcome:
    config, progress, writer, layout = run.options.config, run.progress, run.writer, run.layout
    pool, test, noisy, init = run.inputs.pool, run.inputs.test, run.inputs.noisy, run.inputs.init

    def as_inputs(images: np.ndarray) -> torch.Tensor:
        return torch.tensor(images.reshape(len(images), -1) / 255.0, dtype=torch.float32)

    x_pool, x_test = as_inputs(pool.images), as_inputs(test.images)
    y_noisy, y_clean, y_test = (torch.tensor(a) for a in (noisy.labels, noisy.true_labels, test.labels))

    base = dict(batch_size=config.batch_size, lr=config.lr, seed=config.seed)

    def stage(name: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(name, done, total)

    reference = clone_model(init)
    train(
        reference,
        TensorBatches(x_pool, y_clean, config.batch_size, config.seed + 1),
        TrainConfig(epochs=config.reference_epochs, **base),
        progress=stage("reference (clean labels)"),
    )
    plain = clone_model(init)
    train(
        plain,
        TensorBatches(x_pool, y_noisy, config.batch_size, config.seed),
        TrainConfig(epochs=config.epochs, **base),
        progress=stage("plain training (noisy labels)"),
    )

    model = clone_model(init)
    gm_config = TrainConfig(epochs=config.epochs, method=config.method, temperature=config.temperature, **base)
    parts: list[pd.DataFrame] = []

    def on_epoch(record) -> None:
        frame = epoch_frame(record, pool.sample_ids)
        writer.write_scores(layout.epoch_part(record.epoch), frame)
        parts.append(frame)

    result = train(
        model,
        TensorBatches(x_pool, y_noisy, config.batch_size, config.seed),
        gm_config,
        reference=reference,
        on_epoch=on_epoch,
        progress=stage("Grad-Mimic (noisy labels)"),
    )
    scores = pd.concat(parts, ignore_index=True)

    signals = evaluate_signals(model, reference, x_pool, y_noisy)
    samples = samples_table(
        pool.sample_ids, np.full(len(pool), pool.source), noisy.labels, noisy.true_labels, noisy.is_noisy
    )
    samples = add_signals(samples, signals, pool.sample_ids[signals["index"]])
    write_signal_arrays(layout, signals, signals["index"], len(samples))  # the pool is all good, in order
    probs = None
    if signals.get("reference_probs") is not None:
        given = np.asarray(signals["reference_probs"], dtype=np.float64)
        probs = np.full((len(samples), given.shape[1]), np.nan)
        probs[np.asarray(signals["index"], dtype=np.int64)] = given
    samples = add_stage2(samples, scores, "weight", "majority", reference_probs=probs)
    writer.write_samples(samples)

    with ThumbnailWriter(layout.root) as thumbs:
        from PIL import Image

        for i, (sample_id, image) in enumerate(zip(pool.sample_ids, pool.images, strict=True)):
            thumbs.add(sample_id, Image.fromarray(image, mode="L"))
            if i % 200 == 0 or i == len(pool) - 1:
                progress("thumbnails", i + 1, len(pool))

    quality = stage2.quality_estimate(samples["keep"].to_numpy())
    evaluation = evaluate(samples)
    summary = {
        "samples": len(samples),
        "epochs": config.epochs,
        "test_accuracy": {
            "reference": accuracy(reference, x_test, y_test),
            "plain": accuracy(plain, x_test, y_test),
            "grad_mimic": accuracy(model, x_test, y_test),
        },
        "estimated_quality": quality,
        "true_quality": float(1.0 - noisy.is_noisy.mean()),
        "detection": evaluation["mimic_score"],
    }
    writer.meta.fingerprints.update(
        reference_init=state_fingerprint(init.state_dict()), reference=state_fingerprint(reference.state_dict())
    )
    writer.meta.evaluation = evaluation
    writer.meta.timings["grad_mimic_s"] = result.seconds
    return run.outcome(summary)


def format_summary(summary: dict) -> str:
    """The demo's summary as the few lines ``mimic-explorer demo`` prints: test accuracy of the three models,
    noisy-label detection, estimated and true quality."""
    acc, det = summary["test_accuracy"], summary["detection"]
    return "\n".join(
        [
            f"samples: {summary['samples']}   epochs: {summary['epochs']}",
            (
                f"test accuracy   reference {acc['reference']:.3f}   plain {acc['plain']:.3f}   Grad-Mimic "
                f"{acc['grad_mimic']:.3f}"
            ),
            (
                f"noisy-label detection   AUROC {det['auroc']:.3f}   AP {det['ap']:.3f}   "
                f"precision {det['precision']:.3f}   recall {det['recall']:.3f}   F1 {det['f1']:.3f}"
            ),
            f"quality   estimated {summary['estimated_quality']:.3f}   true {summary['true_quality']:.3f}",
        ]
    )
