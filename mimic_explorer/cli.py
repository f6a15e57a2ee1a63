"""The ``mimic-explorer`` command.

Convention: progress and notes go to stderr; results to stdout; the last line of stdout of a command
that makes a run is the run directory. A user-caused error prints one line ``error: …`` and exits 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from mimic_explorer import __version__
from mimic_explorer.util import choices

EPILOG = """examples:
  mimic-explorer demo --out runs/demo
  mimic-explorer export runs/demo --ensemble --format csv --out keep.csv
  mimic-explorer export runs/demo --quantile 0.3 --per-class --format parquet --out keep.parquet
  mimic-explorer export runs/pairs --rule clip_score_ref:top=30% --rule mimic_score:drop=15% \\
      --format uids --out subset.npy
  mimic-explorer review runs/demo --ids digits-0002 digits-0009 --decision drop
  mimic-explorer map runs/demo --method pca
  mimic-explorer serve runs/demo
"""


class UserError(Exception):
    """An error the user caused and can fix; printed as one line, exit status 2."""


class _DefaultsOnceFormatter(argparse.HelpFormatter):
    """Shows an option's default once, at the end of its help: not when the help already says what the
    default is (in its own words), nor for options without one (None) or flags (False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text.lower()
        ):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser shows its defaults through ``_DefaultsOnceFormatter``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _DefaultsOnceFormatter)
        super().__init__(*args, **kwargs)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="build the embedded digits demo run (30%% label noise, Grad-Mimic, Stage 2); CPU, seconds",
        description="Build a complete run directory from scikit-learn's digits: 30%% symmetric label "
        "noise, a reference trained on clean labels from the same init, a Grad-Mimic run (normed_proj, T=1, "
        "batch 32, AdamW) recording proj and weight per sample per epoch, and Stage 2 (weight >= 1/B, "
        "majority vote).",
    )
    p.add_argument("--out", required=True, help="run directory to write (created if missing)")
    p.add_argument("--epochs", type=int, default=20, help="Grad-Mimic epochs")
    p.add_argument("--noise", type=float, default=0.3, help="symmetric label-noise rate in [0, 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--force", action="store_true", help="rebuild even when --out already holds this demo run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_threads(p)
    p.set_defaults(func=_cmd_demo)


def _add_threads(p) -> None:
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch's intra-op threads (default: $MIMIC_EXPLORER_THREADS, else the cores this process may use that "
        "the machine's other work leaves free (its load average), shared among the torchrun processes on this machine)",
    )


