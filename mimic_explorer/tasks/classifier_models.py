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
from mimic_explorer.models.heads import find_head
from mimic_explorer.store.meta import read_checkpoint_sidecar
from mimic_explorer.tasks.base import Given, Models
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


def build_models(options, source: Source, device: str, given: Given | None = None) -> Models:
    """Model (+ ``--init`` or ``--pretrained``; score: + ``--model``), reference (+ ``--reference``,
    optional ``--reference-noise``) and the checks, all built by ``models.build.build_for_run`` (seeded
    with ``--seed``), which also decides the head and the preprocessing — or, with ``given`` models, the
    same checks of the models a caller built (``given_models``). A ``given`` transform replaces the
    preprocessing either way."""
    if given is not None and given.model is not None:
        return given_models(options, source, device, given)
    models = _built_models(options, source, device)
    if given is not None and given.transform is not None:
        check_decodable(source, given.transform)
        models.transform = given.transform
        models.description = {**models.description, "preprocessing": given.transform.describe()}
    return models


def _built_models(options, source: Source, device: str) -> Models:
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
        _add_reference_noise(reference, head_name, options)
        reference.eval()
        models.reference = reference.to(device)
        _check_feature_basis(options, models, reference_path)
    return models


def _add_reference_noise(reference: nn.Module, head_name: str, options) -> None:
    """``--reference-noise``: seeded Gaussian noise on the reference's head (a robustness probe)."""
    if options.reference_noise <= 0:
        return
    generator = torch.Generator().manual_seed(options.seed + 17)
    head = reference.get_submodule(head_name)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(options.reference_noise * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _first_input(source: Source, transform) -> torch.Tensor:
    """The model input of the pool's first readable sample, as a batch of one (to trace the head with)."""
    for i in range(min(len(source), 50)):
        try:
            return transform(source.load(i)).unsqueeze(0)
        except Exception:  # noqa: BLE001 - check_decodable has said whether any can be read
            continue
    raise ValueError(f"none of the first samples of {source.spec} could be decoded")


UNVERIFIED_INIT = (
    "model and reference were given in memory: no file records their initial weights, so a shared init cannot be "
    "verified (scores mean something only when both share a feature basis)"
)


def given_models(options, source: Source, device: str, given: Given) -> Models:
    """The model and reference a Python caller built (``Given``), checked as the built ones are: the head
    traced on the pool's first input and sized for its classes, the reference's backbone compared with the
    model's. No file records their initial weights, so a shared init cannot be verified (a note says so);
    the distance between the backbones is measured and warned about as for checkpoints."""
    model, transform = given.model, given.transform
    check_decodable(source, transform)
    example = _first_input(source, transform)
    head_name, head = find_head(model, example.to(next(model.parameters()).device))
    classes = len(source.class_names)
    if head.out_features != classes:
        raise ValueError(
            f"the model's head ({head_name}) has {head.out_features} outputs and the pool {classes} classes; "
            "model and pool must have the same classes"
        )
    scoring = bool(getattr(options, "model", None))
    described = {
        "arch": options.arch,
        "family": "in memory",
        "head": head_name,
        "preprocessing": transform.describe(),
        "preprocessing_source": "given",
    }
    models = Models(
        model.to(device),
        None,
        transform,
        arch=options.arch,
        input_shape=tuple(example.shape[1:]),
        class_names=list(source.class_names),
        head_name=head_name,
        init_fingerprint=None if scoring else state_fingerprint(model.state_dict()),
        notes=[UNVERIFIED_INIT] if given.reference is not None else [],
        description=described,
    )
    if given.reference is None:
        return models
    reference = given.reference
    _add_reference_noise(reference, head_name, options)
    models.reference = reference.eval().to(device)
    models.reference_fingerprint = state_fingerprint(reference.state_dict())
    distance = _backbone_distance(models.model, models.reference, head_name)
    models.basis = {"backbone_distance_at_start": distance}
    if options.linear_probe and distance > 1e-6:
        models.warnings.append(
            f"FEATURE BASIS: the reference's backbone differs from the model's frozen backbone (relative distance "
            f"{distance:.3g}); head-layer mimic scores assume a shared backbone and are not meaningful."
        )
    elif distance > DRIFT_WARNING:
        models.warnings.append(
            f"FEATURE BASIS: model and reference backbones are far apart (relative distance {distance:.2f} > "
            f"{DRIFT_WARNING}); head-layer scores may be no better than chance."
        )
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
