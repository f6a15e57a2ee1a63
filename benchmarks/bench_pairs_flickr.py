"""The miniature of the paper's DataComp experiment on Flickr8k, through the command line, on a CPU.

Protocol (the validity precondition holds: model and reference share their towers, and the reference
never sees a pool photo; the test photos are in neither):

1. Image tower: ``small_cnn`` trained on CIFAR-10 (``train --arch small_cnn``, shards 00-03, 4
   epochs; shard 04 measures it) or ``--image-tower FILE``.
2. "Public checkpoint" P: the built-in dual encoder around that CNN, trained plainly on the clean
   dev split (1,000 photos; ``--all-captions``: each step pairs a photo with one of its five
   captions) with the image tower frozen (``--frozen-image-tower``): the text tower, both
   projections and the logit scale learn.
3. Pool: ``train-00..01`` (4,000 pairs, caption #0 each) with 30 % or 50 % of the captions swapped
   (``--caption-noise``). Scoring run: ``train --frozen-towers --init P --fresh-projections
   --reference P --starting-epoch E`` — P's towers, frozen; the projections restarted from the
   values P's own training started from and trained plainly (``--starting-epoch`` = the epochs:
   uniform weights) while every pair's proj on the text projection is recorded at every step; one
   run per Stage-2 binarisation. The same with Grad-Mimic re-weighting (no ``--starting-epoch``) at
   30 % gives its own mimic row and the Grad-Mimic recall row.
4. Held-out test: ``train-02`` (2,000 photos, all five captions of each: recall@1/5/10 by the
   standard protocol; chance recall@5 ≈ 0.0025 both ways).
5. Recall rows: projections trained plainly from the same start on the pool (no filter: the 30 %
   scoring run itself), on the pairs kept by the reference CLIP score's top 70 %, by the mimic keep
   (Stage 2 of that run), and by CLIP-score top 70 % minus the mimic bottom 15 % (``export
   --rule``), each with its captions as in the pool; and the Grad-Mimic re-weighted run. Same
   epochs for every row (a smaller subset gets fewer steps).
6. Trained towers (``--towers``): the 30 % pool from the same start (P's towers, projections
   restarted) with the text tower learning too (``--frozen-image-tower`` instead of
   ``--frozen-towers``), or both towers (the pairs decoded every epoch), plainly (scores recorded)
   and with Grad-Mimic re-weighting: recall, the mimic score's AUROC and the towers' drift from P
   after the last epoch.

``--study`` (issue 25) instead measures the pairs signals on three noise protocols at each of
``--rates``: ``swap`` (the captions of the chosen pairs deranged, ``--caption-noise``), ``hard`` (each
chosen pair gets the caption of the most similar other photo under P's image embedding) and
``hard-words`` (of the photo whose caption shares the most content words); per pool one run with the
text and one with the image projection as mimic layer; then every signal, the z-score combinations,
the batch-noise remedies of the reference loss (``pairs_study``), the AND filter against the CLIP score
alone, quality estimators, and the app's default (this checkout's pairs ``combined_score``), as
markdown tables and ``WORK/study.json``.

Every run is a ``mimic-explorer`` command; the CLI reuses a finished identical run, so a rerun only
computes what changed. Runs and files live under ``--work`` (outside the repository). Prints markdown
tables and writes ``WORK/results.json``.

Usage: OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_pairs_flickr.py [--work DIR] [--image-tower FILE] [--study]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer import open_run
from mimic_explorer.data.specs import open_source
from mimic_explorer.store.run_arrays import read_row_array

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FLICKR = DATA / "flickr8k"
SIGNALS = (
    "mimic_score",
    "proj_mean",
    "clip_score_ref",
    "clip_score_model",
    "reference_loss",
    "model_loss",
    "combined_score",
)
BINARISATIONS = ("weight", "gmm", "kmeans")


class Bench:
    """Runs commands (timed, logged) and keeps the results."""

    def __init__(self, args):
        self.args, self.work = args, Path(args.work)
        (self.work / "runs").mkdir(parents=True, exist_ok=True)
        self.walls: dict[str, float] = {}
        self.subset = has_subset_option()
        self.made: dict[str, Path] = {}  # the run that made each model

    def cli(self, name: str, *argv: str, out: bool = True) -> Path:
        """``mimic-explorer ARGV [--out WORK/runs/NAME]``; returns the run directory."""
        run = self.work / "runs" / name
        command = [sys.executable, "-m", "mimic_explorer", *argv] + (["--out", str(run), "--quiet"] if out else [])
        if out and self.args.force and "--force" not in command:
            command.append("--force")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 and "holds a different run" in done.stderr:  # an earlier protocol's run: redo it
            done = subprocess.run([*command, "--force"], cwd=ROOT, env=env, capture_output=True, text=True)
        self.walls[name] = round(time.perf_counter() - started, 1)
        (self.work / "logs").mkdir(exist_ok=True)
        (self.work / "logs" / f"{name}.log").write_text(" ".join(command) + "\n" + done.stdout + done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"  {name}: {self.walls[name]} s", file=sys.stderr, flush=True)
        return run

    def model(self, name: str, *argv: str) -> Path:
        """A run that saves a model, named by a hash of its command: made once, then reused as it is."""
        name = f"{name}-{hashlib.sha256(' '.join(argv).encode()).hexdigest()[:10]}"
        path = self.work / f"{name}.pt"
        self.made[name.split("-")[0]] = self.work / "runs" / name
        if self.args.force or not path.exists():
            self.cli(name, *argv, "--save-model", str(path), "--force")
        return path


def image_tower(bench: Bench) -> Path:
    if bench.args.image_tower:
        return Path(bench.args.image_tower)
    return bench.model(
        "cnn",
        "train",
        "--data",
        f"wds:{DATA}/cifar10/train-{{00..03}}.tar",
        "--arch",
        "small_cnn",
        "--epochs",
        "4",
        "--batch-size",
        "128",
        "--lr",
        "0.003",
        "--test-data",
        f"wds:{DATA}/cifar10/train-04.tar",
    )


def pretrained(bench: Bench, cnn: Path) -> Path:
    a = bench.args
    return bench.model(
        "pretrained",
        "train",
        "--data",
        f"wds:{FLICKR}/dev-00.tar",
        "--arch",
        "small_dual",
        "--init",
        str(cnn),
        "--frozen-image-tower",
        "--all-captions",
        "--image-size",
        str(a.image_size),
        "--epochs",
        str(a.pre_epochs),
        "--lr",
        str(a.pre_lr),
        "--weight-decay",
        str(a.pre_wd),
        "--batch-size",
        str(a.batch_size),
        "--seed",
        str(a.seed),
        "--test-data",
        a.test,
    )


def pool_args(bench: Bench, p: Path) -> list[str]:
    a = bench.args
    return [
        "--data",
        a.pool,
        "--arch",
        "small_dual",
        "--frozen-towers",
        "--init",
        str(p),
        "--fresh-projections",
        "--epochs",
        str(a.pool_epochs),
        "--lr",
        str(a.pool_lr),
        "--weight-decay",
        "0",
        "--batch-size",
        str(a.batch_size),
        "--seed",
        str(a.seed),
        "--test-data",
        a.test,
    ]


def scored(
    bench: Bench,
    p: Path,
    rate: float,
    binarise: str,
    reweight: bool = False,
    layer: str | None = None,
    data: Path | None = None,
) -> Path:
    """A run against P on the noisy pool: scores recorded at every step while the projections train
    plainly (``--starting-epoch`` = the epochs: uniform weights), or with Grad-Mimic re-weighting.
    ``layer``: the mimic layer (default ``--mimic-layer``); ``data``: a hard-negative pool's shard
    (``hard_pool``: its captions already replaced, so no ``--caption-noise``)."""
    plain = [] if reweight else ["--starting-epoch", str(bench.args.pool_epochs)]
    layer = layer or bench.args.mimic_layer
    args = pool_args(bench, p)
    noise = ["--caption-noise", str(rate)]
    if data is not None:
        args[1], noise = f"wds:{data}", []
    name = f"{'gm' if reweight else 'rec'}-{int(rate * 100)}-{binarise}"
    if data is not None:
        name = f"{data.name.rsplit('-', 2)[0]}-{name}"  # hard-… or hard-words-…
    if layer != bench.args.mimic_layer:
        name += f"-{layer}"
    return bench.cli(
        name,
        "train",
        *args,
        *plain,
        "--reference",
        str(p),
        "--mimic-layer",
        layer,
        *noise,
        "--binarise",
        binarise,
    )


#: words the word-overlap protocol does not count (they say nothing about what a photo shows)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "of",
        "in",
        "on",
        "at",
        "to",
        "and",
        "with",
        "its",
        "his",
        "her",
        "their",
        "by",
        "for",
        "from",
        "into",
        "while",
        "as",
        "two",
        "three",
        "one",
    ]
)


def content_words(caption: str) -> set[str]:
    return {w for w in "".join(c if c.isalnum() else " " for c in caption.lower()).split() if w not in STOPWORDS}


def word_overlap(captions: np.ndarray) -> np.ndarray:
    """(N, N) Jaccard overlap of the captions' content words."""
    sets = [content_words(c) for c in captions]
    vocabulary = {w: k for k, w in enumerate(sorted(set().union(*sets)))}
    bags = np.zeros((len(sets), len(vocabulary)), dtype=np.float32)
    for row, words in enumerate(sets):
        bags[row, [vocabulary[w] for w in words]] = 1.0
    shared = bags @ bags.T
    sizes = bags.sum(1)
    return shared / np.maximum(sizes[:, None] + sizes[None, :] - shared, 1.0)


