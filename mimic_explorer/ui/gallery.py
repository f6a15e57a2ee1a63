"""Image galleries: one HTML grid of thumbnail cards per gallery, clickable, cheap to update.

Why one component per grid: hundreds of images as hundreds of Panel panes are slow to build and to
sync; one element holding a grid of inline WebP thumbnails renders at once. A threshold change does
not resend the images: it sends the list of dropped cards and the browser restyles them. A click
sends the card's row position back to Python (for the detail view). A sample with a caption (an
image-text pair) shows it under its image, wrapped to three lines; the full text is the card's hover
title and is in the detail view.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pandas as pd
import param
from panel.custom import JSComponent

from mimic_explorer.ui.thumbnails import ThumbnailURIs

CSS = """
:host { display: block; width: 100%; }
.me-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(100px, 1fr)); gap: 8px; }
.me-grid.pairs { grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
.me-grid.pairs img { image-rendering: auto; object-fit: cover; }
.me-caption { margin-top: 4px; font-size: 12px; line-height: 1.3; color: #1f2328; overflow: hidden;
  display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow-wrap: anywhere;
  min-height: 3.9em; }
.me-card { border: 1px solid #d0d7de; border-radius: 8px; padding: 5px; background: #fff; cursor: pointer;
  font: 11px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif; color: #24292f; transition: opacity .15s; }
.me-card:hover { box-shadow: 0 2px 8px rgba(0,0,0,.18); border-color: #0969da; }
.me-card img { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated; display: block;
  background: #111; border-radius: 5px; }
.me-id { color: #57606a; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; margin-top: 3px; }
.me-row { display: flex; justify-content: space-between; gap: 4px; }
.me-score { font-variant-numeric: tabular-nums; font-weight: 600; }
.me-card.noisy { border: 2px solid #cf222e; }
.me-truth { color: #cf222e; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.me-badge::after { content: "kept"; color: #1a7f37; }
.me-card.dropped { background: #ffebe9; }
.me-card.dropped img { opacity: .8; }
.me-card.dropped .me-badge::after { content: "dropped"; color: #cf222e; }
.me-empty { color: #57606a; font: 13px system-ui, sans-serif; padding: 12px 0; }
"""

ESM = """
export function render({ model, el }) {
  const root = document.createElement("div");
  const mark = () => {
    const dropped = new Set(model.dropped.map(String));
    root.querySelectorAll(".me-card").forEach(
      (card) => card.classList.toggle("dropped", dropped.has(card.dataset.pos)));
  };
  const draw = () => { root.innerHTML = model.cards; mark(); };
  root.addEventListener("click", (event) => {
    const card = event.target.closest(".me-card");
    if (card) model.send_msg({ pos: Number(card.dataset.pos), id: card.dataset.id });
  });
  model.on("cards", draw);
  model.on("dropped", mark);
  draw();
  return root;
}
"""


def _card_html(
    position: int, row, uri: str, label_name: Callable, score_column: str, has_pred: bool, has_classes: bool = True
) -> str:
    """One card: image, caption (pairs), id, label name (labelled pools), score, predicted class; a red
    border when the ground truth says the sample is noisy."""
    sample_id = html.escape(str(row.sample_id))
    score = getattr(row, score_column)
    score_text = "nan" if score is None or not np.isfinite(score) else f"{score:.3f}"
    caption = getattr(row, "caption", None)
    caption = None if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption)
    noisy = bool(getattr(row, "is_noisy", False))
    lines = ""
    if caption is not None:
        lines += f'<div class="me-caption">{html.escape(caption)}</div>'
    lines += f'<div class="me-id">{sample_id}</div>'
    if has_classes:
        label = html.escape(label_name(row.label)) if hasattr(row, "label") else "?"
        pred = f"<span>pred <b>{html.escape(label_name(row.pred))}</b></span>" if has_pred else ""
        lines += f'<div class="me-row"><span>label <b>{label}</b></span>{pred}</div>'
    lines += f'<div class="me-row"><span class="me-score">{score_text}</span><span class="me-badge"></span></div>'
    if noisy and has_classes and hasattr(row, "true_label"):
        lines += f'<div class="me-truth">true label {html.escape(label_name(row.true_label))}</div>'
    elif noisy and not has_classes:
        lines += '<div class="me-truth">caption swapped</div>'
    hover = html.escape(
        f"{caption}\n\n{row.sample_id} — click for details"
        if caption is not None
        else f"{row.sample_id} — click for details"
    )
    return (
        f'<div class="me-card{" noisy" if noisy else ""}" data-pos="{int(position)}" data-id="{sample_id}" '
        f'title="{hover}"><img src="{uri}" alt="{sample_id}" loading="eager">{lines}</div>'
    )


def gallery_html(
    samples: pd.DataFrame,
    positions: np.ndarray,
    thumbs: ThumbnailURIs,
    label_name: Callable,
    score_column: str,
    empty_text: str = "No samples here.",
    has_classes: bool = True,
) -> str:
    """The grid for the rows at ``positions`` of ``samples`` (in that order)."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return f'<div class="me-empty">{html.escape(empty_text)}</div>'
    rows = samples.iloc[positions]
    has_pred = "pred" in samples.columns
    cards = [
        _card_html(pos, row, thumbs.uri(row.sample_id, pos), label_name, score_column, has_pred, has_classes)
        for pos, row in zip(positions.tolist(), rows.itertuples(index=False), strict=True)
    ]
    kind = " pairs" if "caption" in samples.columns else ""
    return f'<div class="me-grid{kind}">' + "".join(cards) + "</div>"


class Gallery(JSComponent):
    """A grid of cards; ``dropped`` (row positions) greys cards out; ``on_click(fn)`` gets (pos, id)."""

    cards = param.String(default="", doc="HTML of the grid (see gallery_html).")
    dropped = param.List(default=[], item_type=int, doc="Row positions of the shown cards that the filter drops.")

    _esm = ESM
    _stylesheets: ClassVar[list[str]] = [CSS]

    def __init__(self, **params):
        super().__init__(**params)
        self._click_handlers: list[Callable[[int, str], None]] = []

    def on_click(self, handler: Callable[[int, str], None]) -> None:
        """Call ``handler(position, sample_id)`` when a card is clicked."""
        self._click_handlers.append(handler)

    def _handle_msg(self, msg) -> None:
        if not isinstance(msg, dict) or "pos" not in msg:
            return
        for handler in self._click_handlers:
            handler(int(msg["pos"]), str(msg.get("id", "")))
