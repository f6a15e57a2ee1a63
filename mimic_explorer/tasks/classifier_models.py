"""Build a classifier run's model and reference, and check that they share a feature basis.

Models come from ``models.build.build_for_run``, which decides architecture, weights, head and
preprocessing together; the reference is the same architecture (``BuiltModel.twin()``) with its own
checkpoint loaded, head included.

Why the checks live here: whether head-layer mimic scores mean anything is decided before training
starts (same init? same frozen backbone?) and during it (backbone drift, ``training.drift``), and the
answer must reach ``meta.json`` and the user's terminal, loudly.
"""

from __future__ import annotations

import torch
from torch import nn

from mimic_explorer.data.pool import check_decodable
from mimic_explorer.data.source import Source
from mimic_explorer.models.build import build_for_run, checkpoint_preprocessing_warning
from mimic_explorer.models.checkpoints import load_checkpoint
from mimic_explorer.models.distance import DRIFT_WARNING, outside_head, relative_distance
from mimic_explorer.store.meta import read_checkpoint_sidecar
from mimic_explorer.tasks.base import Models
from mimic_explorer.util.fingerprint import state_fingerprint


def _backbone_distance(model: nn.Module, reference: nn.Module, head_name: str) -> float:
    """‖θ_backbone − θ_ref_backbone‖ / ‖θ_ref_backbone‖ (0 for a shared frozen backbone)."""
    return relative_distance(model, reference, outside_head(head_name))


def _companion_checkpoints(options) -> list[tuple[str, str]]:
    """The checkpoints a run uses beside ``--init`` (score's ``--model``, then ``--reference``), as
    (flag, path): the first that records its preprocessing supplies it when the init records none."""
    pairs = (("--model", getattr(options, "model", None)), ("--reference", options.reference))
    return [(flag, path) for flag, path in pairs if path]


def _load_same_model(model: nn.Module, path: str, flag: str, head_name: str, options, classes: int):
    """Load ``path`` (``--reference`` or score's ``--model``) whole into ``model``: the same architecture
    trained on the same classes, so its head must load too."""
    report = load_checkpoint(model, path, trust_pickle=options.trust_pickle, head=head_name)
    if not report.head_loaded:
        raise ValueError(
            f"{flag} {path} does not fit {options.arch} for {classes} classes: its head ({head_name}) was not "
            f"loaded; {flag} must be the same architecture trained on the same classes"
        )
    return report


def build_models(options, source: Source, device: str) -> Models:
    """Model (+ ``--init`` or ``--pretrained``; score: + ``--model``), reference (+ ``--reference``,
    optional ``--reference-noise``) and the checks, all built by ``models.build.build_for_run`` (seeded
    with ``--seed``), which also decides the head and the preprocessing."""
    num_classes = len(source.class_names)
    torch.manual_seed(options.seed)
    built = build_for_run(
        options.arch,
        num_classes,
        init=options.init,
        pretrained=bool(options.pretrained),
        image_size=options.image_size,
        transform=options.transform,
        trust_pickle=options.trust_pickle,
        adopt_from=_companion_checkpoints(options),
    )
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
    models = Models(
        model.to(device),
        None,
        built.transform,
        arch=options.arch,
        input_shape=built.input_shape,
        class_names=list(source.class_names),
        head_name=head_name,
        init_fingerprint=init_fp,
        load_reports=reports,
        warnings=warnings,
        notes=list(built.notes),
        description={**built.describe(), "notes": list(built.notes)},
    )
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


def _check_feature_basis(options, models: Models, reference_path: str) -> None:
    side = read_checkpoint_sidecar(reference_path)
    models.reference_init_fingerprint = side.get("init_fingerprint")
    distance = _backbone_distance(models.model, models.reference, models.head_name)
    models.basis = {
        "backbone_distance_at_start": distance,
        "reference_init_fingerprint": models.reference_init_fingerprint,
        "model_init_fingerprint": models.init_fingerprint,
    }
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
    unknown = (
        "reference's"
        if models.reference_init_fingerprint is None
        else ("scored model's" if models.init_fingerprint is None else None)
    )
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


def model_facts(models: Models) -> dict:
    """The ``RunMeta`` fields both commands record about their models."""
    return dict(
        model=models.description, load_reports=models.load_reports, basis=models.basis, same_init=models.same_init
    )
