"""Prepare a ``score`` run on an image-text pool: the captions (with ``--caption-noise`` swapped), the
model and reference dual encoders rebuilt from their checkpoints, the mimic layer, and the checks.

Why apart from ``pipeline/setup.py``: a pairs pool has no classes and its models are dual encoders
rebuilt from ``models.dual_checkpoint`` files, not classifiers sized by a class count; what the two
kinds share (opening the pool, the lifecycle) is reused as it is. Everything here runs before the run
directory is touched, so a bad checkpoint or a reference of another shape writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mimic_explorer.data.noise import caption_noise
from mimic_explorer.fingerprint import state_fingerprint
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual import DualEncoder
from mimic_explorer.models.dual_checkpoint import DualArch, dual_transform, load_dual_encoder, parse_dual_arch
from mimic_explorer.pipeline.lifecycle import Prepared
from mimic_explorer.pipeline.options import ScoreOptions
from mimic_explorer.pipeline.pairs_options import pair_mimic_params
from mimic_explorer.pipeline.setup import DRIFT_WARNING, Pool, pool_fingerprints


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
    arch: DualArch
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


def _check_same_shape(model: nn.Module, reference: nn.Module, options: ScoreOptions) -> None:
    """The reference must be the model's architecture, tokenizer included (same words, same ids)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    misfit = [k for k in ours if k not in theirs or ours[k].shape != theirs[k].shape] + [k for k in theirs if k not in ours]
    if misfit:
        raise CheckpointError(f"--reference {options.reference} is not the same dual encoder as --model {options.model}: "
                              f"{misfit[0]} differs (a reference must have the model's architecture)")
    vocab = "text_tower.vocabulary"
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


def build_pair_models(options: ScoreOptions, device: str) -> PairModels:
    """Model and reference from ``--model`` / ``--reference`` (``models.dual_checkpoint``), the mimic
    layers, and the feature-basis check on everything that is not a mimic layer."""
    arch = parse_dual_arch(options.arch)
    model, arch, shape = load_dual_encoder(options.model, arch, flag="--model", trust_pickle=options.trust_pickle)
    reference, _, ref_shape = load_dual_encoder(options.reference, arch, flag="--reference", trust_pickle=options.trust_pickle)
    if tuple(ref_shape) != tuple(shape):
        raise CheckpointError(f"--reference {options.reference} takes images of shape {ref_shape}, --model {shape}")
    _check_same_shape(model, reference, options)
    params = pair_mimic_params(options)
    known = dict(model.named_parameters())
    if isinstance(params, list):
        absent = [p for p in params if p not in known]
        if absent:
            raise ValueError(f"--params {absent[0]!r} is not a parameter of {arch.spell()} (e.g. {', '.join(list(known)[:4])})")
    mimic = list(known) if params == "all" else list(params)
    distance = tower_distance(model, reference, mimic)
    warnings = []
    if distance > DRIFT_WARNING:
        warnings.append(f"FEATURE BASIS: model and reference differ outside the mimic layers (relative distance {distance:.2f} > "
                        f"{DRIFT_WARNING}); projection-layer scores assume shared towers and may be no better than chance.")
    return PairModels(model.to(device).eval(), reference.to(device).eval(), arch, tuple(shape),
                      dual_transform(model, arch, shape), params, warnings, {"tower_distance": distance})


def prepare_pairs(options: ScoreOptions, pool: Pool, device: str) -> Prepared[PairInputs]:
    """The lifecycle's ``prepare`` for a pairs pool (``pool`` already opened by ``setup.open_pool``)."""
    captions = pair_captions(pool, options.caption_noise, options.noise_seed)
    models = build_pair_models(options, device)
    fingerprints = {**pool_fingerprints(pool), "captions": state_fingerprint({"c": torch.frombuffer(
        bytearray("\x1f".join(captions.captions.tolist()).encode("utf-8")) or bytearray(1), dtype=torch.uint8)}),
        "model": state_fingerprint(models.model.state_dict()), "reference": state_fingerprint(models.reference.state_dict())}
    layers = models.params if isinstance(models.params, str) else ",".join(models.params)
    facts = dict(class_names=[], source={"spec": options.data, "pool_kind": "pairs"},
                 method=f"{options.score_method} of the symmetric InfoNCE term within each batch of {options.batch_size} pairs "
                        "(fixed checkpoint)",
                 noise=captions.noise, reference={"path": options.reference}, params=layers, basis=models.basis)
    return Prepared(PairInputs(pool, captions, models), fingerprints, facts, models.warnings)