def hard_pool(bench: Bench, p: Path, rate: float, by: str = "image") -> tuple[Path, pd.Series]:
    """The hard-negative protocol: ``int(rate · N)`` seeded-chosen pairs each get the caption of the most
    similar OTHER photo of the pool (a photo whose caption is the same text is skipped) — a plausible
    caption written for a similar photo, not a random one. ``by``: ``image`` — nearest neighbour under P's
    image embedding (cosine; the embeddings the swap run at ``rate`` stored, ``embeddings/image.npy``: a
    photo's embedding under P does not depend on its caption), adversarial to P by construction;
    ``words`` — the photo whose caption shares the most content words (Jaccard), independent of any
    model. Written once as a shard; returns it and the truth (``is_noisy`` by sample id)."""
    run = open_run(scored(bench, p, rate, bench.args.keep_binarise))
    samples = run.samples
    ids = samples["sample_id"].astype(str).to_numpy()
    own = samples["true_caption" if "true_caption" in samples.columns else "caption"].astype(str).to_numpy()
    path = bench.work / "subsets" / f"hard{'' if by == 'image' else '-' + by}-{int(rate * 100)}-{len(ids)}.tar"
    truth_file = path.with_suffix(".truth.csv")
    if path.exists() and truth_file.exists():
        truth = pd.read_csv(truth_file, dtype={"sample_id": str}).set_index("sample_id")["is_noisy"]
        return path, truth.astype(bool)
    if by == "image":
        image = read_row_array(run.layout.embedding("image"), len(ids)).astype(np.float64)
        image /= np.linalg.norm(image, axis=1, keepdims=True)
    else:
        overlap = word_overlap(own)
    rng = np.random.default_rng(bench.args.seed)
    chosen = np.sort(rng.choice(len(ids), size=int(rate * len(ids)), replace=False))
    captions = own.copy()
    for i in chosen:
        similarity = image @ image[i] if by == "image" else overlap[i].astype(np.float64)
        similarity[own == own[i]] = -np.inf  # itself, and any photo with the very same caption
        captions[i] = own[int(np.argmax(similarity))]
    noisy = np.zeros(len(ids), dtype=bool)
    noisy[chosen] = True
    write_shard(path, open_source(bench.args.pool).shards, dict(zip(ids, captions, strict=True)))
    pd.DataFrame({"sample_id": ids, "is_noisy": noisy}).to_csv(truth_file, index=False)
    return path, pd.Series(noisy, index=ids, name="is_noisy")