def _cmd_demo(args) -> int:
    from mimic_explorer.commands.demo import DemoConfig, build_demo, format_summary
    from mimic_explorer.store.targets import check_run_target
    from mimic_explorer.util.progress import tqdm_progress

    check_run_target(args.out)  # before anything is computed
    try:
        summary = build_demo(
            args.out,
            DemoConfig(noise_rate=args.noise, epochs=args.epochs, seed=args.seed),
            progress=None if args.quiet else tqdm_progress(),
            force=args.force,
            threads=args.threads,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(format_summary(summary))
    print(Path(args.out).expanduser().resolve())
    return 0


ARCH_HELP = (
    "mlp | small_cnn | timm:NAME[.TAG] (any timm classifier, e.g. timm:resnet50.a1_in1k; the timm extra) | "
    "torchvision:NAME[:WEIGHTS] (e.g. torchvision:resnet50:IMAGENET1K_V2; the weights from the local torch hub "
    "cache or --init) | a torchvision model name (resnet18, vit_b_16, ...) | path/to/file.py:function | "
    "package.module:function (a factory returning an nn.Module; it may declare input_size = N)"
)


def _add_run_options(p, command: str) -> None:
    """Options shared by train and score."""
    p.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="the pool: digits | folder:DIR | manifest:FILE.csv|.parquet | wds:PATTERN (local shards, or "
        "https://, s3://, gs:// URLs or pipe:COMMAND, each shard fetched once into the cache) | "
        "torchvision:NAME:ROOT | hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL&caption=COL&id=COL] (a datasets "
        "save_to_disk folder, .parquet/.arrow files or a Hub name; the hf extra)",
    )
    p.add_argument(
        "--subset",
        metavar="FILE",
        help="use only the samples this keep-list names (what export writes: .csv/.json/.parquet with a "
        "sample_id column, an .npy of ids, or DataComp's --format uids .npy, matched against each "
        "pair's 32-hex-digit uid); the rest of the pool is never decoded. Listed ids the pool lacks "
        "are counted in a warning; none in the pool is an error. The ids' hash is part of the run id",
    )
    p.add_argument(
        "--metadata",
        metavar="FILE_OR_GLOB",
        help="parquet file(s) whose columns are joined into samples.parquet by uid (or sample_id), e.g. DataComp's "
        "metadata with clip_l14_similarity_score, usable in export --rule and the app; without it the .parquet "
        "beside each shard is joined when present. Ids the pool lacks are counted in a warning; the files' content "
        "hash is part of the run id",
    )
    p.add_argument("--arch", required=True, metavar="ARCH", help=ARCH_HELP)
    p.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        default=False,
        metavar="TAG",
        help="start from the model's published weights: timm: timm's own loader (needs network access or "
        "timm's cache); torchvision: the DEFAULT weights from the local torch hub cache (never "
        "downloaded). A TAG names open_clip weights. Not with --init; without it nothing is downloaded",
    )
    recorded = "--init or --reference" if command == "train" else "--model or --reference"
    p.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="resize and crop images to N px (without it: the preprocessing recorded with "
        f"{recorded}, else the model's own: timm's data config, the torchvision weights' "
        "transforms, the input_size a file.py:function declares)",
    )
    p.add_argument(
        "--transform",
        metavar="TEXT",
        help="override preprocessing keys after --image-size, as KEY=VALUE pairs joined by commas: "
        "resize=R, crop=C, mean=R,G,B, std=R,G,B, interpolation=bilinear|bicubic|nearest|..., "
        "crop_mode=center|squash; keys left out keep the model's values",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (the same command twice reuses it)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size per process")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
    _add_threads(p)
    p.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        metavar="RATE",
        help="inject label noise at RATE in [0, 1) to evaluate detection (default 0: none)",
    )
    p.add_argument(
        "--noise-type",
        choices=choices.NOISE_TYPES,
        default="symmetric",
        help="symmetric: exactly int(RATE*N) labels flipped to a random other class; asymmetric: the "
        "CIFAR-10 class-pair map (truck->automobile, bird->airplane, deer->horse, cat<->dog)",
    )
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the injected noise")
    p.add_argument("--seed", type=int, default=0, help="seed of init and shuffling")
    vote = (
        "weight (weight >= 1/B) on a labelled pool, gmm (two-group split of each epoch's proj) on image-text pairs"
        if command == "train"
        else "proj: keep when proj >= 0"
    )
    p.add_argument(
        "--binarise",
        dest="binarisation",
        default=None,
        choices=choices.BINARISATIONS,
        help=f"Stage-2 per-epoch vote (default {vote})",
    )
    p.add_argument(
        "--aggregate",
        dest="aggregation",
        default="majority",
        choices=choices.AGGREGATIONS,
        help="Stage-2 vote over epochs",
    )
    p.add_argument(
        "--trust-checkpoint",
        dest="trust_pickle",
        action="store_true",
        help="allow checkpoints that run code: pickled whole models, and dual-encoder files whose recorded "
        "architecture names a file.py:function or module:function to import (only for files you trust)",
    )
    p.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="do not keep the reference's embeddings (embeddings/: the Map's vectors; a pair's two 512-d "
        "embeddings take 2 KB, 262 GB at 128 M pairs): the Map then needs your own coordinates "
        "(mimic-explorer map RUN --coords)",
    )
    p.add_argument("--force", action="store_true", help="recompute even when --out already holds this run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train plainly (to make a reference) or with Grad-Mimic, recording scores per sample per epoch",
        description="Without --reference: plain training (save it with --save-model to use as a "
        "reference). With --reference: Grad-Mimic. Every sample's proj, weight, loss and prediction are "
        "recorded at every epoch; Stage 2 turns them into mimic_score and keep. Use --linear-probe with "
        "--init or --pretrained for the valid protocol (model and reference share a frozen backbone). "
        "Under torchrun each process takes a part of the data.",
    )
    _add_run_options(p, "train")
    p.add_argument(
        "--init",
        metavar="CKPT",
        help="initial weights (a pretrained backbone): a .pt/.pth/.safetensors state dict or a model folder "
        "(model.safetensors + config.json, e.g. a timm repository from the Hugging Face Hub); the "
        "head is skipped if its shape differs, and preprocessing recorded with it is used",
    )
    p.add_argument(
        "--reference", metavar="CKPT", help="the better model (same architecture and classes); enables Grad-Mimic"
    )
    p.add_argument("--linear-probe", action="store_true", help="freeze the backbone; train the head on cached features")
    p.add_argument("--epochs", type=int, default=10, help="training epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="weight decay of the optimizer")
    p.add_argument("--optimizer", choices=choices.OPTIMIZERS, default="adamw", help="optimizer")
    p.add_argument("--method", choices=choices.METHODS, default="normed_proj", help="Stage-1 weighting")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature T of normed_* methods")
    p.add_argument(
        "--reweight",
        choices=choices.REWEIGHTS,
        default="head",
        help="re-weight the mimic layers only, or every trainable parameter",
    )
    p.add_argument(
        "--starting-epoch", type=int, default=0, help="train plainly before this epoch (scores still recorded)"
    )
    p.add_argument(
        "--reference-noise",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="Gaussian noise added to the reference's head weights (robustness probe)",
    )
    p.add_argument(
        "--test-data",
        metavar="SPEC",
        help="held-out data for test accuracy (image-text pairs: recall@1/5/10, every caption of each photo)",
    )
    p.add_argument(
        "--save-model",
        metavar="PATH",
        help="save the trained weights (state dict + PATH.meta.json; image-text "
        "pairs: a dual-encoder checkpoint that score --model/--reference loads)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="write recorded epochs and a resumable state at most this often, and after the last epoch "
        "(0: after every epoch); a killed run repeats at most this much work",
    )
    _add_pair_train_options(p)
    p.set_defaults(func=_cmd_train)


def _add_pair_train_options(p) -> None:
    """``train`` on an image-text pool (captions in .txt/.json; --arch small_dual[:IMAGE_ARCH])."""
    pairs = p.add_argument_group(
        "image-text pools",
        "Each pair's loss is its symmetric InfoNCE term within its batch. Without --init, a run with "
        "--reference starts from the reference's towers with a fresh mimic-layer projection (one shared feature "
        "basis); --init takes a dual-encoder checkpoint (--save-model of a pairs run) or an image classifier "
        "checkpoint (the image tower). Without --frozen-towers the model (small_dual or open_clip:NAME) trains "
        "towers included, its pairs decoded again every epoch while the image tower learns: plainly (no "
        "--reference), the way to make a small 'pretrained' checkpoint, e.g. on clean pairs with "
        "--frozen-image-tower --all-captions; or with --reference, Grad-Mimic on the --mimic-layer projection while "
        "the towers learn (their drift from the reference's is recorded per epoch and warned about past 0.5).",
    )
    pairs.add_argument(
        "--frozen-towers",
        action="store_true",
        help="compute the towers' outputs once and train only the projections and the logit scale on them "
        "(plain, or Grad-Mimic with --reference)",
    )
    pairs.add_argument(
        "--frozen-image-tower",
        action="store_true",
        help="without --frozen-towers (built-in small_dual): keep the image tower's weights (its outputs computed "
        "once and held) and train the text tower, both projections and the logit scale",
    )
    pairs.add_argument(
        "--all-captions",
        action="store_true",
        help="without --frozen-towers: each time a photo is drawn into a batch, pair it with one of its "
        "captions (the .json's all_captions, e.g. Flickr8k's five) chosen at random, seeded by --seed "
        "and the epoch; the vocabulary is read from all of them. samples.parquet records caption #0",
    )
    pairs.add_argument(
        "--fresh-projections",
        action="store_true",
        help="re-initialise both projections from --seed (a model trained from fresh projections with the "
        "same --seed started from these very values: --init CKPT --fresh-projections restarts its "
        "projections from its own initial weights)",
    )
    pairs.add_argument(
        "--mimic-layer",
        choices=choices.MIMIC_LAYERS,
        default=None,
        help="Grad-Mimic re-weights the gradient of this tower's last linear projection (default text)",
    )
    _add_caption_noise(pairs)


def _add_caption_noise(group) -> None:
    """``--caption-noise`` of ``train`` and ``score`` on an image-text pool."""
    group.add_argument(
        "--caption-noise",
        type=float,
        default=0.0,
        metavar="RATE",
        help="swap the captions of this fraction of pairs among themselves (seeded by --noise-seed; is_noisy recorded)",
    )


def _options_from(args, command: str):
    """The command's options dataclass from the parsed arguments (unset optional ones keep their defaults)."""
    from dataclasses import fields

    from mimic_explorer.commands.options import ScoreOptions, TrainOptions

    cls = TrainOptions if command == "train" else ScoreOptions
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def _run_command(args, command: str) -> int:
    from mimic_explorer.data.errors import DataSourceError
    from mimic_explorer.models.checkpoints import CheckpointError
    from mimic_explorer.models.registry import ArchError
    from mimic_explorer.store.arrow_pool import use_system_allocator
    from mimic_explorer.util.progress import tqdm_progress

    use_system_allocator()  # memory that stays flat with the pool size (see store/arrow_pool.py)
    options = _options_from(args, command)
    _check_outputs(options)
    progress = None if options.quiet or int(os.environ.get("RANK", "0")) != 0 else tqdm_progress()
    try:
        if command == "train":
            from mimic_explorer.commands.train import run_train as run
        else:
            from mimic_explorer.commands.score import run_score as run
        outcome = run(options, progress=progress)
    except (ValueError, DataSourceError, ArchError, CheckpointError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    summary = outcome.summary
    if "test_accuracy" in summary:
        print(f"test accuracy: {summary['test_accuracy']:.4f}")
    if "test_recall" in summary:
        print("test recall: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test_recall"].items()))
    if outcome.report:
        print(outcome.report)
    elif "estimated_quality" in summary:
        print(f"estimated quality (fraction kept): {summary['estimated_quality']:.3f}")
    if summary.get("skipped"):
        print(f"skipped {summary['skipped']} bad sample(s); see errors.parquet")
    print(Path(outcome.path).resolve())
    return 0


