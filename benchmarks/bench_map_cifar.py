"""The map and the review loop on a real CIFAR-10 linear-probe run with 30 % injected symmetric noise.

Protocol (b) of ``bench_detection.py``: ``small_cnn`` trained plainly on shards 02–03 is the frozen
backbone; the reference is a linear probe on shards 00–01 with clean labels; the Grad-Mimic probe
trains on the same 20,000 images with 30 % symmetric label noise (20 epochs, batch 128, AdamW 1e-3).
Then, as a person would in the app:

1. the map: PCA of the run's embeddings (the backbone features) — how well the true classes form
   regions (silhouette of the 2-D points by true class, and by given label);
2. select the samples whose suggested label (``ref_pred``) differs from the given one and whose score
   is low (not kept by the run's Stage-2 filter), mark them ``drop`` (``mimic-explorer review``), and
   export with a rule that keeps everything: the keep-list drops exactly the reviewed samples;
3. precision and recall of "dropped = mislabeled" for that keep-list, beside the threshold-only filter
   (the run's ensemble keep) and cleanlab's ``find_label_issues`` on the saved reference
   probabilities (``reference_probs.npy``: the two lines of the guide).

Usage: python benchmarks/bench_map_cifar.py [--work ../bench_work/map] [--epochs 20]
Needs ``../shared/data/cifar10``; cleanlab for the last column (pip install cleanlab; benchmark only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT.parent / "shared" / "data" / "cifar10"
WORK = ROOT.parent / "bench_work" / "map"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_runs(work: Path, epochs: int) -> Path:
    """Backbone, reference probe and the noisy Grad-Mimic probe (each reused when already made)."""
    from mimic_explorer.commands.options import TrainOptions
    from mimic_explorer.commands.train import run_train

    pool = f"wds:{SHARDS}/train-{{00..01}}.tar"
    backbone = work / "backbone.pt"
    started = time.perf_counter()
    run_train(
        TrainOptions(
            f"wds:{SHARDS}/train-{{02..03}}.tar",
            "small_cnn",
            str(work / "backbone-run"),
            epochs=6,
            batch_size=128,
            lr=2e-3,
            save_model=str(backbone),
            quiet=True,
        ),
        log=say,
    )
    say(f"backbone ready ({time.perf_counter() - started:.0f} s)")
    probe = dict(init=str(backbone), linear_probe=True, epochs=epochs, batch_size=128, lr=1e-3, quiet=True)
    reference = work / "reference.pt"
    run_train(TrainOptions(pool, "small_cnn", str(work / "reference-run"), save_model=str(reference), **probe), log=say)
    run = run_train(
        TrainOptions(
            pool, "small_cnn", str(work / "gm-sym30"), reference=str(reference), label_noise=0.3, seed=0, **probe
        ),
        log=say,
    )
    say(f"runs ready ({time.perf_counter() - started:.0f} s in all)")
    return Path(run.path)


def detection(dropped: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of "dropped = mislabeled"."""
    tp = int((dropped & noisy).sum())
    precision = tp / max(int(dropped.sum()), 1)
    recall = tp / max(int(noisy.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"dropped": int(dropped.sum()), "precision": precision, "recall": recall, "f1": f1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(WORK))
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = make_runs(work, args.epochs)

    from sklearn.metrics import silhouette_score

    from mimic_explorer.cli import main as cli
    from mimic_explorer.maps.run_map import make_map
    from mimic_explorer.store.layout import RunLayout
    from mimic_explorer.store.reader import open_run

    run = open_run(run_dir)
    samples = run.samples
    layout = RunLayout(run_dir)
    layout.reviews.unlink(missing_ok=True)  # a fresh review log: the numbers are this script's decisions
    started = time.perf_counter()
    _, coords = make_map(layout, len(samples), method="pca")
    map_s = time.perf_counter() - started
    coords = np.asarray(coords)
    sample = np.random.default_rng(0).choice(len(samples), min(5000, len(samples)), replace=False)
    silhouette_true = float(silhouette_score(coords[sample], samples["true_label"].to_numpy()[sample]))
    silhouette_given = float(silhouette_score(coords[sample], samples["label"].to_numpy()[sample]))
    embeddings = np.load(layout.embedding("image"), mmap_mode="r")
    silhouette_features = float(
        silhouette_score(np.asarray(embeddings[sample], dtype=np.float32), samples["true_label"].to_numpy()[sample])
    )

    noisy = samples["is_noisy"].to_numpy(dtype=bool)
    differs = samples["ref_pred"].to_numpy() != samples["label"].to_numpy()
    low = ~samples["keep"].to_numpy(dtype=bool)
    chosen = differs & low
    ids_file = work / "selected-ids.txt"
    ids_file.write_text("\n".join(samples["sample_id"][chosen]) + "\n")
    assert cli(["review", str(run_dir), "--ids-file", str(ids_file), "--decision", "drop", "--note", "map"]) == 0
    out = work / "keep-reviewed.csv"
    assert cli(["export", str(run_dir), "--quantile", "0", "--out", str(out)]) == 0
    kept = set(pd.read_csv(out, dtype={"sample_id": str})["sample_id"])
    dropped_by_export = ~samples["sample_id"].isin(kept).to_numpy()
    assert (dropped_by_export == chosen).all()

    rows = {
        "suggested label differs AND not kept (reviewed drop, exported)": detection(dropped_by_export, noisy),
        "suggested label differs (alone)": detection(differs, noisy),
        "threshold only: the run's ensemble filter (mimic_score)": detection(low, noisy),
    }
    if "combined_keep" in samples.columns:
        rows["threshold only: combined_score's own split"] = detection(
            ~samples["combined_keep"].to_numpy(dtype=bool), noisy
        )
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        say("cleanlab is not installed: its row is left out")
    else:
        pred_probs = np.load(layout.reference_probs)
        issues = find_label_issues(samples["label"].to_numpy(), pred_probs)
        rows["cleanlab find_label_issues(labels, reference_probs)"] = detection(issues, noisy)

    result = {
        "run": str(run_dir),
        "samples": len(samples),
        "mislabeled": int(noisy.sum()),
        "map_pca_s": map_s,
        "silhouette_2d_true_class": silhouette_true,
        "silhouette_2d_given_label": silhouette_given,
        "silhouette_features_true_class": silhouette_features,
        "rows": rows,
    }
    (work / "map-results.json").write_text(json.dumps(result, indent=2))
    print(
        f"{len(samples)} samples, {int(noisy.sum())} mislabeled; PCA map {map_s:.1f} s; silhouette by true class "
        f"{silhouette_true:.3f} (2-D), {silhouette_features:.3f} (features); by given label {silhouette_given:.3f}"
    )
    print("| selection | dropped | precision | recall | F1 |")
    print("|---|---:|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['dropped']:,} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
