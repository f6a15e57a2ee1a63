"""Build an image-text run's dual encoders — from dual checkpoints, an image classifier's weights, the
reference itself or fresh — and check that model and reference share their towers.

Where a ``train`` model's weights come from:

- ``--init`` a dual-encoder checkpoint (``models.dual_checkpoint``): every weight, tokenizer included;
- ``--init`` an image classifier checkpoint: the image tower (the text tower and the tokenizer are
  built fresh from the pool's captions, seeded by ``--seed``);
- no ``--init`` but a ``--reference``: the reference itself with the mimic layer's projection freshly
  initialised — model and reference then share one feature basis (the towers) and one joint
  embedding space (the other projection), the valid protocol for projection-layer mimic scores (a
  reference trained on clean pairs plays the public checkpoint);
- neither: a fresh built-in dual encoder (vocabulary from the pool's captions).

A fresh model's projections, and any model's with ``--fresh-projections``, are set by
``models.dual.reset_projections`` from ``--seed``: a checkpoint trained from fresh projections and a
later frozen-tower run with ``--fresh-projections`` and the same seed start from the same values.
``score`` rebuilds two finished checkpoints. A checkpoint never names code to run
(``models.dual_checkpoint``); everything here runs before the run directory is touched, so a bad
checkpoint or a reference of another shape writes nothing.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from mimic_explorer.data.transforms import ImageTransform, default_transform
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.distance import DRIFT_WARNING, outside_params, relative_distance
from mimic_explorer.models.dual import (
    MIMIC_LAYERS,
    DualEncoder,
    mimic_layer_params,
    reset_projections,
    tower_differences,
)
from mimic_explorer.models.dual_checkpoint import load_dual_encoder, read_dual_checkpoint
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip
from mimic_explorer.tasks.base import Models

#: ``--arch small_dual[:IMAGE_ARCH]``: the built-in dual encoder (``models.small_dual``)
SMALL_DUAL = "small_dual"
#: the tower whose projection is the mimic layer when neither ``--mimic-layer`` nor ``--params`` names one
DEFAULT_MIMIC_LAYER = "text"
#: the image ARCH of ``--arch small_dual`` when neither the ARCH nor an ``--init`` dual checkpoint names one
DEFAULT_IMAGE_ARCH = "small_cnn"


def tower_distance(model: nn.Module, reference: nn.Module, mimic: list[str]) -> float:
    """‖θ − θ_ref‖ / ‖θ_ref‖ over every floating tensor outside the mimic layers (0: shared towers)."""
    return relative_distance(model, reference, outside_params(mimic))


def saved_arch(arch: str) -> str | None:
    """``--arch`` as a dual-encoder checkpoint records it: ``small_dual`` → None (any built-in model;
    the file says which image ARCH), ``small_dual:IMAGE_ARCH`` → IMAGE_ARCH, ``open_clip:NAME`` and a
    plain image ARCH (the built-in model around it, as ``models.dual_registry`` reads it) as they are."""
    family, _, name = arch.strip().partition(":")
    if family.lower() == SMALL_DUAL:
        return name.strip() or None
    return arch.strip()


def load_pair_model(
    path: str, arch: str, flag: str, input_shape=None, trust_code: bool = False
) -> tuple[DualEncoder, dict]:
    """(model, its saved config) from a ``models.dual_checkpoint`` file; errors name ``flag``. With a
    bare ``--arch small_dual`` the file's own image ARCH is built, never one that names code to import
    unless ``trust_code`` (``--trust-checkpoint``)."""
    try:
        model, config = load_dual_encoder(path, arch=saved_arch(arch), input_shape=input_shape, trust_code=trust_code)
    except CheckpointError as exc:
        if not is_open_clip(arch):
            raise CheckpointError(f"{flag} {exc}") from None
        model = _native_open_clip(path, arch, flag)  # e.g. a released CLIP's state dict
        config = {"arch": arch.strip(), "input_shape": list(model.input_shape)}
    if saved_arch(arch) is None and is_open_clip(config["arch"]):
        raise CheckpointError(
            f"{flag} {path} holds an {config['arch']} model, not the built-in small_dual; pass --arch {config['arch']}"
        )
    return model, config


def _native_open_clip(path: str, arch: str, flag: str) -> DualEncoder:
    """An open_clip model from a state dict in open_clip's own names (not saved by this package)."""
    try:
        return build_dual_encoder(arch, init=path)
    except CheckpointError as exc:
        raise CheckpointError(f"{flag} {exc}") from None


