"""Prepare a ``score`` run on an image-text pool: the captions (with ``--caption-noise`` swapped), the
model and reference dual encoders rebuilt from their checkpoints, the mimic layer, and the checks.

Why apart from ``pipeline/setup.py``: a pairs pool has no classes and its models are dual encoders
rebuilt from ``models.dual_checkpoint`` files, not classifiers sized by a class count; what the two
kinds share (opening the pool, the lifecycle) is reused as it is. Everything here runs before the run
directory is touched, so a bad checkpoint or a reference of another shape writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from mimic_explorer.data.noise import caption_noise
from mimic_explorer.util.fingerprint import state_fingerprint
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.data.transforms import ImageTransform, default_transform
from mimic_explorer.models.dual import DualEncoder, tower_differences
from mimic_explorer.models.dual_checkpoint import load_dual_encoder
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip
from mimic_explorer.commands.lifecycle import Prepared
from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.tasks.pairs_options import SMALL_DUAL, pair_mimic_params
from mimic_explorer.tasks.setup import DRIFT_WARNING, Pool, pool_fingerprints


@dataclass
class PairCaptions:
    """The captions the run pairs with the images (after ``--caption-noise``) and the truth."""

    captions: np.ndarray  # object array of str, one per pool position
    true_captions: np.ndarray
    is_noisy: np.ndarray | None  # None when no noise was injected (the truth is unknown)
    noise: dict


@dataclass
class PairModels:
    model: DualEncoder
    reference: DualEncoder
    arch: str  # as the checkpoint records it: an image ARCH (the built-in model) or open_clip:NAME
    input_shape: tuple[int, int, int]
    transform: object
    params: list[str] | str  # the mimic layers as the scorer takes them
    warnings: list[str] = field(default_factory=list)
    basis: dict = field(default_factory=dict)


@dataclass
class PairInputs:
    """What a pairs ``score`` run prepares before its run directory is touched."""

    pool: Pool
    captions: PairCaptions
    models: PairModels


def pair_captions(pool: Pool, rate: float, seed: int) -> PairCaptions:
    """The pool's captions, ``int(rate · N)`` of them swapped among themselves (a seeded derangement)."""
    true_captions = pool.source.captions
    if not rate:
        return PairCaptions(true_captions, true_captions, None, {})
    noisy = caption_noise(len(true_captions), rate, seed)
    noise = {"kind": "caption_swap", "rate": rate, "seed": seed, "swapped": int(noisy.is_noisy.sum())}
    return PairCaptions(true_captions[noisy.order], true_captions, noisy.is_noisy, noise)


def _check_same_tokenizer(model: nn.Module, reference: nn.Module, options: ScoreOptions) -> None:
    """The same token id must mean the same word to both models."""
    vocab = "text_tower.vocabulary"
    ours, theirs = model.state_dict(), reference.state_dict()
    if vocab in ours and not torch.equal(ours[vocab], theirs[vocab]):
        raise CheckpointError(f"--reference {options.reference} and --model {options.model} have different vocabularies "
                              "(the same token id would mean different words); build both from one tokenizer")


def tower_distance(model: nn.Module, reference: nn.Module, mimic: list[str]) -> float:
    """‖θ − θ_ref‖ / ‖θ_ref‖ over every floating tensor outside the mimic layers (0: shared towers)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    keep = [k for k in theirs if k not in mimic and theirs[k].is_floating_point()]
    num = sum(float(((ours[k].double().cpu() - theirs[k].double().cpu()) ** 2).sum()) for k in keep)
    den = sum(float((theirs[k].double() ** 2).sum()) for k in keep)
    return (num / den) ** 0.5 if den > 0 else 0.0


def saved_arch(arch: str) -> str | None:
    """``--arch`` as a dual-encoder checkpoint records it: ``small_dual`` → None (any built-in model;
    the file says which image ARCH), ``small_dual:IMAGE_ARCH`` → IMAGE_ARCH, ``open_clip:NAME`` and a
    plain image ARCH (the built-in model around it, as ``models.dual_registry`` reads it) as they are."""
    family, sep, name = arch.strip().partition(":")
    if family.lower() == SMALL_DUAL:
        return name.strip() or None
    return arch.strip()


def load_pair_model(path: str, arch: str, flag: str, input_shape=None, trust_code: bool = False) -> tuple[DualEncoder, dict]:
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
        raise CheckpointError(f"{flag} {path} holds an {config['arch']} model, not the built-in small_dual; pass --arch {config['arch']}")
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
        return ImageTransform(size, size, tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                              tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
                              interpolation=str(cfg.get("interpolation", "bicubic")))
    base = default_transform(config["arch"])
    return base if base.crop == size else replace(base, resize=size, crop=size)


def build_pair_models(options: ScoreOptions, device: str) -> PairModels:
    """Model and reference from ``--model`` / ``--reference`` (``models.dual_checkpoint`` files), the
    mimic layers, and the feature-basis check on everything outside the projections."""
    model, config = load_pair_model(options.model, options.arch, "--model", trust_code=options.trust_pickle)
    reference, _ = load_pair_model(options.reference, config["arch"], "--reference", config["input_shape"],
                                   trust_code=options.trust_pickle)
    _check_same_tokenizer(model, reference, options)
    params = pair_mimic_params(options, model)
    mimic = [n for n, _ in model.named_parameters()] if params == "all" else list(params)
    distance = tower_distance(model, reference, mimic)
    differing = tower_differences(model, reference)
    warnings = []
    if differing and distance > DRIFT_WARNING:
        warnings.append(f"FEATURE BASIS: model and reference towers differ ({len(differing)} tensor(s), e.g. {differing[0]}; "
                        f"relative distance {distance:.2f} > {DRIFT_WARNING}); projection-layer scores assume shared towers "
                        "and may be no better than chance.")
    return PairModels(model.to(device).eval(), reference.to(device).eval(), config["arch"], tuple(config["input_shape"]),
                      dual_transform(model, config), params, warnings,
                      {"tower_distance": distance, "towers_differ": len(differing)})


def prepare_pairs(options: ScoreOptions, pool: Pool, device: str) -> Prepared[PairInputs]:
    """The lifecycle's ``prepare`` for a pairs pool (``pool`` already opened by ``setup.open_pool``)."""
    captions = pair_captions(pool, options.caption_noise, options.noise_seed)
    models = build_pair_models(options, device)
    # the data fingerprint covers the captions; the swapped ones follow from --caption-noise and --noise-seed
    fingerprints = {**pool_fingerprints(pool), "model": state_fingerprint(models.model.state_dict()),
                    "reference": state_fingerprint(models.reference.state_dict())}
    layers = models.params if isinstance(models.params, str) else ",".join(models.params)
    facts = dict(class_names=[], source={"spec": options.data, "pool_kind": "pairs"},
                 method=f"{options.score_method} of the symmetric InfoNCE term within each batch of {options.batch_size} pairs "
                        "(fixed checkpoint)",
                 noise=captions.noise, reference={"path": options.reference}, params=layers, basis=models.basis,
                 subset=pool.subset)
    return Prepared(PairInputs(pool, captions, models), fingerprints, facts, pool.warnings + models.warnings)