def _check_outputs(options) -> None:
    """Refuse, before any work, a ``--out`` that cannot become a run directory and a ``--save-model``
    that cannot be written (a folder, or in a read-only place): one line, exit status 2."""
    from mimic_explorer.store.targets import OutputFileError, check_output_file, check_run_target

    check_run_target(options.out)
    if getattr(options, "save_model", None):
        try:
            check_output_file(options.save_model, "--save-model")
        except OutputFileError as exc:
            raise UserError(str(exc)) from None


def _cmd_train(args) -> int:
    return _run_command(args, "train")


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score every sample of a pool with one fixed checkpoint against a reference",
        description="Mimic scores of --model against --reference for every sample (one ordered pass, "
        "streamed to disk in chunks; a killed run resumes). Stage 2 for one checkpoint votes keep when "
        "proj >= 0 by default. Under torchrun each process scores a disjoint part.",
    )
    _add_run_options(p, "score")
    p.set_defaults(binarisation="proj")
    p.add_argument("--model", required=True, metavar="CKPT", help="the checkpoint to score")
    p.add_argument(
        "--reference", required=True, metavar="CKPT", help="the better model (same architecture and classes)"
    )
    p.add_argument("--params", default="head", help="mimic layers: head, all, or comma-separated parameter names")
    p.add_argument(
        "--method",
        dest="score_method",
        choices=choices.SCORE_METHODS,
        default="proj",
        help="score to record and vote on",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the per-batch weight column")
    p.add_argument("--linear-probe", action="store_true", help="score the head on cached backbone features")
    p.add_argument(
        "--chunk-size", type=int, default=8192, help="samples per part file (the unit a killed run resumes from)"
    )
    _add_pair_score_options(p)
    p.set_defaults(func=lambda args: _run_command(args, "score"))


def _add_pair_score_options(p) -> None:
    """``score`` on an image-text pool (captions in .txt/.json; --arch small_dual[:IMAGE_ARCH] or open_clip:NAME)."""
    pairs = p.add_argument_group(
        "image-text pools",
        "A pair's loss is its symmetric InfoNCE term within the batch it is scored in (the other pairs "
        "of the batch are its negatives), so its mimic score is relative to that batch: samples.parquet records "
        "score_batch and batch_size. Batches follow the pool's order; a pair is never scored alone.",
    )
    pairs.add_argument(
        "--mimic-layer",
        choices=choices.MIMIC_LAYERS,
        default=argparse.SUPPRESS,
        help="score the last linear projection of this tower (text when neither this nor --params names "
        "the mimic layers)",
    )
    _add_caption_noise(pairs)
    pairs.add_argument(
        "--test-data",
        metavar="SPEC",
        help="held-out pairs known to be clean, drawn like the pool: the split of combined_score then keeps the "
        "pool's estimated clean fraction (blind to bad pairs the reference scores like clean ones)",
    )
    pairs.add_argument(
        "--redraws",
        type=int,
        default=1,
        metavar="K",
        help="score each pair in K batchings (the pool's order and K-1 shuffles of its chunk, seeded by --seed) "
        "and record the means of proj, cos and loss: a pair's score then depends less on its batch-mates; "
        "costs K scoring passes, decoding included. The summary's batch_noise says how much batching mattered",
    )


RULE_HELP = """\
filters:
  one rule: --ensemble | --threshold X | --quantile Q | --top-fraction F | --keep-count N
            (on --column, default mimic_score; --per-class resolves it within each class;
            --ensemble --column combined_score keeps the combined score's own split, combined_keep:
            its top q-hat, q-hat the label-noise model's quality estimate)
  several rules, all of which must keep a sample (AND), each on its own column:
    --rule COLUMN:KIND=VALUE[:per-class]   (repeat --rule; or --rule ensemble for the Stage-2 filter)
      KIND  min    keep COLUMN >= VALUE                      (threshold)
            drop   drop the lowest VALUE fraction of COLUMN  (quantile)
            top    keep the highest VALUE fraction of COLUMN (top fraction)
            count  keep the VALUE highest of COLUMN          (keep-count)
      a fraction may be written as a percentage (top=30%); each rule is resolved on the whole pool,
      then the keep sets are intersected.
  e.g. DataComp's "CLIP score top 30 % minus the mimic bottom 15 %":
    mimic-explorer export RUN --rule clip_score_ref:top=30% --rule mimic_score:drop=15% \\
        --format uids --out subset.npy

formats: csv, json, parquet (the kept rows: sample_id, source, label, score, keep); npy (a boolean mask in
samples.parquet order); uids (DataComp's subset file: the kept pairs' 128-bit uids as a sorted NumPy
array of dtype [('f0','<u8'),('f1','<u8')], high and low 64 bits; every sample id must be a distinct
32-hex-digit uid); hf (a Hugging Face datasets folder, load_from_disk: the kept rows of an hf: run's dataset with
the run's columns joined, run_NAME where the dataset has the name; for other runs the run's columns; the hf
extra); reviews (the run's review decisions alone, latest per sample, as csv, json or parquet by --out's
extension; no rule needed).

reviews: decisions recorded with `mimic-explorer review` or the app (keep, drop, relabel) are applied on
top of the rule by default (--reviews ignore leaves them out): keep and relabel keep a sample, drop drops
it, and csv/json/parquet keep-lists gain label_reviewed when a decision relabels. The spec records how
many decisions were applied and their sha256, so --spec gives the same keep-list after later reviews."""

#: --rule KIND words -> FilterRule kinds (the long names are accepted too)
RULE_KINDS = {
    "min": "threshold",
    "threshold": "threshold",
    "drop": "quantile",
    "quantile": "quantile",
    "top": "top_fraction",
    "top_fraction": "top_fraction",
    "top-fraction": "top_fraction",
    "count": "keep_count",
    "keep_count": "keep_count",
    "keep-count": "keep_count",
}


def _parse_rule(text: str):
    """One ``--rule COLUMN:KIND=VALUE[:per-class]`` (or ``ensemble``) as a ``FilterRule``; ``UserError``
    naming what is wrong otherwise."""
    from mimic_explorer.filters.rules import FilterRule

    if text.strip() == "ensemble":
        return FilterRule("ensemble", None)
    example = "e.g. clip_score_ref:top=30% or mimic_score:drop=0.15:per-class"
    parts = text.split(":")
    per_class = len(parts) == 3 and parts[2] in ("per-class", "per_class")
    if len(parts) not in (2, 3) or (len(parts) == 3 and not per_class) or "=" not in parts[1] or not parts[0]:
        raise UserError(f"--rule {text!r} is not COLUMN:KIND=VALUE[:per-class] ({example})")
    word, _, raw = parts[1].partition("=")
    kind = RULE_KINDS.get(word.strip().lower())
    if kind is None:
        raise UserError(f"--rule {text!r}: unknown kind {word!r}; use min, drop, top or count ({example})")
    raw = raw.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UserError(f"--rule {text!r}: {raw!r} is not a number ({example})") from None
    if raw.endswith("%") and kind not in ("quantile", "top_fraction"):
        raise UserError(f"--rule {text!r}: a percentage is a fraction; {word} takes a plain number")
    if kind == "keep_count" and value == int(value):
        value = int(value)
    return FilterRule(kind, value, parts[0].strip(), per_class)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a keep-list (csv/json/parquet/npy/uids) and FILE.spec.json from a run",
        description="Apply a filter (one rule, or several ANDed with --rule) to a run and write the keep-list "
        "plus a reproducible spec (FILE.spec.json: every rule, resolved thresholds, counts per class, run id, "
        "data fingerprint, hash; re-apply it with --spec).",
        epilog=RULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="run directory")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--ensemble", action="store_true", help="the run's Stage-2 ensemble filter (column keep)")
    rule.add_argument("--threshold", type=float, metavar="X", help="keep samples with score >= X")
    rule.add_argument(
        "--quantile", type=float, metavar="Q", help="drop the lowest Q fraction (keep score >= Q-quantile)"
    )
    rule.add_argument("--top-fraction", type=float, metavar="F", help="keep the highest F fraction")
    rule.add_argument("--keep-count", type=int, metavar="N", help="keep the N highest-scoring samples")
    rule.add_argument(
        "--rule",
        action="append",
        metavar="COLUMN:KIND=VALUE",
        help="one rule of an AND (repeatable; see 'filters' below)",
    )
    rule.add_argument("--spec", metavar="SPEC_JSON", help="re-apply a saved filter spec (refused on another run)")
    p.add_argument(
        "--per-class", action="store_true", help="resolve --quantile / --top-fraction / --keep-count within each class"
    )
    p.add_argument("--column", default=None, help="score column of a one-rule filter (default mimic_score)")
    p.add_argument(
        "--format",
        choices=["csv", "json", "parquet", "npy", "uids", "hf", "reviews"],
        default=None,
        help="file format (default: from --out's extension); see 'formats' below",
    )
    p.add_argument(
        "--reviews",
        choices=choices.REVIEW_MODES,
        default="apply",
        help="apply the run's review decisions on top of the rule (default), or ignore them; see 'reviews' below",
    )
    p.add_argument(
        "--out", required=True, help="file to write (a folder for --format hf); OUT.spec.json is written beside it"
    )
    p.set_defaults(func=_cmd_export)