def dual_transform(model: DualEncoder, config: dict) -> ImageTransform:
    """The preprocessing the model expects: open_clip's own (its ``preprocess_cfg``, else OpenAI CLIP's
    mean/std, bicubic), the image ARCH's default for the built-in model, at the saved input size."""
    size = int(config["input_shape"][-1])
    if is_open_clip(config["arch"]):
        cfg = getattr(getattr(getattr(model, "clip", None), "visual", None), "preprocess_cfg", None) or {}
        return ImageTransform(
            size,
            size,
            tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )
    base = default_transform(config["arch"])
    return base if base.crop == size else replace(base, resize=size, crop=size)


def _check_same_tokenizer(model: nn.Module, reference: nn.Module, options) -> None:
    """The same token id must mean the same word to both models."""
    vocab = "text_tower.vocabulary"
    ours, theirs = model.state_dict(), reference.state_dict()
    if vocab in ours and not torch.equal(ours[vocab], theirs[vocab]):
        raise CheckpointError(
            f"--reference {options.reference} and --model {options.model} have different vocabularies "
            "(the same token id would mean different words); build both from one tokenizer"
        )


def pair_mimic_params(options, model) -> list[str] | str:
    """The scored parameters of a dual encoder: ``--mimic-layer``'s projection, ``--params`` names
    (or ``all``), or — when neither names one (``--params head``) — the default tower's projection."""
    from mimic_explorer.models.dual import mimic_layer_params

    layer = getattr(options, "mimic_layer", None)
    if layer is None and options.params == "head":
        layer = DEFAULT_MIMIC_LAYER
    params = layer if layer is not None else options.mimic_params()
    return params if params == "all" else mimic_layer_params(model, params)


def build_pair_models(options, device: str) -> Models:
    """Model and reference from ``--model`` / ``--reference`` (``models.dual_checkpoint`` files), the
    mimic layers, and the feature-basis check on everything outside the projections."""
    model, config = load_pair_model(options.model, options.arch, "--model", trust_code=options.trust_pickle)
    reference, _ = load_pair_model(
        options.reference, config["arch"], "--reference", config["input_shape"], trust_code=options.trust_pickle
    )
    _check_same_tokenizer(model, reference, options)
    params = pair_mimic_params(options, model)
    mimic = [n for n, _ in model.named_parameters()] if params == "all" else list(params)
    distance = tower_distance(model, reference, mimic)
    differing = tower_differences(model, reference)
    warnings = []
    if differing and distance > DRIFT_WARNING:
        warnings.append(
            f"FEATURE BASIS: model and reference towers differ ({len(differing)} tensor(s), e.g. {differing[0]}; "
            f"relative distance {distance:.2f} > {DRIFT_WARNING}); projection-layer scores assume shared towers "
            "and may be no better than chance."
        )
    return Models(
        model.to(device).eval(),
        reference.to(device).eval(),
        dual_transform(model, config),
        arch=config["arch"],
        input_shape=tuple(config["input_shape"]),
        mimic_layers=params,
        warnings=warnings,
        basis={"tower_distance": distance, "towers_differ": len(differing)},
    )


def _is_dual_checkpoint(path: str) -> bool:
    try:
        read_dual_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _fresh_projection(model: DualEncoder, layer: str, seed: int) -> DualEncoder:
    """``model`` with the ``layer`` tower's projection re-initialised (seeded). The other projection
    and the logit scale stay the reference's, so the model's joint embedding space starts aligned with
    the reference's: a direction toward the reference on the mimic layer then means the same thing
    for both (fresh projections on both towers would leave the model's space an arbitrary rotation of
    the reference's — unless they are the very values the reference's own training started from,
    which ``--fresh-projections`` gives for a reference trained from fresh projections)."""
    return reset_projections(model, [layer], seed)


