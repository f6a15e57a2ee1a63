"""Prepare a run: the pool (with injected noise), the model (with its init) and the reference, and
the shared-feature-basis checks (see docs/ARCHITECTURE.md).

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
from mimic_explorer.data.sources import open_source
from mimic_explorer.data.transforms import default_transform
from mimic_explorer.fingerprint import state_fingerprint
from mimic_explorer.models.checkpoints import load_checkpoint
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.registry import build_model
from mimic_explorer.pipeline.options import CommonOptions
from mimic_explorer.pipeline.pairs_options import check_pool_options
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


def open_pool(options: CommonOptions) -> Pool:
    """Open ``--data`` and inject ``--label-noise`` (seeded), recording the truth. Shard indexes live
    in the shared cache: built once per shard, reused by every run."""
    source = open_source(options.data)
    check_pool_options(options, source.pool_kind)  # image-text pairs: pipeline/pairs_options.py
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
    return Pool(source, labels, true_labels, is_noisy, noise)


def input_shape(source: Source, transform) -> tuple[int, ...]:
    """(C, H, W) the model will see, from the first decodable sample."""
    for i in range(min(len(source), 50)):
        try:
            return tuple(transform(source.load(i)).shape)
        except Exception:  # noqa: BLE001 - a bad first file must not decide the shape
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
    transform: object
    init_fingerprint: str
    class_names: list[str] = field(default_factory=list)
    reference_fingerprint: str | None = None
    reference_init_fingerprint: str | None = None
    load_reports: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    basis: dict = field(default_factory=dict)
    #: whether model and reference started from the same weights; None when that was not compared
    #: (no reference, a reference without its init fingerprint, or a linear probe)
    same_init: bool | None = None


def build_models(options: CommonOptions, source: Source, device: str) -> Models:
    """Model (+ ``--init``), reference (+ ``--reference``, optional ``--reference-noise``) and checks."""
    transform = default_transform(options.arch)
    shape = input_shape(source, transform)
    torch.manual_seed(options.seed)
    num_classes = len(source.class_names)
    model = build_model(options.arch, num_classes, input_shape=shape)
    head_name, _ = find_head(model, torch.zeros(1, *shape))
    reports = {}
    if options.init:
        reports["init"] = load_checkpoint(model, options.init, trust_pickle=options.trust_pickle).to_dict()
    init_fp = state_fingerprint(model.state_dict())
    models = Models(model.to(device), None, head_name, transform, init_fp, list(source.class_names), load_reports=reports)
    reference_path = options.reference
    if reference_path:
        reference = build_model(options.arch, num_classes, input_shape=shape)
        report = load_checkpoint(reference, reference_path, trust_pickle=options.trust_pickle)
        if not report.head_loaded:
            raise ValueError(
                f"reference {reference_path} does not fit {options.arch} for {num_classes} classes: its head "
                f"({head_name}) was not loaded; a reference must be the same architecture trained on the same classes"
            )
        reports["reference"] = report.to_dict()
        models.reference_fingerprint = state_fingerprint(reference.state_dict())
        if options.reference_noise > 0:
            generator = torch.Generator().manual_seed(options.seed + 17)
            head = dict(reference.named_modules())[head_name]
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
    if models.reference_init_fingerprint is not None:
        models.same_init = models.reference_init_fingerprint == models.init_fingerprint
    if models.reference_init_fingerprint is None:
        models.warnings.append(
            "FEATURE BASIS: the reference's initial weights are unknown (no .meta.json beside it), so a shared "
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


def pool_fingerprints(pool: Pool) -> dict[str, str]:
    """Fingerprints of the pool's data and of the labels the run uses (noisy ones when injected)."""
    return {"data": pool.source.fingerprint(), "labels": state_fingerprint({"l": torch.from_numpy(pool.labels)})}