def detection_rows(run: Path) -> dict[str, dict]:
    evaluation = open_run(run).meta["evaluation"]
    return {s: evaluation[s] for s in SIGNALS if s in evaluation}


def keep_list(bench: Bench, run: Path, name: str, *rule: str) -> tuple[Path, list[str]]:
    """``export`` of a filter on ``run`` as csv: (the file, its kept sample ids)."""
    out = bench.work / "subsets" / f"{name}.csv"
    out.parent.mkdir(exist_ok=True)
    bench.cli(f"export-{name}", "export", str(run), *rule, "--format", "csv", "--out", str(out), out=False)
    return out, pd.read_csv(out)["sample_id"].astype(str).tolist()


def write_shard(path: Path, shards: list[str], captions: dict[str, str]) -> Path:
    """A shard of the pairs ``captions`` names, each with that caption (in ``.txt`` and the ``.json``),
    copied from ``shards``; written once (keyed by the caller's file name)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with tarfile.open(partial, "w") as out:
        for shard in shards:
            with tarfile.open(shard) as src:
                for member in src:
                    key, ext = member.name.rsplit(".", 1)
                    if key not in captions:
                        continue
                    data = src.extractfile(member).read()
                    if ext == "txt":
                        data = captions[key].encode()
                    elif ext == "json":
                        meta = json.loads(data)
                        meta.update(caption=captions[key], all_captions=[captions[key]])
                        data = json.dumps(meta).encode()
                    info = tarfile.TarInfo(member.name)
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
    partial.rename(path)
    return path


def has_subset_option() -> bool:
    """Whether this checkout's ``train`` takes ``--subset FILE`` (restrict a pool to a keep-list)."""
    done = subprocess.run(
        [sys.executable, "-m", "mimic_explorer", "train", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return "--subset" in done.stdout


def filtered_data(bench: Bench, noisy: Path, captions: dict[str, str], keep_csv: Path, ids: list[str]) -> list[str]:
    """``--data`` (and ``--subset``) of the pairs a filter kept, with their captions as in the pool:
    the noisy pool written once, restricted by ``--subset`` when the CLI has it, else a shard of the
    kept pairs."""
    if bench.subset:
        return ["--data", f"wds:{noisy}", "--subset", str(keep_csv)]
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:10]
    kept = write_shard(noisy.with_name(f"kept-{digest}.tar"), [str(noisy)], {k: captions[k] for k in ids})
    return ["--data", f"wds:{kept}"]


def recall_rows(bench: Bench, p: Path, gm: Path) -> list[dict]:
    """Recall@1/5 of projections trained plainly on the pool (``gm``: the run whose scores the filters
    use, trained plainly) and on filtered subsets, and with Grad-Mimic re-weighting (30 % noise)."""
    a = bench.args
    samples = open_run(gm).samples
    swapped = samples.set_index("sample_id")["is_noisy"]
    rows = []

    def row(name: str, run: Path, ids: list[str] | None) -> None:
        recall = open_run(run).meta["summary"]["test_recall"]
        kept = len(samples) if ids is None else len(ids)
        clean = float(1 - swapped.mean()) if ids is None else float(1 - swapped.reindex(ids).mean())
        rows.append(
            {
                "training set": name,
                "pairs": kept,
                "clean fraction": round(clean, 3),
                **{k: round(v, 4) for k, v in recall.items()},
            }
        )

    base = pool_args(bench, p)
    row("pool, no filter (plain training)", gm, None)
    captions = samples.set_index("sample_id")["caption"].astype(str).to_dict()
    noisy = write_shard(bench.work / "subsets" / f"noisy-30-{len(captions)}.tar", open_source(a.pool).shards, captions)
    without_data = base[2:]  # pool_args starts with --data SPEC
    filters = {
        "CLIP-score top 70 %": ("--rule", "clip_score_ref:top=70%"),
        "mimic keep (Stage 2)": ("--ensemble",),
        "CLIP-score top 70 % minus mimic bottom 15 %": (
            "--rule",
            "clip_score_ref:top=70%",
            "--rule",
            "mimic_score:drop=15%",
        ),
    }
    for k, (name, rule) in enumerate(filters.items()):
        csv, ids = keep_list(bench, gm, f"filter{k}", *rule)
        row(
            name,
            bench.cli(f"subset-{k}", "train", *filtered_data(bench, noisy, captions, csv, ids), *without_data),
            ids,
        )
    row(
        "pool, Grad-Mimic re-weighting (no filter)",
        scored(bench, p, 0.3, bench.args.keep_binarise, reweight=True),
        None,
    )
    return rows


def tower_rows(bench: Bench, p: Path) -> list[dict]:
    """Plain vs Grad-Mimic training with the text tower learning (image tower frozen) and with both
    towers learning, 30 % swapped."""
    a = bench.args
    base = [
        "--data",
        a.pool,
        "--arch",
        "small_dual",
        "--init",
        str(p),
        "--fresh-projections",
        "--epochs",
        str(a.pool_epochs),
        "--lr",
        str(a.pool_lr),
        "--weight-decay",
        "0",
        "--batch-size",
        str(a.batch_size),
        "--seed",
        str(a.seed),
        "--test-data",
        a.test,
        "--reference",
        str(p),
        "--mimic-layer",
        a.mimic_layer,
        "--caption-noise",
        "0.3",
        "--binarise",
        a.keep_binarise,
    ]
    rows = []
    plain = ["--starting-epoch", str(a.pool_epochs)]
    for name, key, extra in (
        ("text tower trained, plain (scores recorded)", "plain", ["--frozen-image-tower", *plain]),
        ("text tower trained, Grad-Mimic re-weighting", "gm", ["--frozen-image-tower"]),
        ("both towers trained, plain (scores recorded)", "both-plain", plain),
        ("both towers trained, Grad-Mimic re-weighting", "both-gm", []),
    ):
        run = open_run(bench.cli(f"towers-{key}", "train", *base, *extra))
        evaluation, meta = run.meta["evaluation"], run.meta
        rows.append(
            {
                "training": name,
                **{k: round(v, 4) for k, v in meta["summary"]["test_recall"].items()},
                "mimic AUROC": round(evaluation["mimic_score"]["auroc"], 3),
                "clip_score_model AUROC": round(evaluation["clip_score_model"]["auroc"], 3),
                "drift to P": round(meta["basis"]["drift_per_epoch"][-1]["to_reference"], 3),
            }
        )
    return rows


#: the hard-negative protocols: how the most similar other photo is found
HARD_BY = {"hard": "image", "hard-words": "words"}
#: the study's combinations (z-scores of the utilities averaged, ``pairs_study.zmean``)
STUDY_COMBOS = {
    "z(clip_ref)+z(clip_model)": ("clip_score_ref", "clip_score_model"),
    "z(clip_ref)+z(-log model_loss)": ("clip_score_ref", "model_loss"),
    "z(clip_ref)+z(-log ref_loss)": ("clip_score_ref", "reference_loss"),
    "z(clip_ref)+z(mimic)": ("clip_score_ref", "mimic_score"),
    "z(clip_ref)+z(proj_mean)": ("clip_score_ref", "proj_mean"),
    "z(clip_ref)+z(mimic_image)": ("clip_score_ref", "mimic_score_image"),
    "z(cos_mean)+z(-log ref_loss) (labelled form)": ("cos_mean", "reference_loss"),
    "z(clip_ref)+z(clip_model)+z(-log model_loss)": ("clip_score_ref", "clip_score_model", "model_loss"),
    "z(clip_model)+z(-log model_loss)": ("clip_score_model", "model_loss"),
    "z(clip_ref)+z(clip_model)+z(proj_mean)": ("clip_score_ref", "clip_score_model", "proj_mean"),
    "z(clip_ref)+z(-log ref_loss_bank)": ("clip_score_ref", "reference_loss_bank"),
}
STUDY_COLUMNS = (
    "mimic_score",
    "proj_mean",
    "proj_last",
    "cos_mean",
    "clip_score_ref",
    "clip_score_model",
    "reference_loss",
    "model_loss",
)


def clean_held_out(bench: Bench, p: Path) -> float:
    """The mean reference CLIP score of clean held-out pairs: the test photos with caption #0, scored
    against P by the pool command (one epoch, nothing injected); from the embeddings the run stores."""
    a = bench.args
    args = pool_args(bench, p)
    args[1] = a.test  # --data: the test photos
    args[args.index("--epochs") + 1] = "1"
    at = args.index("--test-data")
    del args[at : at + 2]
    run = open_run(bench.cli("clean-test-ref", "train", *args, "--starting-epoch", "1", "--reference", str(p)))
    n = len(run.samples)
    image, text = (read_row_array(run.layout.embedding(k), n).astype(np.float64) for k in ("image", "text"))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return float((image * text).sum(1).mean())


def study_cell(bench: Bench, p: Path, protocol: str, rate: float, clean_mean: float) -> dict:
    """Every studied signal of one pool (``pairs_study``): the text-layer run and the image-layer run on the
    same noisy pool, the batch-noise remedies of the reference loss, the AND filter."""
    import pairs_study
    import torch

    a = bench.args
    data, truth = (None, None) if protocol == "swap" else hard_pool(bench, p, rate, by=HARD_BY[protocol])
    started = time.perf_counter()
    text_run = open_run(scored(bench, p, rate, a.keep_binarise, layer="text", data=data))
    image_run = open_run(scored(bench, p, rate, a.keep_binarise, layer="image", data=data))
    samples = text_run.samples
    frame = samples[["sample_id", *[c for c in STUDY_COLUMNS if c in samples.columns]]].copy()
    frame["sample_id"] = frame["sample_id"].astype(str)
    image = image_run.samples.set_index(image_run.samples["sample_id"].astype(str))
    for column in ("mimic_score", "proj_mean", "cos_mean"):
        frame[f"{column}_image"] = image[column].reindex(frame["sample_id"]).to_numpy()
    is_noisy = (
        samples["is_noisy"].to_numpy(bool) if truth is None else truth.reindex(frame["sample_id"]).to_numpy(dtype=bool)
    )
    runs_s = time.perf_counter() - started
    # batch noise: the reference loss recomputed from the stored reference embeddings
    from mimic_explorer.models.dual_checkpoint import read_dual_checkpoint

    scale = float(torch.as_tensor(read_dual_checkpoint(p)[1]["logit_scale"]).exp())
    emb = {k: read_row_array(text_run.layout.embedding(k), len(frame)).astype(np.float64) for k in ("image", "text")}
    emb = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in emb.items()}
    remedy_started = time.perf_counter()
    for name, values in pairs_study.batch_remedies(emb["image"], emb["text"], scale, a.batch_size, k=8).items():
        frame[name] = values
    remedy_s = time.perf_counter() - remedy_started
    signals = pairs_study.study(frame, is_noisy, STUDY_COMBOS)
    # quality estimators from the reference's CLIP score and random mismatches of the pool (the swap null)
    clip = (emb["image"] * emb["text"]).sum(1)
    null = pairs_study.mismatch_null(emb["image"], emb["text"], seed=a.seed)
    estimators = {
        "Storey, random-mismatch null (λ = 0.5)": pairs_study.storey_quality(clip, null),
        "mixture, random-mismatch null + Gaussian clean": pairs_study.known_null_quality(clip, null),
        "GMM split of clip_score_ref": signals["clip_score_ref"]["kept"],
        "Stage 2 keep (mimic_score, gmm)": float(samples["keep"].astype(bool).mean()),
        "held-out clean mean vs mismatch mean (test photos)": pairs_study.held_out_quality(
            clip, pairs_study.mismatch_mean(emb["image"], emb["text"]), clean_mean
        ),
    }
    # the app's default on this pool: this checkout's pairs combined score and its split (what ``finalize``
    # writes as combined_score / combined_keep, with the pool run's --test-data as the held-out clean pairs;
    # recomputed here so runs cached by another checkout agree)
    from mimic_explorer.commands.finalize import pair_combined_split
    from mimic_explorer.stage2 import baselines
    from mimic_explorer.stage2.evaluation import detection_metrics
    from mimic_explorer.stage2.pair_quality import CleanPairs

    inputs = {n: samples[n].to_numpy() for n in baselines.PAIR_COMBINED_INPUTS}
    clean = CleanPairs(clean_mean, 0, emb["image"].sum(0), emb["text"].sum(0))
    score, keep, report = pair_combined_split(inputs, clean)
    default = {
        "inputs": list(baselines.PAIR_COMBINED_INPUTS),
        "auroc": pairs_study.auroc(is_noisy, -score),
        "kept": float(keep.mean()),
        "f1": detection_metrics(is_noisy, score, keep)["f1"],
        "mimic_keep_f1": detection_metrics(
            is_noisy, samples["mimic_score"].to_numpy(), samples["keep"].to_numpy(dtype=bool)
        )["f1"],
        "split": report.as_dict(),
    }
    estimators["GMM split of the default (combined_keep before)"] = pairs_study.split_quality(score)
    estimators["the default's split now: held-out clean pairs (combined_keep)"] = default["kept"]
    filters = {
        "mimic (text)": pairs_study.and_filter(
            is_noisy, frame["clip_score_ref"].to_numpy(), frame["mimic_score"].to_numpy()
        ),
        "mimic (image)": pairs_study.and_filter(
            is_noisy, frame["clip_score_ref"].to_numpy(), frame["mimic_score_image"].to_numpy()
        ),
    }
    return {
        "protocol": protocol,
        "rate": rate,
        "true_quality": float(1 - is_noisy.mean()),
        "signals": signals,
        "default": default,
        "and_filter": filters,
        "quality_estimators": estimators,
        "runs_s": round(runs_s, 1),
        "remedy_s": round(remedy_s, 2),
    }


