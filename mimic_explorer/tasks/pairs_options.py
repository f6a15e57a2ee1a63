"""Which options belong to which kind of pool, and what ``--mimic-layer`` means.

Why a module: the kind of a pool (labelled images or image-text pairs) is known only once ``--data``
is opened, so options that make sense for one kind only are checked then — still before the run
directory is touched — and refused with a message naming the option and the pool's kind. The
options themselves are checked on their own (range, spelling) by ``validate_pair_options`` from
``ScoreOptions.validate``.
"""

from __future__ import annotations

from typing import Any

from mimic_explorer.data.captions import LABELLED, PAIRS

#: ``--mimic-layer``: the last linear projection of that tower (``models.dual.mimic_layer_params``)
MIMIC_LAYERS = ("image", "text")
#: the tower scored when neither ``--mimic-layer`` nor ``--params`` names one
DEFAULT_MIMIC_LAYER = "text"
#: ``--arch small_dual[:IMAGE_ARCH]``: the built-in dual encoder (``models.small_dual``)
SMALL_DUAL = "small_dual"
#: Stage 2's per-epoch vote of a ``train`` run when ``--binarise`` is not given, by pool kind. Pairs:
#: the two-group GMM split of each epoch's proj — on Flickr8k with swapped captions its kept fraction
#: estimated the clean fraction within 0.01 where ``weight`` (weight ≥ 1/B) kept about half of a
#: 70 %-clean pool (benchmarks/RESULTS.md, "Image–text pairs on Flickr8k").
TRAIN_BINARISATION = {LABELLED: "weight", PAIRS: "gmm"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_pair_options(options: Any) -> None:
    """``--mimic-layer`` and ``--caption-noise`` on their own, whatever the pool."""
    layer = getattr(options, "mimic_layer", None)
    params = getattr(options, "params", "head")  # train has no --params
    _require(layer in (None, *MIMIC_LAYERS), f"--mimic-layer must be image or text, got {layer!r}")
    _require(layer is None or params == "head",
             f"give either --mimic-layer {layer} or --params {params}, not both (both name the mimic layers)")
    rate = getattr(options, "caption_noise", 0.0)
    _require(0.0 <= rate < 1.0, f"--caption-noise must be in [0, 1), got {rate}")
    frozen = getattr(options, "frozen_towers", False)
    _require(not (frozen and getattr(options, "frozen_image_tower", False)),
             "give either --frozen-towers (both towers frozen) or --frozen-image-tower (the text tower trains), not both")
    _require(not (frozen and getattr(options, "all_captions", False)),
             "--all-captions draws a caption each time a photo enters a batch, which needs a text tower that runs "
             "every step; --frozen-towers computes each pair's tower outputs once: drop one of them")
    _require(not (rate and getattr(options, "all_captions", False)),
             "--all-captions trains on each photo's own captions; with --caption-noise the swapped captions would "
             "be mixed with the true ones: drop one of them")


def _labelled_only(options: Any) -> list[str]:
    named = []
    if options.label_noise:
        named.append(f"--label-noise {options.label_noise}")
    if options.reference_noise:
        named.append(f"--reference-noise {options.reference_noise}")
    if options.linear_probe:
        named.append("--linear-probe")
    if options.init and options.command != "train":  # train: the towers' initial weights
        named.append("--init")
    return named


def train_binarisation(options: Any, pool_kind: str) -> str:
    """``--binarise`` of a ``train`` run as given, else the pool kind's default (``TRAIN_BINARISATION``)."""
    return options.binarisation or TRAIN_BINARISATION[pool_kind]


def check_pool_options(options: Any, pool_kind: str) -> None:
    """Refuse, before anything is written, an option that the opened pool's kind cannot use."""
    if pool_kind == PAIRS:
        named = _labelled_only(options)
        if named:
            raise ValueError(f"{', '.join(named)}: only for labelled pools, and {options.data} is a pool of image-text "
                             "pairs (use --caption-noise RATE to swap captions)")
        _require(options.batch_size >= 2, f"--batch-size {options.batch_size}: a pair's InfoNCE loss needs the other pairs "
                                          "of its batch as negatives, so an image-text pool is scored in batches of at least 2")
        return
    named = [f for f, on in (("--mimic-layer", getattr(options, "mimic_layer", None)),
                            ("--caption-noise", getattr(options, "caption_noise", 0.0)),
                            ("--frozen-towers", getattr(options, "frozen_towers", False)),
                            ("--frozen-image-tower", getattr(options, "frozen_image_tower", False)),
                            ("--all-captions", getattr(options, "all_captions", False)),
                            ("--fresh-projections", getattr(options, "fresh_projections", False))) if on]
    if named:
        instead = {"--mimic-layer": "--params", "--caption-noise": "--label-noise", "--frozen-towers": "--linear-probe"}
        hint = ", ".join(f"{instead[n]} instead of {n}" for n in named if n in instead)
        raise ValueError(f"{', '.join(named)}: only for image-text pools (captions in .txt/.json or a caption column), "
                         f"and {options.data} is a labelled pool" + (f"; on a labelled pool use {hint}" if hint else ""))


def pair_mimic_params(options: Any, model) -> list[str] | str:
    """The scored parameters of a dual encoder: ``--mimic-layer``'s projection, ``--params`` names
    (or ``all``), or — when neither names one (``--params head``) — the default tower's projection."""
    from mimic_explorer.models.dual import mimic_layer_params

    layer = getattr(options, "mimic_layer", None)
    if layer is None and options.params == "head":
        layer = DEFAULT_MIMIC_LAYER
    params = layer if layer is not None else options.mimic_params()
    return params if params == "all" else mimic_layer_params(model, params)
