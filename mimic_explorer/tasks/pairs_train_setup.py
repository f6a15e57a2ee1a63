"""Prepare a ``train`` run on an image-text pool: the captions (with ``--caption-noise`` swapped; with
``--all-captions`` every caption of each photo), the dual encoder to train, the reference (with
``--reference``: Grad-Mimic) and the feature-basis check.

Two ways to train: ``--frozen-towers`` trains only the projections and the logit scale on cached tower
outputs (so the towers decide the feature basis; plain or Grad-Mimic); without it the towers train
too (``tower_training``: plainly, the way a small "pretrained" checkpoint is made, or with
Grad-Mimic; ``--frozen-image-tower``, for the built-in model, keeps the image tower's weights). Grad-Mimic
assumes model and reference share their towers: checked when the run starts (a warning when they
differ; an error when a frozen image tower differs from the reference's, whose cached outputs the
reference would then score wrongly) and, while the towers train, measured per epoch (drift).

Where the model's weights come from:

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

Why apart from ``pairs_setup``: ``score`` rebuilds two finished checkpoints; ``train`` builds a model
from one of four sources and must check it against the reference before anything is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from mimic_explorer.util.fingerprint import state_fingerprint
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual import MIMIC_LAYERS, DualEncoder, mimic_layer_params, reset_projections, tower_differences
from mimic_explorer.models.dual_checkpoint import read_dual_checkpoint
from mimic_explorer.models.dual_registry import build_dual_encoder, is_open_clip
from mimic_explorer.commands.lifecycle import Prepared
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.tasks.pairs_options import DEFAULT_MIMIC_LAYER
from mimic_explorer.tasks.pairs_setup import PairCaptions, dual_transform, load_pair_model, pair_captions, saved_arch
from mimic_explorer.tasks.setup import Pool, pool_fingerprints
from mimic_explorer.training.tower_training import image_tower_differences

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
    #: with ``--all-captions``: every caption of each pool position (its own first), else None
    caption_sets: list[list[str]] | None = None


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


def _input_shape(options: TrainOptions) -> tuple[int, int, int]:
    size = options.image_size or 32
    return (3, size, size)


def _build_model(options: TrainOptions, captions: list[str], reference: DualEncoder | None,
                 reference_config: dict | None) -> tuple[DualEncoder, dict, list[str]]:
    """(model, its config {arch, input_shape}, notes) from the sources the module docstring lists."""
    image_arch = saved_arch(options.arch)
    if options.init and (is_open_clip(options.arch) or _is_dual_checkpoint(options.init)):  # a string test first: no second read of an open_clip file
        model, config = load_pair_model(options.init, options.arch, "--init", trust_code=options.trust_pickle)
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
    model = build_dual_encoder(image_arch, init=options.init, captions=captions, input_shape=shape,
                               trust_pickle=options.trust_pickle)
    return reset_projections(model, list(MIMIC_LAYERS), options.seed), {"arch": image_arch, "input_shape": list(shape)}, []


def build_train_pair_models(options: TrainOptions, captions: list[str], device: str) -> PairTrainModels:
    """Model and (with ``--reference``) reference of a pairs ``train`` run, and the feature-basis check.
    ``captions``: the texts a fresh model's vocabulary is read from."""
    reference, reference_config = None, None
    if options.reference:
        reference, reference_config = load_pair_model(options.reference, options.arch, "--reference",
                                                         trust_code=options.trust_pickle)
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
            raise CheckpointError(f"--reference {options.reference} has another vocabulary than the model (the same "
                                  "token id would mean different words); start the model from the reference's towers "
                                  "(no --init) or from the dual checkpoint the reference was trained from")
        differing = tower_differences(model, reference)
        basis = {"towers_differ": len(differing)}
        if differing:
            warnings.append(f"FEATURE BASIS: model and reference towers differ ({len(differing)} tensor(s), e.g. "
                            f"{differing[0]}); projection-layer mimic scores assume one shared feature basis and may be "
                            "no better than chance (start the model from the reference: no --init)")
    layer = options.mimic_layer or DEFAULT_MIMIC_LAYER
    mimic_layer_params(model, layer)  # an unknown layer fails here, before anything is written
    shape = tuple(int(s) for s in config["input_shape"])
    return PairTrainModels(model.to(device), None if reference is None else reference.to(device).eval(), config["arch"],
                           shape, dual_transform(model, config), layer, warnings, notes, basis)


def _check_tower_training(options: TrainOptions) -> None:
    """Refuse what training the towers cannot do, before anything is written."""
    if options.frozen_towers:
        if options.frozen_image_tower or options.all_captions:
            raise ValueError("--frozen-image-tower and --all-captions are for training the towers; drop --frozen-towers")
        return
    if is_open_clip(options.arch) and options.frozen_image_tower:
        raise ValueError(f"--frozen-image-tower is available for the built-in --arch small_dual; {options.arch} trains both "
                         "towers (drop --frozen-image-tower) or its projections alone (--frozen-towers)")


def _caption_sets(pool: Pool) -> list[list[str]]:
    """Every caption of each position (its own first): what ``--all-captions`` draws from."""
    source = pool.source
    return [source.all_captions(i) or [str(source.captions[i])] for i in range(len(source))]


def prepare_pair_training(options: TrainOptions, pool: Pool, device: str) -> Prepared[PairTrainInputs]:
    """The lifecycle's ``prepare`` for ``train`` on a pairs pool (``pool`` opened by ``setup.open_pool``)."""
    _check_tower_training(options)
    captions = pair_captions(pool, options.caption_noise, options.noise_seed)
    sets = _caption_sets(pool) if options.all_captions else None
    texts = [c for row in sets for c in row] if sets is not None else captions.captions.tolist()
    models = build_train_pair_models(options, texts, device)
    if models.reference is not None and options.frozen_image_tower:
        differing = image_tower_differences(models.model, models.reference)
        if differing:
            raise CheckpointError(f"--frozen-image-tower with --reference {options.reference}: the reference would score the "
                                  f"model's cached image-tower outputs, but its image tower differs ({len(differing)} tensor(s), "
                                  f"e.g. {differing[0]}); start the model from the reference (no --init) or "
                                  "train both towers")
    fingerprints = {**pool_fingerprints(pool), "init": state_fingerprint(models.model.state_dict()),
                    "reference": None if models.reference is None else state_fingerprint(models.reference.state_dict())}
    method = (f"{options.method} Grad-Mimic on the {models.mimic_layer} projection (symmetric InfoNCE within each batch "
              f"of {options.batch_size} pairs; {_trained_part(options)})") if models.reference is not None \
        else f"plain ({_trained_part(options)})"
    facts = dict(class_names=[], source={"spec": options.data, "pool_kind": "pairs"}, method=method, noise=captions.noise,
                 reference={"path": options.reference} if options.reference else None, basis=models.basis,
                 subset=pool.subset)
    return Prepared(PairTrainInputs(pool, captions, models, sets), fingerprints, facts, pool.warnings + models.warnings,
                    models.notes)


def _trained_part(options: TrainOptions) -> str:
    if options.frozen_towers:
        return "frozen towers"
    drawn = "; each step one of every photo's captions" if options.all_captions else ""
    return ("text tower and projections; image tower frozen" if options.frozen_image_tower else "both towers and projections") + drawn