def _export_rule(args, run, samples):
    """The filter the export arguments ask for, and the spec it was read from (None without --spec)."""
    from mimic_explorer.filters.rules import FilterRule, all_of
    from mimic_explorer.filters.spec import rule_from_spec
    from mimic_explorer.store.filter_files import read_spec_file

    if args.rule:
        if args.per_class or args.column:
            raise UserError(
                "with --rule, write the column and ':per-class' into each rule "
                "(e.g. --rule mimic_score:drop=15%:per-class), not --column / --per-class"
            )
        return all_of([_parse_rule(text) for text in args.rule]), None
    if args.spec:
        spec = read_spec_file(args.spec)
        return rule_from_spec(spec, run.meta, samples), spec
    column = args.column or "mimic_score"
    if args.ensemble:
        return FilterRule("ensemble", None, column, args.per_class), None
    kind, value = next(
        (k, v)
        for k, v in (
            ("threshold", args.threshold),
            ("quantile", args.quantile),
            ("top_fraction", args.top_fraction),
            ("keep_count", args.keep_count),
        )
        if v is not None
    )
    return FilterRule(kind, value, column, args.per_class), None


def _export_reviews(args, run):
    """The review decisions an export applies: those its ``--spec`` applied, all of the run's with ``--reviews
    apply`` (the default), none with ``--reviews ignore``."""
    from mimic_explorer.store.reviews import applied_for_spec, applied_now

    if args.spec:
        from mimic_explorer.filters.spec import reviews_in_spec
        from mimic_explorer.store.filter_files import read_spec_file

        recorded = reviews_in_spec(read_spec_file(args.spec))
        return None if recorded is None else applied_for_spec(run.layout, recorded)
    return applied_now(run.layout) if args.reviews == "apply" else None


