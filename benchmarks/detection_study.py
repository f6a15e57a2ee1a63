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
from detection_cells import NOISE_MODEL_CELL, TWO_PART_CELL, evaluate_cells, gm_cells, load, load_probs, metrics, split
from detection_runs import (
    CLEAN_SETS,
    LAYER_CELLS,
    METHOD_CELLS,
    NOISES,
    POOL,
    SECOND_BACKBONE,
    SECOND_BACKBONE_CLEAN_SETS,
    Study,
    say,
)

#: rows of the headline table (cell name as in detection_cells / detection_cleanlab -> shown name)
HEADLINE = {
    "mimic_score (weight ≥ 1/B, majority)": "mimic_score today (weight ≥ 1/B, majority)",
    "mean proj (all epochs); gmm": "mean proj, GMM split",
    "combined_score; gmm": "combined_score (z(mean cos) + z(−log ref loss)), GMM split (before issue 25)",
    NOISE_MODEL_CELL: "**combined_score**, noise-model split (the package's since issue 25)",
    "label posterior (noise model); ≥ 0.5": "label posterior of the noise model, ≥ 0.5",
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


def collect(work: Path, labelled_only: bool = False) -> dict:
    """Every run and cell of the study; ``labelled_only``: the labelled-pool settings alone (no
    Stage-1 method cells, no fine-tuned pair and its mimic-layer scores)."""
    from detection_cleanlab import cleanlab_cells

    study = Study(work)
    study.make_backbone()
    out: dict = {
        "accuracy": {"backbone (shard 02)": _summary(work / "backbone-run").get("test_accuracy")},
        "settings": {},
        "splits": {},
        "methods": {},
        "layers": {},
    }
    second = Study(
        work / SECOND_BACKBONE["folder"], seed=SECOND_BACKBONE["seed"], backbone_epochs=SECOND_BACKBONE["epochs"]
    )
    second.make_backbone()
    out["accuracy"]["second backbone (seed 1, 4 epochs)"] = _summary(second.work / "backbone-run").get("test_accuracy")
    grid = [("", study, clean) for clean in CLEAN_SETS]
    grid += [(f"{SECOND_BACKBONE['folder']}:", second, clean) for clean in SECOND_BACKBONE_CLEAN_SETS]
    for prefix, where, clean in grid:
        reference = where.reference(clean)
        out["accuracy"][f"{prefix}reference {clean}"] = _summary(where.work / f"reference-{clean}-run").get(
            "test_accuracy"
        )
        for noise in NOISES:
            run = where.grad_mimic(noise, clean)
            samples, scores = load(run)
            extra = cleanlab_cells(samples, where.backbone, reference, _noise_options(noise), work / "cleanlab")
            reports: dict = {}
            cells = gm_cells(samples, scores, extra, load_probs(run), reports)
            key = f"{prefix}{clean}/{noise[0]}"
            out["settings"][key] = evaluate_cells(samples, cells)
            out["splits"][key] = reports.get("combined split")
            out["accuracy"][f"Grad-Mimic {key}"] = _summary(run).get("test_accuracy")
            say(f"done {key}")
    if labelled_only:
        return out
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


#: the single signals the default ranking is held against (cells of detection_cells / detection_cleanlab)
SINGLE_SIGNALS = {
    "mimic_score (weight ≥ 1/B, majority)": "mimic_score",
    "mean cos (all epochs); gmm": "mean cos",
    "mean proj (all epochs); gmm": "mean proj",
    "reference_loss; gmm": "reference loss",
    "reducible_loss; gmm": "reducible loss",
    "model_loss; gmm": "model loss",
    "grand; gmm": "GraNd",
    "cleanlab (5-fold CV probs)": "cleanlab CV",
    "cleanlab (reference probs)": "cleanlab ref",
}
CLEANLAB = ("cleanlab (5-fold CV probs)", "cleanlab (reference probs)")
MIMIC_KEEP = "mimic_score (weight ≥ 1/B, majority)"


def issue25_rows(results: dict) -> list[dict]:
    """Per setting: the default ranking (combined_score) and its split (the noise-model quantile) against the
    issue's three bars: AUROC ≥ best single signal − 0.005; |kept − true quality| ≤ 0.05; F1 ≥ the better of
    the mimic keep and cleanlab (either probability source)."""
    rows = []
    for key, cells in results["settings"].items():
        own = cells.get(NOISE_MODEL_CELL)
        if own is None:
            continue
        name, best = max(((n, cells[c]["auroc"]) for c, n in SINGLE_SIGNALS.items() if c in cells), key=lambda t: t[1])
        f1_bar_name, f1_bar = max(
            (
                ("mimic keep" if c == MIMIC_KEEP else SINGLE_SIGNALS[c], cells[c]["f1"])
                for c in (MIMIC_KEEP, *CLEANLAB)
                if c in cells
            ),
            key=lambda t: t[1],
        )
        true_quality = own["estimated_quality"] - own["quality_error"]
        before = cells.get(TWO_PART_CELL) or cells["combined_score; gmm"]  # the ranking and split before issue 25
        split = (results.get("splits") or {}).get(key) or {}
        rows.append(
            {
                "setting": key,
                "auroc": own["auroc"],
                "best_signal": name,
                "best_auroc": best,
                "auroc_margin": own["auroc"] - (best - 0.005),
                "kept": own["estimated_quality"],
                "true_quality": true_quality,
                "quality_error": own["quality_error"],
                "old_gmm_error": before["quality_error"],
                "old_auroc": before["auroc"],
                "f1": own["f1"],
                "f1_bar_name": f1_bar_name,
                "f1_bar": f1_bar,
                "f1_margin": own["f1"] - f1_bar,
                "old_gmm_f1": before["f1"],
                "posterior_auroc": (cells.get("label posterior (noise model); ≥ 0.5") or {}).get("auroc"),
                "separation": split.get("separation"),
                "warnings": split.get("warnings", []),
            }
        )
    return rows


def issue25_table(results: dict) -> str:
    def mark(margin: float, ok: bool) -> str:
        if ok:
            return "met"
        return f"**missed by {abs(margin):.3f}**" if abs(margin) >= 0.0005 else "**missed by < 0.001**"

    lines = [
        (
            "**Issue 25: the default ranking and its split** (combined_score = mean z of mean cos, −log reference "
            "loss and −log model loss; split = top q̂ of the ranking, q̂ the noise model's clean fraction; bars: "
            'AUROC ≥ best single signal − 0.005, |kept − true| ≤ 0.05, F1 ≥ max(mimic keep, cleanlab); "old": '
            "the ranking before, mean cos and reference loss only, with its GMM split)"
        ),
        "",
        (
            "| setting | AUROC (old; best single signal) | AUROC bar | kept / true quality (old GMM split's error) "
            "| quality bar | F1 (old GMM split) vs bar | F1 bar | separation D | label posterior AUROC |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in issue25_rows(results):
        quality_ok = abs(r["quality_error"]) <= 0.05
        lines.append(
            f"| {r['setting']} | {r['auroc']:.3f} (old {r['old_auroc']:.3f}; {r['best_signal']} {r['best_auroc']:.3f}) "
            f"| {mark(r['auroc_margin'], r['auroc_margin'] >= 0)} "
            f"| {r['kept']:.3f} / {r['true_quality']:.3f} ({r['quality_error']:+.3f}; old {r['old_gmm_error']:+.3f}) "
            f"| {mark(abs(r['quality_error']) - 0.05, quality_ok)} "
            f"| {r['f1']:.3f} ({r['old_gmm_f1']:.3f}) vs {r['f1_bar_name']} {r['f1_bar']:.3f} "
            f"| {mark(r['f1_margin'], r['f1_margin'] >= 0)} "
            f"| {'–' if r['separation'] is None else format(r['separation'], '.2f')}"
            f"{' ⚠' if r['warnings'] else ''} "
            f"| {'–' if r['posterior_auroc'] is None else format(r['posterior_auroc'], '.3f')} |"
        )
    return "\n".join([*lines, ""])


def markdown(results: dict) -> str:
    noises = [n[0] for n in NOISES]
    lines = [
        "Test accuracy (shard 04): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["accuracy"].items() if v is not None),
        "",
        issue25_table(results),
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
    if results["methods"]:
        rows = {name: {m: results["methods"][m].get(name) for m in results["methods"]} for name in picks}
        lines += _table("Stage-1 method and temperature (clean10k, sym40)", list(results["methods"]), rows)
    if results["layers"]:
        layer_rows = {
            f"{cell}: {rule}": {"sym40": m} for cell, cells in results["layers"].items() for rule, m in cells.items()
        }
        lines += _table(
            "Mimic layers (end-to-end fine-tuned pair, score of one checkpoint, sym40)", ["sym40"], layer_rows
        )
    return "\n".join(lines)


def run_study(work: Path, labelled_only: bool = False) -> int:
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MIMIC_EXPLORER_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    results = collect(work, labelled_only)
    results["wall_s"] = time.perf_counter() - t0
    (work / "study.json").write_text(json.dumps(results, indent=1))
    print(markdown(results))
    say(f"study: {results['wall_s']:.0f} s; JSON in {work / 'study.json'}")
    return 0
