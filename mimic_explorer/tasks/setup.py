"""Prepare a run: the pool (with injected noise), the model (with its init) and the reference, and
the shared-feature-basis checks (see docs/ARCHITECTURE.md).

Models come from ``models.build.build_for_run``, which decides architecture, weights, head and
preprocessing together; the reference is the same architecture (``BuiltModel.twin()``) with its own
checkpoint loaded, head included.

Why the checks live here: whether head-layer mimic scores mean anything is decided before training
starts (same init? same frozen backbone?) and during it (backbone drift), and the answer must reach
``meta.json`` and the user's terminal, loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mimic_explorer.data.noise import CIFAR10_ASYMMETRIC, asymmetric_noise, symmetric_noise
from mimic_explorer.data.source import Source
from mimic_explorer.data.keep_lists import read_keep_list
from mimic_explorer.data.sources import open_source
from mimic_explorer.data.subset import restrict_to_keep_list
from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.util.fingerprint import state_fingerprint
from mimic_explorer.models.build import build_for_run, checkpoint_preprocessing_warning
from mimic_explorer.models.checkpoints import load_checkpoint
from mimic_explorer.commands.options import CommonOptions
from mimic_explorer.tasks.pairs_options import check_pool_options
from mimic_explorer.store.meta import read_checkpoint_sidecar

#: relative distance between model and reference backbones above which head scores are suspect
DRIFT_WARNING = 0.5


@dataclass
class Pool:
    source: Source
    labels: np.ndarray  # labels used for training (noisy when noise was injected)
    true_labels: np.ndarray | None
    is_noisy: np.ndarray | None
    noise: dict
    #: how ``--subset`` met the pool (``meta.json``'s ``subset``), None without one
    subset: dict | None = None
    #: what opening the pool found worth saying (listed ids the pool lacks): printed and kept in meta.json
    warnings: list[str] = field(default_factory=list)


def open_pool(options: CommonOptions) -> Pool:
    """Open ``--data``, keep only the samples ``--subset`` lists (``data.subset``: every command reads
    the restricted pool, and nothing outside it is decoded) and inject ``--label-noise`` (seeded) into
    what is left, recording the truth. Shard indexes live in the shared cache: built once per shard,
    reused by every run."""
    source = open_source(options.data)
    check_pool_options(options, source.pool_kind)  # image-text pairs: pipeline/pairs_options.py
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
        noise = {"kind": options.noise_type, "rate": options.label_noise, "seed": options.noise_seed,
                 "flipped": int(is_noisy.sum())}
    if subset is None:
        return Pool(source, labels, true_labels, is_noisy, noise)
    return Pool(source, labels, true_labels, is_noisy, noise, subset.facts, subset.warnings)


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


def backbone_state(model: nn.Module, head_name: str) -> dict[str, torch.Tensor]:
    prefix = head_name + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix) and v.is_floating_point()}


def backbone_distance(model: nn.Module, reference: nn.Module, head_name: str) -> float:
    """‖θ_backbone − θ_ref_backbone‖ / ‖θ_ref_backbone‖ (0 for a shared frozen backbone)."""
    a, b = backbone_state(model, head_name), backbone_state(reference, head_name)
    num = sum(float(((a[k].float().cpu() - b[k].float().cpu()) ** 2).sum()) for k in b if k in a)
    den = sum(float((b[k].float() ** 2).sum()) for k in b)
    return (num / den) ** 0.5 if den > 0 else 0.0


@dataclass
class Models:
    model: nn.Module
    reference: nn.Module | None
    head_name: str
    transform: ImageTransform
    #: fingerprint of the weights the model started from: after ``--init`` for train; for score the
    #: init the scored ``--model`` was trained from (its sidecar's), None when unknown
    init_fingerprint: str | None
    class_names: list[str] = field(default_factory=list)
    reference_fingerprint: str | None = None
    reference_init_fingerprint: str | None = None
    load_reports: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: which defaults were assumed (e.g. the input size of a ``file.py:function`` model): stderr and run.log
    notes: list[str] = field(default_factory=list)
    #: ``BuiltModel.describe()`` (architecture, head, preprocessing and its source, weights, load report)
    description: dict = field(default_factory=dict)
    input_shape: tuple[int, int, int] = (3, 32, 32)
    basis: dict = field(default_factory=dict)
    #: whether model and reference started from the same weights; None when that was not compared
    #: (no reference, a reference or model without its init fingerprint, or a linear probe)
    same_init: bool | None = None

    @property
    def preprocessing(self) -> dict:
        """What the model is fed (``ImageTransform.describe()``): meta.json, the checkpoint sidecar."""
        return self.transform.describe()


def _companion_checkpoints(options: CommonOptions) -> list[tuple[str, str]]:
    """The checkpoints a run uses beside ``--init`` (score's ``--model``, then ``--reference``), as
    (flag, path): the first that records its preprocessing supplies it when the init records none."""
    pairs = (("--model", getattr(options, "model", None)), ("--reference", options.reference))
    return [(flag, path) for flag, path in pairs if path]


def _load_same_model(model: nn.Module, path: str, flag: str, head_name: str, options: CommonOptions, classes: int):
    """Load ``path`` (``--reference`` or score's ``--model``) whole into ``model``: the same architecture
    trained on the same classes, so its head must load too."""
    report = load_checkpoint(model, path, trust_pickle=options.trust_pickle, head=head_name)
    if not report.head_loaded:
        raise ValueError(
            f"{flag} {path} does not fit {options.arch} for {classes} classes: its head ({head_name}) was not "
            f"loaded; {flag} must be the same architecture trained on the same classes"
        )
    return report


def build_models(options: CommonOptions, source: Source, device: str) -> Models:
    """Model (+ ``--init`` or ``--pretrained``; score: + ``--model``), reference (+ ``--reference``,
    optional ``--reference-noise``) and the checks, all built by ``models.build.build_for_run`` (seeded
    with ``--seed``), which also decides the head and the preprocessing."""
    num_classes = len(source.class_names)
    torch.manual_seed(options.seed)
    built = build_for_run(options.arch, num_classes, init=options.init, pretrained=bool(options.pretrained),
                          image_size=options.image_size, transform=options.transform,
                          trust_pickle=options.trust_pickle, adopt_from=_companion_checkpoints(options))
    check_decodable(source, built.transform)
    model, head_name = built.model, built.head_name
    reports = {("init" if options.init else "weights"): built.load_report.to_dict()} if built.load_report else {}
    init_fp = state_fingerprint(model.state_dict())
    scored = getattr(options, "model", None)
    warnings = list(built.warnings)
    for flag, path in [("--model", scored), ("--reference", options.reference)]:
        warning = checkpoint_preprocessing_warning(path, built.transform, flag) if path else None
        if warning and warning not in warnings:
            warnings.append(warning)
    if scored:
        reports["model"] = _load_same_model(model, scored, "--model", head_name, options, num_classes).to_dict()
        init_fp = read_checkpoint_sidecar(scored).get("init_fingerprint")
    models = Models(model.to(device), None, head_name, built.transform, init_fp, list(source.class_names),
                    load_reports=reports, warnings=warnings, notes=list(built.notes),
                    description={**built.describe(), "notes": list(built.notes)}, input_shape=built.input_shape)
    reference_path = options.reference
    if reference_path:
        reference = built.twin()
        report = _load_same_model(reference, reference_path, "--reference", head_name, options, num_classes)
        reports["reference"] = report.to_dict()
        models.reference_fingerprint = state_fingerprint(reference.state_dict())
        if options.reference_noise > 0:
            generator = torch.Generator().manual_seed(options.seed + 17)
            head = reference.get_submodule(head_name)
            with torch.no_grad():
                for p in head.parameters():
                    p.add_(options.reference_noise * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        reference.eval()
        models.reference = reference.to(device)
        _check_feature_basis(options, models, reference_path)
    return models


def _check_feature_basis(options: CommonOptions, models: Models, reference_path: str) -> None:
    side = read_checkpoint_sidecar(reference_path)
    models.reference_init_fingerprint = side.get("init_fingerprint")
    distance = backbone_distance(models.model, models.reference, models.head_name)
    models.basis = {"backbone_distance_at_start": distance, "reference_init_fingerprint": models.reference_init_fingerprint,
                    "model_init_fingerprint": models.init_fingerprint}
    if options.linear_probe:
        if distance > 1e-6:
            models.warnings.append(
                f"FEATURE BASIS: the reference's backbone differs from the model's frozen backbone (relative "
                f"distance {distance:.3g}); head-layer mimic scores assume a shared backbone and are not meaningful. "
                "Train the reference as a linear probe on the same --init."
            )
        return
    if models.reference_init_fingerprint is not None and models.init_fingerprint is not None:
        models.same_init = models.reference_init_fingerprint == models.init_fingerprint
    unknown = "reference's" if models.reference_init_fingerprint is None else (
        "scored model's" if models.init_fingerprint is None else None)
    if unknown:
        models.warnings.append(
            f"FEATURE BASIS: the {unknown} initial weights are unknown (no .meta.json beside it), so a shared "
            "init cannot be verified; scores are only meaningful if model and reference started from the same weights."
        )
    elif models.reference_init_fingerprint != models.init_fingerprint:
        models.warnings.append(
            "FEATURE BASIS: the reference was trained from DIFFERENT initial weights than this model "
            f"(init {models.reference_init_fingerprint} vs {models.init_fingerprint}); head-layer mimic scores "
            "are not meaningful (measured: AUROC 0.05, inverted, on digits). Start both from the same --init."
        )
    if distance > DRIFT_WARNING:
        models.warnings.append(
            f"FEATURE BASIS: model and reference backbones are far apart (relative distance {distance:.2f} > "
            f"{DRIFT_WARNING}); head-layer scores may be no better than chance."
        )


@dataclass
class RunInputs:
    """What ``train`` and ``score`` prepare before their run directory is touched."""

    pool: Pool
    models: Models


def model_facts(models: Models) -> dict:
    """The ``RunMeta`` fields both commands record about their models."""
    return dict(model=models.description, load_reports=models.load_reports, basis=models.basis, same_init=models.same_init)


def pool_fingerprints(pool: Pool) -> dict[str, str]:
    """Fingerprints of the pool's data and of the labels the run uses (noisy ones when injected), and
    with ``--subset`` the keep-list's content hash (the same ids in any file format: the same run)."""
    found = {"data": pool.source.fingerprint(), "labels": state_fingerprint({"l": torch.from_numpy(pool.labels)})}
    if pool.subset is not None:
        found["subset"] = pool.subset["sha256"]
    return found