def _write_reviews_file(args, run) -> int:
    """``export --format reviews``: the run's decisions alone (latest per sample), by --out's extension."""
    from mimic_explorer.store.atomic import atomic_write
    from mimic_explorer.store.reviews import reviews_table

    if args.spec or args.rule or args.ensemble or _one_rule_value(args) is not None:
        raise UserError("--format reviews writes the run's review decisions alone: drop the filter options")
    table = reviews_table(run.layout, run.class_names)
    table["time"] = table["time"].astype(str)
    suffix = Path(args.out).suffix.lower()

    def write(tmp: str) -> None:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        elif suffix == ".json":
            table.to_json(tmp, orient="records", indent=1)
        else:
            table.to_parquet(tmp, index=False)

    out = atomic_write(Path(args.out).expanduser(), write)
    counts = ", ".join(f"{k} {v}" for k, v in table["decision"].value_counts().items())
    print(f"{len(table)} reviewed samples ({counts or 'none'})")
    print(out)
    return 0


def _one_rule_value(args):
    return next((v for v in (args.threshold, args.quantile, args.top_fraction, args.keep_count) if v is not None), None)


def _cmd_export(args) -> int:
    from mimic_explorer.filters.formats import EXPORT_FORMATS, FOLDER_FORMATS
    from mimic_explorer.filters.rules import FilterError, describe
    from mimic_explorer.filters.spec import SpecError
    from mimic_explorer.store.filter_files import check_target, export
    from mimic_explorer.store.reader import RunError, open_run
    from mimic_explorer.store.reviews import ReviewError
    from mimic_explorer.store.sample_columns import indexed_samples
    from mimic_explorer.store.targets import OutputFileError, check_output_file

    try:
        fmt = args.format or Path(args.out).suffix.lstrip(".").lower()
        if args.format == "reviews":
            check_output_file(args.out, "--out")
            return _write_reviews_file(args, open_run(args.run))
        if fmt not in EXPORT_FORMATS:
            raise UserError(f"cannot tell the format from {args.out!r}; pass --format {'|'.join(EXPORT_FORMATS)}")
        if not (args.spec or args.rule or args.ensemble or _one_rule_value(args) is not None):
            raise UserError(
                "give a filter: one of --ensemble, --threshold, --quantile, --top-fraction, --keep-count, "
                "--rule or --spec"
            )
        if fmt not in FOLDER_FORMATS:
            check_output_file(args.out, "--out")  # a folder, or an unwritable place, is said before the run is read
        else:
            check_output_file(str(args.out).rstrip("/") + ".spec.json", "--out's spec")  # the folder's place
        check_target(args.out, fmt)  # ... and a folder where the spec goes
        run = open_run(args.run)
        samples = indexed_samples(run)  # the app's index: csv / parquet / uids stream at any pool size
        rule, spec = _export_rule(args, run, samples)
        reviews = _export_reviews(args, run)
        result, written, out, spec_path = export(
            samples, run.meta, rule, fmt, args.out, reapplying=spec, reviews=reviews
        )
    except SpecError as exc:
        raise UserError(f"spec {args.spec}: {exc}" if args.spec else str(exc)) from None
    except (RunError, FilterError, OutputFileError, ReviewError) as exc:
        raise UserError(str(exc)) from None
    if result.message:
        print(f"note: {result.message}", file=sys.stderr)
    if reviews is not None and reviews.rows:
        applied = f"{len(reviews.decisions)} samples ({reviews.rows} log rows)"
        print(f"  review decisions applied: {applied}", file=sys.stderr)
    for clause, part in zip(rule.clauses, result.clauses, strict=False):
        print(f"  {describe(clause)}: keeps {part.kept} alone", file=sys.stderr)
    print(
        f"kept {result.kept} of {result.total} samples ({describe(rule)}); spec {written['spec_hash']} -> {spec_path}"
    )
    print(out)
    return 0