def study_tables(cells: list[dict]) -> str:
    """The study as markdown: AUROC per signal and pool, the default against the best single signal,
    kept against true quality, and the AND filter."""
    singles = [s for s in cells[0]["signals"] if s not in STUDY_COMBOS]
    combos = [s for s in cells[0]["signals"] if s in STUDY_COMBOS]
    head = [f"{c['protocol']} {int(c['rate'] * 100)} %" for c in cells]
    lines = ["| signal (AUROC; GMM split's kept fraction) | " + " | ".join(head) + " |"]
    lines.append("|---|" + "---:|" * len(cells))
    for name in singles + combos:
        row = [
            f"{c['signals'][name]['auroc']:.3f} ({c['signals'][name]['kept']:.2f})" if name in c["signals"] else "—"
            for c in cells
        ]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("| true quality | " + " | ".join(f"{c['true_quality']:.2f}" for c in cells) + " |")
    out = "\n".join(lines) + "\n\n"
    rows = []
    for c in cells:
        best = max((n for n in singles), key=lambda n: c["signals"][n]["auroc"])
        d = c["default"]
        rows.append(
            {
                "pool": f"{c['protocol']} {int(c['rate'] * 100)} %",
                "best single": f"{best} {c['signals'][best]['auroc']:.3f}",
                "default AUROC": round(d["auroc"], 3) if d else float("nan"),
                "default − best": round(d["auroc"] - c["signals"][best]["auroc"], 3) if d else float("nan"),
                "kept": round(d["kept"], 3) if d else float("nan"),
                "true quality": round(c["true_quality"], 3),
                "kept − true": round(d["kept"] - c["true_quality"], 3) if d else float("nan"),
                "split": (d.get("split") or {}).get("method", "two-group mixture") if d else "",
                "F1 (bad pairs dropped)": round(d["f1"], 3) if d and "f1" in d else float("nan"),
                "F1 of the mimic keep": round(d["mimic_keep_f1"], 3) if d and "mimic_keep_f1" in d else float("nan"),
            }
        )
    out += markdown(rows) + "\n\n"
    rows = []
    for c in cells:
        for layer, f in c["and_filter"].items():
            rows.append(
                {
                    "pool": f"{c['protocol']} {int(c['rate'] * 100)} %",
                    "mimic layer": layer,
                    "kept": f["kept"],
                    "bad kept, CLIP top 70 % ∧ mimic": round(f["clip_and_mimic_bad"], 3),
                    "bad kept, CLIP only (same size)": round(f["clip_only_bad"], 3),
                }
            )
    out += markdown(rows) + "\n\n"
    lines = ["| quality estimate | " + " | ".join(head) + " |", "|---|" + "---:|" * len(cells)]
    for name in cells[0]["quality_estimators"]:
        lines.append(f"| {name} | " + " | ".join(f"{c['quality_estimators'][name]:.3f}" for c in cells) + " |")
    lines.append("| true quality | " + " | ".join(f"{c['true_quality']:.3f}" for c in cells) + " |")
    return out + "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[h]:.3f}" if isinstance(r[h], float) else str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that fix the protocol — where runs live, the data, P's pretraining and the pool runs —
    shared with ``bench_pairs_redraws.py``: the same defaults find the same cached image tower, P and pools."""
    parser.add_argument("--work", default="/work/bench_work/pairs_flickr")
    parser.add_argument("--image-tower", help="an image classifier checkpoint for the image tower (default: train one)")
    parser.add_argument("--pool", default=f"wds:{FLICKR}/train-{{00..01}}.tar")
    parser.add_argument("--test", default=f"wds:{FLICKR}/train-02.tar")
    # sizes and schedules: P's pretraining (--pre-*) and the pool runs (--pool-*)
    for flag, kind, default in (
        ("--image-size", int, 64),
        ("--batch-size", int, 128),
        ("--seed", int, 0),
        ("--pre-epochs", int, 20),
        ("--pre-lr", float, 2e-3),
        ("--pre-wd", float, 1.0),
        ("--pool-epochs", int, 5),
        ("--pool-lr", float, 3e-3),
    ):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--mimic-layer", choices=["text", "image"], default="text")
    parser.add_argument("--rates", default="0.3,0.5")
    parser.add_argument(
        "--keep-binarise",
        choices=BINARISATIONS,
        default="gmm",
        help="the Stage-2 binarisation whose keep column the mimic filters use",
    )
    parser.add_argument("--force", action="store_true", help="redo every run (the CLI otherwise reuses finished ones)")
    parser.add_argument(
        "--protocols",
        default="swap,hard,hard-words",
        help="the study's noise protocols: swap (random derangement), hard (the caption of the nearest photo "
        "under P's image embedding), hard-words (of the photo whose caption shares the most content words)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_arguments(parser)
    parser.add_argument("--no-recall", action="store_true", help="skip the filtered-subset recall rows")
    parser.add_argument("--towers", action="store_true", help="also plain vs Grad-Mimic with the towers trained")
    parser.add_argument(
        "--study",
        action="store_true",
        help="the pairs signal study (issue 25): both protocols at --rates, text and image layer, "
        "combinations, batch-noise remedies, AND filters; writes WORK/study.json",
    )
    args = parser.parse_args()
    bench = Bench(args)
    started = time.perf_counter()
    p = pretrained(bench, image_tower(bench))
    if args.study:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        clean_mean = clean_held_out(bench, p)
        cells = [
            study_cell(bench, p, protocol, float(rate), clean_mean)
            for protocol in args.protocols.split(",")
            for rate in args.rates.split(",")
        ]
        print(study_tables(cells))
        total = round(time.perf_counter() - started, 1)
        (bench.work / "study.json").write_text(
            json.dumps({"cells": cells, "walls_s": bench.walls, "total_s": total}, indent=1)
        )
        print(f"\nwalls (s): {bench.walls}; total {total} s")
        return
    results: dict = {
        "options": vars(args),
        "reference_recall": open_run(bench.made["pretrained"]).meta["summary"]["test_recall"],
    }
    detection, quality = [], []
    for rate in [float(r) for r in args.rates.split(",")]:
        for binarise in BINARISATIONS:
            run = scored(bench, p, rate, binarise)
            rows = detection_rows(run)
            summary = open_run(run).meta["summary"]
            quality.append(
                {
                    "swapped": rate,
                    "binarise": binarise,
                    "estimated quality": round(summary["estimated_quality"], 3),
                    "true quality": round(summary["true_quality"], 3),
                    "mimic AUROC": round(rows["mimic_score"]["auroc"], 3),
                    "mimic F1": round(rows["mimic_score"]["f1"], 3),
                }
            )
            if binarise == args.keep_binarise:
                detection += [
                    {
                        "swapped": rate,
                        "signal": s,
                        "AUROC": round(m["auroc"], 3),
                        "AP": round(m["ap"], 3),
                        "F1": round(m.get("f1", float("nan")), 3),
                    }
                    for s, m in rows.items()
                ]
    results.update(detection=detection, quality=quality)
    reweighted = detection_rows(scored(bench, p, 0.3, args.keep_binarise, reweight=True))["mimic_score"]
    detection.append(
        {
            "swapped": 0.3,
            "signal": "mimic_score, Grad-Mimic re-weighting",
            "AUROC": round(reweighted["auroc"], 3),
            "AP": round(reweighted["ap"], 3),
            "F1": round(reweighted["f1"], 3),
        }
    )
    print(
        f"## detection of swapped captions (Stage 2: {args.keep_binarise}; "
        "F1 of baselines cut at mimic's kept fraction)\n"
    )
    print(markdown(detection) + "\n")
    print("## Stage-2 binarisation: estimated vs true quality\n")
    print(markdown(quality) + "\n")
    print(f"reference P recall on the test photos: {results['reference_recall']}\n")
    if not args.no_recall:
        results["recall"] = recall_rows(bench, p, bench.work / "runs" / f"rec-30-{args.keep_binarise}")
        print("## recall@k on the held-out photos (30 % swapped)\n")
        print(markdown(results["recall"]) + "\n")
    if args.towers:
        results["towers"] = tower_rows(bench, p)
        print("## the text tower trained too (30 % swapped)\n")
        print(markdown(results["towers"]) + "\n")
    results["walls_s"] = bench.walls
    results["total_s"] = round(time.perf_counter() - started, 1)
    (bench.work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"walls (s): {bench.walls}; total {results['total_s']} s")


if __name__ == "__main__":
    main()
