"""The app's default ranking and its split against the issue-25 bars, on labels and on pairs, in one table.

The bars: the default ranking's AUROC ≥ the best single signal − 0.005; its split's kept fraction within
0.05 of the true quality; its F1 (bad samples dropped) ≥ the better of the mimic keep and cleanlab
(pairs have no class labels, so no cleanlab: the mimic keep alone). Two studies measure them:

- labelled CIFAR-10 with a reference that never saw the pool (symmetric 20/40/60 % and asymmetric 40 %
  noise; 2k, 3k and 10k-image references; two backbones): ``bench_detection.py --study --labelled-only``;
- Flickr8k image-text pairs (random swaps, hard negatives by the reference's image embedding and by
  shared words; 30 % and 50 %): ``bench_pairs_flickr.py --study``.

This runs both (each reuses every run it finds under its ``--work``: a cached rerun takes minutes) and
prints one markdown table of every setting with each bar met or missed by how much, then the counts.
``--reuse`` reads the two studies' ``study.json`` as they are, without running them.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_default_bars.py [--labelled-work DIR] [--pairs-work DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

AUROC_SLACK, QUALITY_SLACK = 0.005, 0.05


def _run(script: str, *argv: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, str(HERE / script), *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def labelled_rows(study: dict) -> list[dict]:
    """The labelled settings, from ``detection_study.issue25_rows``."""
    from detection_study import issue25_rows

    return [
        {
            "kind": "labelled",
            "setting": r["setting"],
            "auroc": r["auroc"],
            "best": f"{r['best_signal']} {r['best_auroc']:.3f}",
            "best_auroc": r["best_auroc"],
            "kept": r["kept"],
            "true": r["true_quality"],
            "f1": r["f1"],
            "f1_bar": f"{r['f1_bar_name']} {r['f1_bar']:.3f}",
            "f1_bar_value": r["f1_bar"],
        }
        for r in issue25_rows(study)
    ]


def pairs_rows(study: dict) -> list[dict]:
    """The pairs pools: the default (``combined_score`` and its split) against the best single signal of the
    study (every signal that is not a z-score combination) and the mimic keep's F1."""
    from bench_pairs_flickr import STUDY_COMBOS

    rows = []
    for cell in study["cells"]:
        singles = {name: m["auroc"] for name, m in cell["signals"].items() if name not in STUDY_COMBOS}
        best = max(singles, key=singles.get)
        default = cell["default"]
        rows.append(
            {
                "kind": "pairs",
                "setting": f"{cell['protocol']} {round(cell['rate'] * 100)} %",
                "auroc": default["auroc"],
                "best": f"{best} {singles[best]:.3f}",
                "best_auroc": singles[best],
                "kept": default["kept"],
                "true": cell["true_quality"],
                "f1": default["f1"],
                "f1_bar": f"mimic keep {default['mimic_keep_f1']:.3f}",
                "f1_bar_value": default["mimic_keep_f1"],
            }
        )
    return rows


def bars(row: dict) -> dict[str, float]:
    """Each bar's margin (≥ 0: met)."""
    return {
        "AUROC": row["auroc"] - (row["best_auroc"] - AUROC_SLACK),
        "quality": QUALITY_SLACK - abs(row["kept"] - row["true"]),
        "F1": row["f1"] - row["f1_bar_value"],
    }


def _mark(margin: float) -> str:
    if margin >= 0:
        return "met"
    return f"**missed by {-margin:.3f}**" if -margin >= 0.0005 else "**missed by < 0.001**"


def table(rows: list[dict]) -> str:
    lines = [
        (
            "| kind | setting | default AUROC | best single signal | AUROC bar | kept / true quality | quality bar "
            "| F1 | F1 bar (better of mimic keep, cleanlab) | F1 bar met |"
        ),
        "|---|---|---:|---|---|---:|---|---:|---|---|",
    ]
    for r in rows:
        margin = bars(r)
        lines.append(
            f"| {r['kind']} | {r['setting']} | {r['auroc']:.3f} | {r['best']} | {_mark(margin['AUROC'])} "
            f"| {r['kept']:.3f} / {r['true']:.3f} ({r['kept'] - r['true']:+.3f}) | {_mark(margin['quality'])} "
            f"| {r['f1']:.3f} | {r['f1_bar']} | {_mark(margin['F1'])} |"
        )
    lines.append("")
    for kind in sorted({r["kind"] for r in rows}):
        mine = [bars(r) for r in rows if r["kind"] == kind]
        counts = ", ".join(
            f"{name} {sum(m[name] >= 0 for m in mine)}/{len(mine)}" for name in ("AUROC", "quality", "F1")
        )
        lines.append(f"- {kind}: bars met — {counts}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled-work", default="/work/bench_work/detection_split")
    parser.add_argument("--pairs-work", default="/work/bench_work/pairs_flickr")
    parser.add_argument("--reuse", action="store_true", help="read both studies' study.json without running them")
    args = parser.parse_args()
    if not args.reuse:
        _run("bench_detection.py", "--study", "--labelled-only", "--work", args.labelled_work)
        _run("bench_pairs_flickr.py", "--study", "--work", args.pairs_work)
    labelled = json.loads((Path(args.labelled_work) / "study" / "study.json").read_text())
    pairs = json.loads((Path(args.pairs_work) / "study.json").read_text())
    rows = labelled_rows(labelled) + pairs_rows(pairs)
    print(table(rows))
    (Path(args.pairs_work) / "bars.json").write_text(json.dumps([{**r, **bars(r)} for r in rows], indent=1))


if __name__ == "__main__":
    main()