def _add_review(sub) -> None:
    p = sub.add_parser(
        "review",
        help="record a decision (keep, drop, relabel) for samples of a run, or list the decisions",
        description="Append one decision per sample to RUN/reviews.parquet (the latest per sample wins). "
        "export applies them on top of its rule (--reviews apply, the default). Without --decision, list the "
        "latest decision of every reviewed sample.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--ids", nargs="+", metavar="ID", help="sample ids to decide on")
    p.add_argument("--ids-file", metavar="FILE", help="a file of sample ids, one a line (or a csv with sample_id)")
    p.add_argument("--decision", choices=choices.REVIEW_DECISIONS, help="keep, drop or relabel")
    p.add_argument("--label", metavar="CLASS", help="relabel: the class (name or index) the samples belong to")
    p.add_argument("--note", default="", help="a note kept with each decision")
    p.set_defaults(func=_cmd_review)


def _review_ids(args) -> list[str]:
    ids = list(args.ids or [])
    if args.ids_file:
        path = Path(args.ids_file).expanduser()
        if not path.is_file():
            raise UserError(f"--ids-file {path} does not exist")
        text = path.read_text(encoding="utf-8").splitlines()
        if text and text[0].split(",")[0].strip() == "sample_id":
            import pandas as pd

            ids += pd.read_csv(path, usecols=["sample_id"], dtype=str)["sample_id"].tolist()
        else:
            ids += [line.strip() for line in text if line.strip()]
    return ids


