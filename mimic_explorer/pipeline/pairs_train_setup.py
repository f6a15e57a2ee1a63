"""Prepare a ``train`` run on an image-text pool: the captions (with ``--caption-noise`` swapped), the
dual encoder to train, the reference (with ``--reference``: Grad-Mimic) and the feature-basis check.

Where the model's weights come from (the frozen-tower mode trains only the projections and the logit
scale, so the towers decide the feature basis):

- ``--init`` a dual-encoder checkpoint (``models.dual_checkpoint``): every weight, tokenizer included;
- ``--init`` an image classifier checkpoint: the image tower (the text tower and the tokenizer are
  built fresh from the pool's captions, seeded by ``--seed``);
- no ``--init`` but a ``--reference``: the reference itself with the mimic layer's projection freshly
  initialised — model and reference then share one feature basis (the towers) and one joint
  embedding space (the other projection), the valid protocol for projection-layer mimic scores (a
  reference trained on clean pairs plays the public checkpoint);
- neither: a fresh built-in dual encoder (vocabulary from the pool's captions).

Why apart from ``pairs_setup``: ``score`` rebuilds two finished checkpoints; ``train`` builds a model
from one of four sources and must check it against the reference before anything is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from mimic_explorer.fingerprint import state_fingerprint
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual import MIMIC_LAYERS, DualEncoder, mimic_layer_params, tower_differences
from mimic_explorer.models.dual_checkpoint import read_dual_checkpoint
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip
from mimic_explorer.pipeline.lifecycle import Prepared
from mimic_explorer.pipeline.options import TrainOptions
from mimic_explorer.pipeline.pairs_options import DEFAULT_MIMIC_LAYER
from mimic_explorer.pipeline.pairs_setup import PairCaptions, dual_transform, load_pair_model, pair_captions, saved_arch
from mimic_explorer.pipeline.setup import Pool, pool_fingerprints

#: the image ARCH of ``--arch small_dual`` when neither the ARCH nor an ``--init`` dual checkpoint names one
DEFAULT_IMAGE_ARCH = "small_cnn"


@dataclass
class PairTrainModels:
    model: DualEncoder
    reference: DualEncoder | None
    arch: str  # as a dual checkpoint records it (the image ARCH of the built-in model, or open_clip:NAME)
    input_shape: tuple[int, int, int]
    transform: object
    mimic_layer: str
    warnings: list[str]
    notes: list[str]
    basis: dict


@dataclass
class PairTrainInputs:
    """What a pairs ``train`` run prepares before its run directory is touched."""

    pool: Pool
    captions: PairCaptions
    models: PairTrainModels


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
    the reference's)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        getattr(model, MIMIC_LAYERS[layer]).reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def _input_shape(options: TrainOptions) -> tuple[int, int, int]:
    size = options.image_size or 32
    return (3, size, size)


def _build_model(options: TrainOptions, captions: np.ndarray, reference: DualEncoder | None,
                 reference_config: dict | None) -> tuple[DualEncoder, dict, list[str]]:
    """(model, its config {arch, input_shape}, notes) from the sources the module docstring lists."""
    image_arch = saved_arch(options.arch)
    if options.init and (_is_dual_checkpoint(options.init) or is_open_clip(options.arch)):
        model, config = load_pair_model(options.init, options.arch, "--init")
        return model, config, []
    if options.init is None and reference is not None:
        layer = options.mimic_layer or DEFAULT_MIMIC_LAYER
        model = _fresh_projection(copy.deepcopy(reference), layer, options.seed)
        return model, dict(reference_config), [f"the model starts from --reference {options.reference} with a fresh "
                                               f"{layer} projection (one shared feature basis)"]
    if image_arch is None or is_open_clip(image_arch):
        if image_arch is not None:
            raise CheckpointError(f"--arch {options.arch} needs an --init checkpoint (weights of the towers)")
        image_arch = DEFAULT_IMAGE_ARCH
    shape = _input_shape(options)
    torch.manual_seed(options.seed)
    model = build_dual_encoder(image_arch, init=options.init, captions=captions.tolist(), input_shape=shape,
                               trust_pickle=options.trust_pickle)
    return model, {"arch": image_arch, "input_shape": list(shape)}, []


def build_train_pair_models(options: TrainOptions, captions: np.ndarray, device: str) -> PairTrainModels:
    """Model and (with ``--reference``) reference of a pairs ``train`` run, and the feature-basis check."""
    reference, reference_config = None, None
    if options.reference:
        reference, reference_config = load_pair_model(options.reference, options.arch, "--reference")
    model, config, notes = _build_model(options, captions, reference, reference_config)
    warnings = []
    basis: dict = {}
    if reference is not None:
        vocab = "text_tower.vocabulary"
        ours, theirs = model.state_dict(), reference.state_dict()
        if vocab in ours and (vocab not in theirs or not torch.equal(ours[vocab], theirs[vocab])):
            raise CheckpointError(f"--reference {options.reference} has another vocabulary than the model (the same "
                                  "token id would mean different words); start the model from the reference's towers "
                                  "(no --init) or from the dual checkpoint the reference was trained from")
        differing = tower_differences(model, reference)
        basis = {"towers_differ": len(differing)}
        if differing:
            warnings.append(f"FEATURE BASIS: model and reference towers differ ({len(differing)} tensor(s), e.g. "
                            f"{differing[0]}); frozen-tower mimic scores assume one shared feature basis and may be "
                            "no better than chance")
    layer = options.mimic_layer or DEFAULT_MIMIC_LAYER
    mimic_layer_params(model, layer)  # an unknown layer fails here, before anything is written
    shape = tuple(int(s) for s in config["input_shape"])
    return PairTrainModels(model.to(device), None if reference is None else reference.to(device).eval(), config["arch"],
                           shape, dual_transform(model, config), layer, warnings, notes, basis)


def prepare_pair_training(options: TrainOptions, pool: Pool, device: str) -> Prepared[PairTrainInputs]:
    """The lifecycle's ``prepare`` for ``train`` on a pairs pool (``pool`` opened by ``setup.open_pool``)."""
    if not options.frozen_towers:
        raise ValueError(f"{options.data} is a pool of image-text pairs: train it with --frozen-towers (the towers' "
                         "outputs computed once, the projections trained on them); fine-tuning the towers is not available")
    captions = pair_captions(pool, options.caption_noise, options.noise_seed)
    models = build_train_pair_models(options, captions.captions, device)
    fingerprints = {**pool_fingerprints(pool), "init": state_fingerprint(models.model.state_dict()),
                    "reference": None if models.reference is None else state_fingerprint(models.reference.state_dict())}
    method = (f"{options.method} Grad-Mimic on the {models.mimic_layer} projection (symmetric InfoNCE within each batch "
              f"of {options.batch_size} pairs; frozen towers)") if models.reference is not None else "plain (frozen towers)"
    facts = dict(class_names=[], source={"spec": options.data, "pool_kind": "pairs"}, method=method, noise=captions.noise,
                 reference={"path": options.reference} if options.reference else None, basis=models.basis,
                 subset=pool.subset)
    return Prepared(PairTrainInputs(pool, captions, models), fingerprints, facts, pool.warnings + models.warnings,
                    models.notes)
