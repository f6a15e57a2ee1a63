"""``bench_detection.py --study``: make (or reuse) every run of the disjoint-reference protocol
(``detection_runs.py``), compute every post-hoc cell (``detection_cells.py``, ``detection_cleanlab.py``),
write ``study.json`` and print the markdown tables.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from detection_cells import evaluate_cells, gm_cells, load, metrics, split
from detection_runs import CLEAN_SETS, LAYER_CELLS, METHOD_CELLS, NOISES, POOL, Study, say

#: rows of the headline table (cell name as in detection_cells / detection_cleanlab -> shown name)
HEADLINE = {
    "mimic_score (weight ≥ 1/B, majority)": "mimic_score today (weight ≥ 1/B, majority)",
    "mean proj (all epochs); gmm": "mean proj, GMM split",
    "combined_score; gmm": "**combined_score** (z(mean cos) + z(−log ref loss)), GMM split",
    "vote gmm / majority": "mimic_score, GMM vote, majority",
    "reference_loss; gmm": "reference loss, GMM split",
    "reducible_loss; gmm": "reducible loss, GMM split",
    "grand; gmm": "GraNd, GMM split",
    "cleanlab (5-fold CV probs)": "cleanlab, 5-fold CV probs",
    "cleanlab (reference probs)": "cleanlab, reference probs",
}


def _noise_options(noise):
    from mimic_explorer.commands.options import TrainOptions

    return TrainOptions(POOL, "small_cnn", "unused", label_noise=noise[1], noise_type=noise[2])


def _summary(run: Path) -> dict:
    from mimic_explorer.store.reader import open_run

    return open_run(run).meta.get("summary", {})


def collect(work: Path) -> dict:
    from detection_cleanlab import cleanlab_cells

    study = Study(work)
    study.make_backbone()
    out: dict = {
        "accuracy": {"backbone (shard 02)": _summary(work / "backbone-run").get("test_accuracy")},
        "settings": {},
        "methods": {},
        "layers": {},
    }
    for clean in CLEAN_SETS:
        reference = study.reference(clean)
        out["accuracy"][f"reference {clean}"] = _summary(work / f"reference-{clean}-run").get("test_accuracy")
        for noise in NOISES:
            run = study.grad_mimic(noise, clean)
            samples, scores = load(run)
            extra = cleanlab_cells(samples, study.backbone, reference, _noise_options(noise), work / "cleanlab")
            out["settings"][f"{clean}/{noise[0]}"] = evaluate_cells(samples, gm_cells(samples, scores, extra))
            out["accuracy"][f"Grad-Mimic {clean}/{noise[0]}"] = _summary(run).get("test_accuracy")
            say(f"done {clean}/{noise[0]}")
    for method, temperature in METHOD_CELLS:
        run = study.grad_mimic(NOISES[1], "clean10k", method, temperature)
        samples, scores = load(run)
        out["methods"][f"{method}, T={temperature:g}"] = evaluate_cells(samples, gm_cells(samples, scores))
        out["accuracy"][f"Grad-Mimic clean10k/sym40 {method} T={temperature:g}"] = _summary(run).get("test_accuracy")
    for cell in LAYER_CELLS:
        run = study.layer_score(NOISES[1], cell)
        samples, scores = load(run)
        proj = scores.groupby("sample_id")["proj"].mean().reindex(samples["sample_id"]).to_numpy(np.float64)
        is_noisy = samples["is_noisy"].to_numpy(bool)
        out["layers"][cell] = {
            f"proj; {rule}": metrics(is_noisy, (proj, split(proj, rule))) for rule in ("sign", "gmm", "kmeans")
        }
        loss = -samples["model_loss"].to_numpy(np.float64)
        out["layers"][cell]["model loss; gmm"] = metrics(is_noisy, (loss, split(loss, "gmm")))
    for noise in (NOISES[1],):
        out["accuracy"]["fine-tuned reference"] = _summary(work / "ft-reference-run").get("test_accuracy")
        out["accuracy"][f"fine-tuned model {noise[0]}"] = _summary(work / f"ft-model-{noise[0]}-run").get(
            "test_accuracy"
        )
    return out


def _cell(m: dict | None) -> str:
    if m is None:
        return "–"
    return f"{m['auroc']:.3f} / {m['ap']:.3f} / {m['f1']:.3f} / {m['quality_error']:+.3f}"


def _table(title: str, columns: list[str], rows: dict[str, dict[str, dict | None]]) -> list[str]:
    lines = [
        f"**{title}** (each cell: AUROC / AP / F1 / quality-estimate error)",
        "",
        "| signal | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(cells.get(c)) for c in columns) + " |")
    return [*lines, ""]


def markdown(results: dict) -> str:
    noises = [n[0] for n in NOISES]
    lines = [
        "Test accuracy (shard 04): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["accuracy"].items() if v is not None),
        "",
    ]
    for clean in CLEAN_SETS:
        rows = {
            shown: {n: results["settings"][f"{clean}/{n}"].get(name) for n in noises}
            for name, shown in HEADLINE.items()
        }
        lines += _table(f"Headline, reference on {clean}", noises, rows)
    every = results["settings"]["clean10k/sym40"]
    rows = {name: {n: results["settings"][f"clean10k/{n}"].get(name) for n in noises} for name in every}
    lines += _table("Every post-hoc cell, reference on clean10k", noises, rows)
    rows = {name: {n: results["settings"][f"clean2k/{n}"].get(name) for n in noises} for name in every}
    lines += _table("Every post-hoc cell, reference on clean2k", noises, rows)
    picks = [
        "mimic_score (weight ≥ 1/B, majority)",
        "vote proj / majority",
        "vote gmm / majority",
        "mean proj (all epochs); gmm",
        "mean cos (all epochs); gmm",
        "combined_score; gmm",
        "reference_loss; gmm",
    ]
    rows = {name: {m: results["methods"][m].get(name) for m in results["methods"]} for name in picks}
    lines += _table("Stage-1 method and temperature (clean10k, sym40)", list(results["methods"]), rows)
    layer_rows = {
        f"{cell}: {rule}": {"sym40": m} for cell, cells in results["layers"].items() for rule, m in cells.items()
    }
    lines += _table("Mimic layers (end-to-end fine-tuned pair, score of one checkpoint, sym40)", ["sym40"], layer_rows)
    return "\n".join(lines)


def run_study(work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MIMIC_EXPLORER_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    results = collect(work)
    results["wall_s"] = time.perf_counter() - t0
    (work / "study.json").write_text(json.dumps(results, indent=1))
    print(markdown(results))
    say(f"study: {results['wall_s']:.0f} s; JSON in {work / 'study.json'}")
    return 0