def _cmd_review(args) -> int:
    from mimic_explorer.store.reader import RunError, open_run
    from mimic_explorer.store.reviews import ReviewError, append_reviews, reviews_table

    try:
        run = open_run(args.run)
        if args.decision is None:
            if args.ids or args.ids_file or args.label:
                raise UserError("--ids, --ids-file and --label go with --decision")
            table = reviews_table(run.layout, run.class_names)
            print(table.to_string(index=False) if len(table) else "no review decisions in this run")
            return 0
        ids = _review_ids(args)
        if not ids:
            raise UserError("give the samples to decide on: --ids ID … or --ids-file FILE")
        rows = append_reviews(
            run.layout,
            ids,
            args.decision,
            run_ids=run.samples["sample_id"].to_numpy(),
            class_names=run.class_names,
            label=args.label,
            note=args.note,
        )
    except (RunError, ReviewError) as exc:
        raise UserError(str(exc)) from None
    target = f" to {run.class_names[int(rows['label'].iloc[0])]}" if args.decision == "relabel" else ""
    print(f"recorded {args.decision}{target} for {len(rows)} sample(s) in {run.layout.reviews}")
    return 0


def _add_map(sub) -> None:
    p = sub.add_parser(
        "map",
        help="lay out a run's embeddings in 2-D for the app's Map view (PCA, UMAP) or bring your own x, y",
        description="Compute (again) the 2-D layout the app's Map view shows, from the embeddings the run kept "
        "(labelled: the head's inputs; pairs: the reference's image or caption embeddings), and keep it in "
        "RUN/maps/. On pools past 200,000 samples, also build the nearest-neighbour index for 'more like "
        "this' when hnswlib is installed. --coords keeps your own coordinates instead (a parquet or csv of "
        "sample_id, x, y naming every sample once).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--method", choices=choices.MAP_METHODS, default="pca", help="pca, or umap (needs umap-learn)")
    p.add_argument("--source", choices=choices.MAP_SOURCES, default=None, help="which embedding (default: image)")
    p.add_argument("--coords", metavar="FILE", help="your own coordinates: sample_id, x, y")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_map)


def _cmd_map(args) -> int:
    from mimic_explorer.maps.layout2d import MapError
    from mimic_explorer.maps.run_map import import_coords, make_map
    from mimic_explorer.store.reader import RunError, open_run
    from mimic_explorer.util.progress import tqdm_progress

    try:
        run = open_run(args.run)
        samples = run.samples
        if args.coords:
            import_coords(run.layout, samples["sample_id"].to_numpy(), args.coords)
            name = "coords"
        else:
            progress = (lambda stage, done, total: None) if args.quiet else tqdm_progress()
            name, _ = make_map(run.layout, len(samples), args.source, args.method, progress)
    except (RunError, MapError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"map {name}: {len(samples)} samples -> {run.layout.map_coords(name)}")
    print(run.layout.root)
    return 0


