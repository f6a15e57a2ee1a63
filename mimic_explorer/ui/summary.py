"""What a run is, in a few numbers, and what is wrong with it (feature-basis and other warnings).

``summary_facts`` and ``run_warnings`` are UI-free; ``Summary`` lays them out as tiles and alerts.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import panel as pn
from panel.viewable import Viewer

from mimic_explorer.filters.rules import has_classes

BASIS_WARNING = (
    "The model and the reference were not started from the same weights, so they may not share a "
    "feature basis: the task vector — and every mimic score in this run — may be meaningless "
    "(on digits, different inits gave AUROC 0.05, the same init 0.998). Prefer linear probing on a "
    "shared frozen backbone, or fine-tune both from one checkpoint."
)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_facts(meta: dict[str, Any], samples: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, value) pairs: samples, classes (or "image-text pairs"), epochs, method, reference,
    quality (the mimic filter's and, where the run has one, the combined filter's), detection, accuracy."""
    config = meta.get("config") or {}
    summary = meta.get("summary") or {}
    facts = [("samples", f"{len(samples):,}")]
    if has_classes(samples):
        n_classes = len(meta.get("class_names") or []) or samples["label"].nunique()
        facts.append(("classes", str(n_classes)))
    else:
        facts.append(("pool", "image-text pairs" if "caption" in samples.columns else "no classes"))
    epochs = summary.get("epochs", config.get("epochs"))
    if epochs is not None:
        facts.append(("epochs", str(epochs)))
    method = meta.get("method") or config.get("method")
    if method:
        facts.append(("method", str(method)))
    reference = meta.get("reference")
    if isinstance(reference, dict):
        reference = reference.get("kind") or reference.get("path")
    reference = reference or config.get("reference")
    if reference:
        facts.append(("reference", str(reference)))
    quality = summary.get("estimated_quality")
    if quality is None and "keep" in samples.columns:
        quality = float(samples["keep"].mean())
    if quality is not None:
        facts.append(("estimated quality", _fmt(float(quality))))
    combined = summary.get("combined_quality")
    if combined is None and "combined_keep" in samples.columns:
        combined = float(samples["combined_keep"].mean())
    if combined is not None:
        facts.append(("quality, combined filter", _fmt(float(combined))))
    split = summary.get("combined_split")
    if isinstance(split, dict) and split.get("warnings"):
        facts.append(("combined filter: not to be trusted", "; ".join(str(w) for w in split["warnings"])))
    if "is_noisy" in samples.columns:
        facts.append(("true quality", _fmt(1.0 - float(samples["is_noisy"].mean()))))
    detection = summary.get("detection") or (meta.get("evaluation") or {}).get("mimic_score") or {}
    if "auroc" in detection:
        facts.append(("detection AUROC", _fmt(float(detection["auroc"]))))
    if "f1" in detection:
        facts.append(("detection F1", _fmt(float(detection["f1"]))))
    accuracy = summary.get("test_accuracy") or {}
    if isinstance(accuracy, dict) and "grad_mimic" in accuracy:
        plain = f" (plain {_fmt(float(accuracy['plain']))})" if "plain" in accuracy else ""
        facts.append(("test accuracy", _fmt(float(accuracy["grad_mimic"])) + plain))
    return facts


def run_warnings(meta: dict[str, Any]) -> list[str]:
    """The run's own warnings, plus the feature-basis warning when the inits differ and none says so."""
    warnings = [w if isinstance(w, str) else str(w.get("message", w)) for w in meta.get("warnings") or []]
    if meta.get("same_init") is False and not any("basis" in w or "init" in w for w in warnings):
        warnings.insert(0, BASIS_WARNING)
    return warnings


TILE_CSS = """
.me-tiles { display: flex; flex-wrap: wrap; gap: 10px; margin: 4px 0 2px 0; }
.me-tile { background: #f6f8fa; border: 1px solid #d8dee4; border-radius: 8px; padding: 6px 12px; min-width: 92px;
           max-width: 100%; box-sizing: border-box; }
.me-tile .v { font: 600 17px system-ui, sans-serif; color: #1f2328; overflow-wrap: anywhere; }
.me-tile .k { font: 11px system-ui, sans-serif; color: #57606a; text-transform: uppercase; letter-spacing: .04em; }
.me-title { font: 600 18px system-ui, sans-serif; margin: 0 0 4px 0; }
.me-title code { font-size: 15px; color: #0969da; }
.me-path { font: 12px ui-monospace, monospace; color: #57606a; }
"""


def _short(path: str) -> str:
    """The last two parts of a run's path (the full one is the tooltip): enough to tell runs apart."""
    parts = path.rstrip("/").split("/")
    return path if len(parts) <= 3 else "…/" + "/".join(parts[-2:])


class Summary(Viewer):
    """Tiles with the run's key numbers, then one alert per warning."""

    def __init__(self, run_id: str, path: str, meta: dict[str, Any], samples: pd.DataFrame, **params):
        super().__init__(**params)
        tiles = "".join(
            f'<div class="me-tile"><div class="v">{html.escape(v)}</div><div class="k">{html.escape(k)}</div></div>'
            for k, v in summary_facts(meta, samples)
        )
        header = (
            f'<div class="me-title">Run <code>{html.escape(run_id)}</code></div>'
            f'<div class="me-path" title="{html.escape(path)}">{html.escape(_short(path))}</div>'
            f'<div class="me-tiles">{tiles}</div>'
        )
        self.warnings = run_warnings(meta)
        self._layout = pn.Column(
            pn.pane.HTML(header, stylesheets=[TILE_CSS], sizing_mode="stretch_width"),
            *[
                pn.pane.Alert(f"**Warning.** {w}", alert_type="warning", sizing_mode="stretch_width")
                for w in self.warnings
            ],
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return self._layout
