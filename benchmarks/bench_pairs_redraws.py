"""Batch noise of a pair's mimic score, and what ``score --redraws K`` buys (issue 25).

A pair's InfoNCE gradient depends on its batch-mates, so the batch it is scored in is one random draw
of its score. For each pool of the pairs study (``bench_pairs_flickr.py --study``: random swaps, hard
negatives by P's image embedding, hard negatives by shared words; at each of ``--rates``), the pool's
projections are trained plainly on the noisy pool as the study's text-layer run does (saved as M), and
M is scored against P with ``score --mimic-layer text --method cos`` at ``--redraws 1`` (the pool's
order) and at ``--redraws K``, in batches of each of ``--score-batch-sizes`` (128, the study's, and
16). Printed: AUROC (bad pairs ranked low) of proj, cos, the model's loss and the app's default
(``combined_score``) at each K, the share of one batching's proj variance that the run reports as
batch noise, and each run's wall time. Runs live under ``--work`` (shared with
``bench_pairs_flickr.py``, whose cached image tower, P and hard pools are reused).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_pairs_redraws.py [--work DIR] [--draws 4] [--rates 0.3,0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pairs_flickr import HARD_BY, Bench, add_protocol_arguments, hard_pool, image_tower, pool_args, pretrained

from mimic_explorer import open_run
from mimic_explorer.stage2.evaluation import auroc

#: the other mimic layers scored once (the text projection is the runs above)
LAYERS = {
    "image": ["--mimic-layer", "image"],
    "both": ["--params", "image_projection.weight,text_projection.weight"],
}
SIGNALS = {"proj": "proj_mean", "cos": "cos_mean", "−log model loss": "model_loss", "combined_score": "combined_score"}


def _utility(samples: pd.DataFrame, column: str) -> np.ndarray:
    values = samples[column].to_numpy(np.float64)
    return -np.log(np.clip(values, 1e-12, None)) if column.endswith("loss") else values


def pool_model(bench: Bench, p: Path, protocol: str, rate: float) -> tuple[Path, list[str], pd.Series | None]:
    """M for one pool (its projections trained plainly on it, saved), the pool's ``--data`` and noise flags,
    and the truth of a hard pool (a swap pool's is in its samples)."""
    a = bench.args
    data, truth = (None, None) if protocol == "swap" else hard_pool(bench, p, rate, by=HARD_BY[protocol])
    args = pool_args(bench, p)
    flags = ["--caption-noise", str(rate)] if data is None else []
    if data is not None:
        args[1] = f"wds:{data}"
    at = args.index("--test-data")
    del args[at : at + 2]  # M alone is wanted: no held-out recall
    model = bench.model(
        f"pool_{protocol}_{int(rate * 100)}", "train", *args, "--starting-epoch", str(a.pool_epochs), *flags
    )
    return model, ["--data", args[1], *flags], truth


def redraw_cell(bench: Bench, p: Path, protocol: str, rate: float, batch: int) -> dict:
    """One pool scored in batches of ``batch`` at ``--redraws`` 1 and K: AUROC of each signal, the reported
    batch noise, walls."""
    a = bench.args
    model, data, truth = pool_model(bench, p, protocol, rate)
    cell: dict = {"pool": f"{protocol} {int(rate * 100)} %", "batch": batch}
    for draws in (1, a.draws):
        name = f"redraws-{protocol}-{int(rate * 100)}-k{draws}" + ("" if batch == a.batch_size else f"-b{batch}")
        argv = [
            "score",
            *data,
            "--arch",
            "small_dual",
            "--model",
            str(model),
            "--reference",
            str(p),
            "--mimic-layer",
            "text",
            "--method",
            "cos",
            "--batch-size",
            str(batch),
            "--seed",
            str(a.seed),
            "--redraws",
            str(draws),
        ]
        run = open_run(bench.cli(name, *argv))
        samples = run.samples
        ids = samples["sample_id"].astype(str)
        bad = samples["is_noisy"].to_numpy(bool) if truth is None else truth.reindex(ids).to_numpy(bool)
        for label, column in SIGNALS.items():
            cell[f"{label} k{draws}"] = auroc(~bad, _utility(samples, column))
        noise = run.meta["summary"]["pairs"].get("batch_noise")
        if noise:
            cell["noise one draw"] = noise["noise_share_one_draw"]
            cell[f"noise k{draws}"] = noise["noise_share_averaged"]
        cell[f"wall k{draws} s"] = round(run.meta["timings"]["score_s"], 1)  # the run's own, also when reused
    if batch == a.batch_size:  # the mimic layer, one batching: image, text (above) or both projections
        for layer, flags in LAYERS.items():
            name = f"redraws-{protocol}-{int(rate * 100)}-k1-{layer}"
            argv = ["score", *data, "--arch", "small_dual", "--model", str(model), "--reference", str(p), *flags]
            argv += ["--method", "cos", "--batch-size", str(batch), "--seed", str(a.seed)]
            samples = open_run(bench.cli(name, *argv)).samples
            ids = samples["sample_id"].astype(str)
            bad = samples["is_noisy"].to_numpy(bool) if truth is None else truth.reindex(ids).to_numpy(bool)
            cell[f"proj {layer}"] = auroc(~bad, _utility(samples, "proj_mean"))
            cell[f"cos {layer}"] = auroc(~bad, _utility(samples, "cos_mean"))
    return cell


def table(cells: list[dict], draws: int) -> str:
    head = ["pool", "B", *[f"{s} k1 → k{draws}" for s in SIGNALS], "batch noise, one draw → mean", "wall k1 / k s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for c in cells:
        values = [f"{c[f'{s} k1']:.3f} → {c[f'{s} k{draws}']:.3f}" for s in SIGNALS]
        noise = f"{c.get('noise one draw', float('nan')):.1%} → {c.get(f'noise k{draws}', float('nan')):.1%}"
        walls = f"{c['wall k1 s']} / {c[f'wall k{draws} s']}"
        lines.append("| " + " | ".join([c["pool"], str(c["batch"]), *values, noise, walls]) + " |")
    return "\n".join(lines)


def layer_table(cells: list[dict]) -> str:
    lines = ["| pool | proj / cos, text | image | both projections |", "|---|---:|---:|---:|"]
    for c in cells:
        if "proj image" in c:
            text = f"{c['proj k1']:.3f} / {c['cos k1']:.3f}"
            rest = [f"{c[f'proj {layer}']:.3f} / {c[f'cos {layer}']:.3f}" for layer in LAYERS]
            lines.append("| " + " | ".join([c["pool"], text, *rest]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_protocol_arguments(parser)
    parser.add_argument("--draws", type=int, default=4, help="K of --redraws K, beside one batching")
    parser.add_argument(
        "--score-batch-sizes", default="128,16", help="the scoring batch sizes (noise grows as B shrinks)"
    )
    args = parser.parse_args()
    bench = Bench(args)
    started = time.perf_counter()
    p = pretrained(bench, image_tower(bench))
    cells = [
        redraw_cell(bench, p, protocol, float(rate), int(batch))
        for protocol in args.protocols.split(",")
        for rate in args.rates.split(",")
        for batch in args.score_batch_sizes.split(",")
    ]
    print(table(cells, args.draws))
    print("\nAUROC of proj / cos by mimic layer (one batching, B = " + str(args.batch_size) + "):\n")
    print(layer_table(cells))
    total = round(time.perf_counter() - started, 1)
    (bench.work / "redraws.json").write_text(
        json.dumps({"cells": cells, "walls_s": bench.walls, "total_s": total}, indent=1)
    )
    print(f"\nwalls (s): {bench.walls}; total {total} s")


if __name__ == "__main__":
    main()