def _add_runs(sub) -> None:
    p = sub.add_parser(
        "runs",
        help="list the runs in a folder with status, data, size and date",
        description="List run directories under DIR (children and grandchildren), newest first.",
    )
    p.add_argument("folder", nargs="?", default=".", help="folder holding runs (default: current folder)")
    p.set_defaults(func=_cmd_runs)


def _cmd_runs(args) -> int:
    from mimic_explorer.store.listing import find_runs

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    entries = find_runs(folder)
    if not entries:
        print(f"no runs under {folder}", file=sys.stderr)
        return 0
    print(f"{'status':<10}{'samples':>9}{'MB':>8}  {'created':<17} {'run id':<22} {'data':<40} path")
    for e in entries:
        samples = e.meta.get("summary", {}).get("samples", "")
        data = str(e.meta.get("source", {}).get("spec") or e.meta.get("config", {}).get("data", ""))
        created = e.created[:16].replace("T", " ")
        note = f"  ({e.note})" if e.note and not e.problem else ""
        print(
            f"{e.status:<10}{samples!s:>9}{_megabytes(e.path):>8.1f}  {created:<17} {e.run_id:<22} {data[:40]:<40} "
            f"{e.path}{note}"
        )
    unreadable = [e for e in entries if e.problem]
    for e in unreadable:
        print(f"error: {e.problem}", file=sys.stderr)
    return 2 if unreadable else 0


def _megabytes(path: Path) -> float:
    """The size of everything under ``path`` (files that vanish or cannot be read while counting: 0)."""
    total = 0
    for item in path.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            pass
    return total / 1e6


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="open the explorer app on a run (panel serve)",
        description="Serve the explorer on RUN (a run directory or a folder of runs). Binds to "
        "localhost. Ctrl-C or SIGTERM stops the server (and anything it started).",
    )
    p.add_argument("run", nargs="?", help="run directory (default: the cached demo run)")
    p.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    p.add_argument("--address", default="localhost", help="address to bind (default localhost)")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.set_defaults(func=_cmd_serve)


def _check_port_free(address: str, port: int) -> None:
    """``UserError`` when something already listens on ``address:port`` (the server would die with a
    traceback-laden log instead). The server binds with SO_REUSEADDR, so this check does too."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise UserError(f"--port {port} is not a port number (1-65535)")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--address {address!r} cannot be resolved: {exc.strerror or exc}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UserError(f"port {port} on {address} is already in use; pick another with --port") from None


def _cmd_serve(args) -> int:
    """``panel serve app.py`` as a child in its own process group, stopped with everything it started
    when this command is stopped (util/process_group.py says why a child and not an in-process server)."""
    import signal

    from mimic_explorer.util.process_group import run_process_group

    app = Path(__file__).with_name("app.py")
    command = [
        sys.executable,
        "-m",
        "panel",
        "serve",
        str(app),
        "--port",
        str(args.port),
        "--address",
        args.address,
        "--allow-websocket-origin",
        f"{args.address}:{args.port}",
    ]
    if args.show:
        command.append("--show")
    if args.run:
        if not Path(args.run).expanduser().is_dir():
            raise UserError(f"run directory {args.run} does not exist")
        command += ["--args", str(Path(args.run).expanduser().resolve())]
    _check_port_free(args.address, args.port)

    def say_stopping(signum: int) -> None:
        print(f"stopping the server ({signal.Signals(signum).name})", file=sys.stderr)

    return run_process_group(command, on_stop=say_stopping)


def build_parser() -> argparse.ArgumentParser:
    """The ``mimic-explorer`` parser, one subcommand per command (their choices come from ``util.choices``). Built apart
    from ``main`` so that tests and docs read the help text without running anything."""
    parser = _Parser(
        prog="mimic-explorer",
        description="Compute, explore and act on Grad-Mimic sample-utility (mimic) scores.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mimic-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_score(sub)
    _add_export(sub)
    _add_review(sub)
    _add_map(sub)
    _add_runs(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status. A mistake of the user's
    (``UserError``, ``RunDirectoryError``) is one line ``error: ...`` and status 2, never a traceback; Ctrl-C is status
    130."""
    from mimic_explorer.store.targets import RunDirectoryError  # stdlib only: `serve` need not load pyarrow

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, RunDirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"error: {exc.strerror or exc}{where}; free some space and run the same command again "
            "(a run resumes where it stopped)",
            file=sys.stderr,
        )
        return 2


def console_main() -> None:
    """The ``mimic-explorer`` program (and ``python -m mimic_explorer``): ``main`` on ``sys.argv``, then an exit that
    a native thread pool's teardown cannot turn into SIGABRT after the work is written
    (``util/process_exit.py``). An unexpected exception still ends the usual way, with its traceback."""
    from mimic_explorer.util.process_exit import exit_after_python_teardown

    exit_after_python_teardown(main())


if __name__ == "__main__":
    console_main()
