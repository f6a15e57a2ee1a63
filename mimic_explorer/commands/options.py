"""Options of the run-making commands, independent of argparse: common to ``train`` and ``score``,
then each command's own.

Why dataclasses: the CLI, torchrun workers, tests and benchmarks build runs from the same objects;
``validate()`` checks every option and every rule between options before the run directory is touched
(so a bad command writes nothing), and ``identity()`` — everything but where to write and how to
report — defines the run id. How an option travels from the command line to the scorer is walked
through in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from mimic_explorer.data.keep_lists import check_keep_list_path
from mimic_explorer.data.metadata import metadata_files
from mimic_explorer.models.preprocessing import check_image_size, parse_transform_text
from mimic_explorer.models.registry import parse_arch
from mimic_explorer.store.targets import check_output_file, check_run_target
from mimic_explorer.util.choices import (
    AGGREGATIONS,
    BINARISATIONS,
    METHODS,
    MIMIC_LAYERS,
    NOISE_TYPES,
    OPTIMIZERS,
    PRETRAINED_FAMILIES,
    REWEIGHTS,
    SCORE_METHODS,
)
from mimic_explorer.util.threads import check_threads

#: fields that change how a run is made or reported but not what it computes
#: (``subset`` is the keep-list's path: its content hash is a fingerprint of the run instead, so a moved
#: or re-saved file with the same ids is the same run; ``metadata`` likewise: its files' content hash is a fingerprint)
NON_IDENTITY = (
    "out",
    "force",
    "quiet",
    "save_model",
    "device",
    "workers",
    "trust_pickle",
    "chunk_size",
    "checkpoint_every",
    "subset",
    "metadata",
    "threads",
)

#: fields added after runs were made, and their defaults: in a run's identity only when set otherwise
LATER_DEFAULTS = {"embeddings": True}
#: ``score``'s own (``train`` has had ``test_data`` from the start)
LATER_SCORE_DEFAULTS = {**LATER_DEFAULTS, "test_data": None, "redraws": 1}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _validate_image_text_options(options: Any) -> None:
    """The image-text options on their own (their values and the pairs they may not form); whether the
    pool can use them at all is its task's to say (``Task.check_options``), once it is opened."""
    layer = getattr(options, "mimic_layer", None)
    params = getattr(options, "params", "head")  # train has no --params
    _require(layer in (None, *MIMIC_LAYERS), f"--mimic-layer must be image or text, got {layer!r}")
    _require(
        layer is None or params == "head",
        f"give either --mimic-layer {layer} or --params {params}, not both (both name the mimic layers)",
    )
    rate = getattr(options, "caption_noise", 0.0)
    _require(0.0 <= rate < 1.0, f"--caption-noise must be in [0, 1), got {rate}")
    frozen = getattr(options, "frozen_towers", False)
    _require(
        not (frozen and getattr(options, "frozen_image_tower", False)),
        "give either --frozen-towers (both towers frozen) or --frozen-image-tower (the text tower trains), not both",
    )
    _require(
        not (frozen and getattr(options, "all_captions", False)),
        "--all-captions draws a caption each time a photo enters a batch, which needs a text tower that runs "
        "every step; --frozen-towers computes each pair's tower outputs once: drop one of them",
    )
    _require(
        not (rate and getattr(options, "all_captions", False)),
        "--all-captions trains on each photo's own captions; with --caption-noise the swapped captions would "
        "be mixed with the true ones: drop one of them",
    )