def _input_shape(options) -> tuple[int, int, int]:
    size = options.image_size or 32
    return (3, size, size)


def _build_model(
    options, captions: list[str], reference: DualEncoder | None, reference_config: dict | None
) -> tuple[DualEncoder, dict, list[str]]:
    """(model, its config {arch, input_shape}, notes) from the sources the module docstring lists."""
    image_arch = saved_arch(options.arch)
    if options.init and (
        is_open_clip(options.arch) or _is_dual_checkpoint(options.init)
    ):  # a string test first: no second read of an open_clip file
        model, config = load_pair_model(options.init, options.arch, "--init", trust_code=options.trust_pickle)
        return model, config, []
    if options.init is None and reference is not None:
        layer = options.mimic_layer or DEFAULT_MIMIC_LAYER
        model = _fresh_projection(copy.deepcopy(reference), layer, options.seed)
        note = (
            f"the model starts from --reference {options.reference} with a fresh {layer} projection (one shared "
            "feature basis)"
        )
        return model, dict(reference_config), [note]
    if image_arch is None or is_open_clip(image_arch):
        if image_arch is not None:
            raise CheckpointError(f"--arch {options.arch} needs an --init checkpoint (weights of the towers)")
        image_arch = DEFAULT_IMAGE_ARCH
    shape = _input_shape(options)
    torch.manual_seed(options.seed)
    model = build_dual_encoder(
        image_arch, init=options.init, captions=captions, input_shape=shape, trust_pickle=options.trust_pickle
    )
    return (
        reset_projections(model, list(MIMIC_LAYERS), options.seed),
        {"arch": image_arch, "input_shape": list(shape)},
        [],
    )


def build_train_pair_models(options, captions: list[str], device: str) -> Models:
    """Model and (with ``--reference``) reference of a pairs ``train`` run, and the feature-basis check.
    ``captions``: the texts a fresh model's vocabulary is read from."""
    reference, reference_config = None, None
    if options.reference:
        reference, reference_config = load_pair_model(
            options.reference, options.arch, "--reference", trust_code=options.trust_pickle
        )
    model, config, notes = _build_model(options, captions, reference, reference_config)
    if options.fresh_projections:
        reset_projections(model, list(MIMIC_LAYERS), options.seed)
        notes.append(f"both projections re-initialised from --seed {options.seed} (--fresh-projections)")
    warnings = []
    basis: dict = {}
    if reference is not None:
        vocab = "text_tower.vocabulary"
        ours, theirs = model.state_dict(), reference.state_dict()
        if vocab in ours and (vocab not in theirs or not torch.equal(ours[vocab], theirs[vocab])):
            raise CheckpointError(
                f"--reference {options.reference} has another vocabulary than the model (the same "
                "token id would mean different words); start the model from the reference's towers "
                "(no --init) or from the dual checkpoint the reference was trained from"
            )
        differing = tower_differences(model, reference)
        basis = {"towers_differ": len(differing)}
        if differing:
            warnings.append(
                f"FEATURE BASIS: model and reference towers differ ({len(differing)} tensor(s), e.g. "
                f"{differing[0]}); projection-layer mimic scores assume one shared feature basis and may be "
                "no better than chance (start the model from the reference: no --init)"
            )
    layer = options.mimic_layer or DEFAULT_MIMIC_LAYER
    mimic_layer_params(model, layer)  # an unknown layer fails here, before anything is written
    shape = tuple(int(s) for s in config["input_shape"])
    return Models(
        model.to(device),
        None if reference is None else reference.to(device).eval(),
        dual_transform(model, config),
        arch=config["arch"],
        input_shape=shape,
        mimic_layers=layer,
        warnings=warnings,
        notes=notes,
        basis=basis,
    )