@dataclass
class CommonOptions:
    """What both commands need: the pool, the model and its reference, Stage 2, and how to run.

    Each field is the command-line option of the same name (``--binarise`` and ``--aggregate`` for the
    last two Stage-2 fields); Python callers get the same checks from ``validate()``.

    Parameters
    ----------
    data
        The pool: ``digits``, ``folder:DIR``, ``manifest:FILE``, ``wds:PATTERN`` (local, ``https://``, ``s3://``,
        ``gs://`` or ``pipe:COMMAND``), ``torchvision:NAME:ROOT`` or ``hf:PATH_OR_NAME[:SPLIT]``.
    arch
        The architecture: ``mlp``, ``small_cnn``, ``timm:NAME``, ``torchvision:NAME``, ``open_clip:NAME``,
        ``small_dual[:IMAGE_ARCH]``, or a factory ``file.py:function`` / ``module:function``.
    out
        The run directory; the same options twice reuse it.
    init
        Initial weights (a state dict file or a model folder), e.g. the shared pretrained backbone.
    pretrained
        The model's published weights: True for its default ones, a TAG for open_clip; never with ``init``.
    image_size, transform
        Preprocessing overrides (``--image-size N``, ``--transform KEY=VALUE,...``).
    reference
        The better model's checkpoint; without it ``train`` trains plainly.
    linear_probe
        Freeze the backbone and train (or score) the head on cached features: the valid protocol.
    temperature
        Softmax temperature T of the Stage-1 weights.
    reference_noise
        Gaussian noise added to the reference's head (a robustness probe).
    batch_size
        Mini-batch size per process.
    label_noise, noise_type, noise_seed
        Label noise injected into the pool to measure detection (the truth is recorded).
    seed
        Seed of initialisation and shuffling.
    binarisation, aggregation
        Stage 2: the per-epoch vote and the vote over epochs.
    device
        ``auto``, ``cpu`` or ``cuda[:N]``.
    workers
        DataLoader worker processes for decoding.
    threads
        torch's intra-op threads for the run; None: ``MIMIC_EXPLORER_THREADS``, else the cores this
        process may use shared among the torchrun processes on this machine (``util.threads``).
    trust_pickle
        Allow checkpoints that run code (``--trust-checkpoint``): only for files one trusts.
    force
        Recompute even when ``out`` holds this run, or holds another one.
    quiet
        No progress bars.
    subset
        A keep-list (what ``export`` writes): the pool is its samples only.
    metadata
        Parquet file(s) (a path or a glob) whose columns are joined by ``uid`` or ``sample_id`` into
        ``samples.parquet`` (DataComp's metadata); without it, the ``.parquet`` beside each shard is joined.
    """

    command: ClassVar[str] = ""
    #: fields added after runs of this command were made: left out of the identity at these values
    later_defaults: ClassVar[dict[str, Any]] = LATER_DEFAULTS
    data: str
    arch: str
    out: str
    init: str | None = None
    #: the model's published weights: True for its default ones (timm's loader, the torchvision hub
    #: cache), a TAG for families that name weights by tag (open_clip); never with ``init``
    pretrained: bool | str = False
    image_size: int | None = None  # resize and crop to N pixels (``--image-size``)
    transform: str | None = None  # ``--transform resize=R,crop=C,mean=…,std=…,interpolation=…``
    reference: str | None = None
    linear_probe: bool = False
    temperature: float = 1.0
    reference_noise: float = 0.0
    batch_size: int = 128
    label_noise: float = 0.0
    noise_type: str = "symmetric"  # or "asymmetric" (CIFAR-10 map)
    noise_seed: int = 0
    seed: int = 0
    binarisation: str = "weight"
    aggregation: str = "majority"
    device: str = "auto"
    workers: int = 0
    threads: int | None = None  # torch's intra-op threads (``util.threads``); None: the environment's or the default
    trust_pickle: bool = False
    force: bool = False
    quiet: bool = False
    subset: str | None = None  # a keep-list (``export``'s csv/json/parquet/npy/uids): the pool is its samples only
    metadata: str | None = None  # parquet file(s) joined by uid/sample_id into samples.parquet (``data.metadata``)
    #: keep the reference's embeddings (``embeddings/``, the Map's vectors); False (``--no-embeddings``) for pools
    #: where they would take too much disk (a pair's two 512-d embeddings: 2 KB, 262 GB at 128 M pairs)
    embeddings: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option (as the command line spells it)."""
        _require(bool(self.data), "--data is required")
        _require(bool(self.arch), "--arch is required")
        _require(bool(str(self.out)), "--out is required")
        _require(0.0 <= self.label_noise < 1.0, f"--label-noise must be in [0, 1), got {self.label_noise}")
        _require(
            self.noise_type in NOISE_TYPES, f"unknown --noise-type {self.noise_type!r}; choose symmetric or asymmetric"
        )
        _require(self.temperature > 0, f"--temperature must be > 0, got {self.temperature}")
        _require(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _require(self.reference_noise >= 0, f"--reference-noise must be >= 0, got {self.reference_noise}")
        _require(self.workers >= 0, f"--workers must be >= 0, got {self.workers}")
        if self.threads is not None:
            check_threads(self.threads, "--threads")
        _require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            f"unknown device {self.device!r}; use auto, cpu or cuda",
        )
        _require(
            self.binarisation is None or self.binarisation in BINARISATIONS,
            f"--binarise must be one of {', '.join(BINARISATIONS)}",
        )
        _require(self.aggregation in AGGREGATIONS, f"--aggregate must be one of {', '.join(AGGREGATIONS)}")
        if self.subset is not None:
            check_keep_list_path(self.subset)
        if self.metadata is not None:
            metadata_files(self.metadata)
        self._validate_model_choice()
        check_run_target(self.out)  # a file, or a place no folder can be made, is said before any work

    def _validate_model_choice(self) -> None:
        """``--arch`` spelled as one of its forms, ``--pretrained`` and ``--init`` not together, and the
        preprocessing overrides readable (``PreprocessingError``, a ``ValueError``, names the bad part)."""
        family = parse_arch(self.arch).family
        if self.pretrained not in (False, None):
            _require(
                not self.init,
                "pass either --pretrained (the model's published weights) or --init (a local file), not both",
            )
            _require(
                family in PRETRAINED_FAMILIES,
                (
                    f"--pretrained applies to timm:NAME and torchvision models, not to {self.arch!r}; pass --init with "
                    "a file"
                ),
            )
            _require(
                not isinstance(self.pretrained, str),
                f"--pretrained {self.pretrained!r}: a TAG names open_clip weights; {family} models take no tag "
                "(timm: --arch timm:NAME.TAG; torchvision: --arch torchvision:NAME:WEIGHTS; --pretrained alone: "
                "the model's default weights)",
            )
        check_image_size(self.image_size)
        if self.transform is not None:
            parse_transform_text(self.transform)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the run's results, and the command (a field added after runs were made is left
        out at its default, ``later_defaults``, so those runs keep their ids)."""
        return {
            "command": self.command,
            **{
                k: v
                for k, v in asdict(self).items()
                if k not in NON_IDENTITY and not (k in self.later_defaults and v == self.later_defaults[k])
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """Every option, as ``meta.json`` records it under ``config`` — but ``threads``: how a process shares its
        machine, which a resumed run may do differently; ``run.log`` says how many threads each start used."""
        return {"command": self.command, **{k: v for k, v in asdict(self).items() if k != "threads"}}

    def describe(self) -> str:
        """One line for ``run.log``: what is run on what."""
        return f"{self.command} {self.data} {self.arch}"


@dataclass
class TrainOptions(CommonOptions):
    """``train``: plain training (no reference) or Grad-Mimic (with one), recording every epoch.

    ``run_train(TrainOptions(...))`` is the same run as ``mimic-explorer train`` with those options.
    Every field of ``CommonOptions`` applies too; below are ``train``'s own.

    Parameters
    ----------
    binarisation
        Stage 2's per-epoch vote; None takes the task's own (``weight`` for labelled images, ``gmm`` for pairs).
    epochs, lr, weight_decay, optimizer
        The training schedule (``optimizer``: ``adamw`` or ``sgd``).
    method
        The Stage-1 weighting: ``proj``, ``cos``, ``normed_proj`` or ``normed_cos``.
    reweight
        Re-weight the mimic layers only (``head``) or every trainable parameter (``all``).
    starting_epoch
        Train plainly before this epoch (scores are still recorded).
    test_data
        Held-out data: test accuracy, or recall@1/5/10 for image-text pairs.
    save_model
        Where to save the trained weights (with a ``.meta.json`` beside them).
    checkpoint_every
        Seconds between resumable checkpoints (0: after every epoch): a killed run repeats at most this much.
    frozen_towers, frozen_image_tower, all_captions, fresh_projections, mimic_layer, caption_noise
        Image-text pools only: what trains, how captions are drawn, and which tower's projection is the
        mimic layer (see ``mimic-explorer train --help``).

    Raises
    ------
    ValueError
        From ``validate()`` (called by ``run_train`` before anything is written): the first bad option,
        named as the command line spells it.
    """

    command: ClassVar[str] = "train"
    #: each rank trains on its part of every epoch's permutation: a resume needs the process count it began with
    resumes_on_any_process_count: ClassVar[bool] = False
    #: Stage 2's per-epoch vote; None: the task's own (``Task.default_binarisation``)
    binarisation: str | None = None
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = "adamw"
    method: str = "normed_proj"
    reweight: str = "head"
    starting_epoch: int = 0
    test_data: str | None = None
    save_model: str | None = None
    checkpoint_every: float = 10.0  # seconds between resumable checkpoints (0: after every epoch)
    frozen_towers: bool = False  # image-text pools: train the projections on cached tower outputs
    mimic_layer: str | None = None  # image-text pools: image | text (the tower whose projection is the mimic layer)
    caption_noise: float = 0.0  # image-text pools: fraction of pairs whose captions are swapped
    frozen_image_tower: bool = False  # image-text pools, towers trained: the image tower keeps its weights
    all_captions: bool = False  # image-text pools, towers trained: each draw pairs a photo with one of its captions
    fresh_projections: bool = False  # image-text pools: both projections re-initialised (seeded by --seed)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option (as the command line spells it), ``--save-model`` included,
        so that a bad output place is said before the training it would lose."""
        super().validate()
        _validate_image_text_options(self)
        _require(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        _require(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _require(self.optimizer in OPTIMIZERS, f"unknown --optimizer {self.optimizer!r}; choose adamw or sgd")
        _require(self.method in METHODS, f"unknown --method {self.method!r}; choose one of {', '.join(METHODS)}")
        _require(self.reweight in REWEIGHTS, f"--reweight must be head or all, got {self.reweight!r}")
        _require(self.starting_epoch >= 0, f"--starting-epoch must be >= 0, got {self.starting_epoch}")
        _require(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 seconds, got {self.checkpoint_every}")
        if self.save_model:
            check_output_file(self.save_model, "--save-model")  # not after the training it would lose


@dataclass
class ScoreOptions(CommonOptions):
    """``score``: one fixed checkpoint (``model``) against ``reference``, every sample once, in chunks.

    ``run_score(ScoreOptions(...))`` is the same run as ``mimic-explorer score`` with those options.
    Every field of ``CommonOptions`` applies too; below are ``score``'s own.

    Parameters
    ----------
    model
        The checkpoint to score (required, as is ``reference``).
    binarisation
        Stage 2's vote; ``proj`` keeps a sample when its proj is >= 0 (one checkpoint, one epoch).
    params
        The mimic layers: ``head``, ``all``, or comma-separated parameter names.
    score_method
        ``proj`` or ``cos``: the score recorded and voted on (``--method``).
    chunk_size
        Samples per part file: the unit a killed run resumes from.
    mimic_layer, caption_noise
        Image-text pools only: the tower whose last projection is scored, and swapped captions.
    test_data
        Image-text pools only: held-out pairs known to be clean, drawn like the pool; the split of
        ``combined_score`` then keeps the pool's estimated clean fraction (``stage2.pair_quality``).
    redraws
        Image-text pools only: batchings each pair is scored in (the pool's order and ``redraws`` − 1
        seeded shuffles of its chunk); its proj, cos and loss are the means (``scoring.redraws``).

    Raises
    ------
    ValueError
        From ``validate()`` (called by ``run_score`` before anything is written): the first bad option,
        named as the command line spells it.
    """

    command: ClassVar[str] = "score"
    later_defaults: ClassVar[dict[str, Any]] = LATER_SCORE_DEFAULTS
    #: chunks and batches follow the pool's order alone: a run resumes on any number of processes
    resumes_on_any_process_count: ClassVar[bool] = True
    model: str | None = None
    binarisation: str = "proj"  # one checkpoint: vote keep when proj >= 0
    params: str = "head"  # "head" | "all" | comma-separated parameter names
    score_method: str = "proj"  # proj | cos
    chunk_size: int = 8192  # samples per part file (the unit of resuming)
    mimic_layer: str | None = None  # image-text pools: image | text (the tower whose projection is the mimic layer)
    caption_noise: float = 0.0  # image-text pools: fraction of pairs whose captions are swapped
    test_data: str | None = None  # image-text pools: held-out clean pairs, for the split's quality estimate
    redraws: int = 1  # image-text pools: batchings each pair is scored in, averaged

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad option (as the command line spells it): ``score`` needs ``--model``
        and ``--reference``, and ``--params`` must name a parameter."""
        super().validate()
        _validate_image_text_options(self)
        _require(bool(self.model), "score needs --model CKPT (the checkpoint to score)")
        _require(bool(self.reference), "score needs --reference CKPT (the better model)")
        _require(self.score_method in SCORE_METHODS, f"unknown --method {self.score_method!r}; choose proj or cos")
        _require(self.chunk_size >= 1, f"--chunk-size must be >= 1, got {self.chunk_size}")
        _require(
            self.redraws >= 1, f"--redraws must be >= 1 (the batchings each pair is scored in), got {self.redraws}"
        )
        _require(bool(self.mimic_params()), "--params names no parameter; use head, all or comma-separated names")
        _require(
            not self.linear_probe or self.mimic_params() == "head",
            "--linear-probe scores the head only; drop --params or use --params head",
        )

    def mimic_params(self) -> str | list[str]:
        """``--params`` as the scorer takes it: "head", "all", or a list of parameter names."""
        text = self.params
        return text if text in ("head", "all") else [p.strip() for p in text.split(",") if p.strip()]
