"""Image galleries as one HTML grid of data-URI thumbnails.

Why one HTML string: hundreds of images as hundreds of Panel panes is slow to build and to sync; one
HTML pane with inline WebP thumbnails (a few KB each) renders at once and needs no file route, so the
server never serves files from disk.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from mimic_explorer.store.thumbs import ThumbnailReader

PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eee"/>'
        b'<text x="48" y="52" font-size="11" text-anchor="middle" fill="#999">no image</text></svg>'
    ).decode()
)

STYLE = """
<style>
.me-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(112px,1fr));gap:8px}
.me-card{border:1px solid #ddd;border-radius:6px;padding:4px;font:11px/1.3 sans-serif;background:#fff}
.me-card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;display:block;margin:auto}
.me-card .id{color:#666;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.me-card.noisy{border-color:#d62728}
.me-card .drop{color:#d62728}
</style>
"""


def thumbnail_uri(thumbs: ThumbnailReader, sample_id: str) -> str:
    data = thumbs.get(sample_id)
    if data is None:
        return PLACEHOLDER
    return "data:image/webp;base64," + base64.b64encode(data).decode()


def gallery_html(rows: pd.DataFrame, thumbs: ThumbnailReader, label_name, score_column: str, threshold: float) -> str:
    """Cards with image, id, label name, score and (when known) prediction; dropped samples marked."""
    cards = []
    for row in rows.itertuples(index=False):
        sample_id = str(row.sample_id)
        score = float(getattr(row, score_column))
        noisy = bool(getattr(row, "is_noisy", False))
        pred = getattr(row, "pred", None)
        pred_text = f" · pred {html.escape(label_name(pred))}" if pred is not None else ""
        status = "" if score >= threshold else ' <span class="drop">dropped</span>'
        cards.append(
            f'<div class="me-card{" noisy" if noisy else ""}" title="{html.escape(sample_id)}">'
            f'<img src="{thumbnail_uri(thumbs, sample_id)}" alt="{html.escape(sample_id)}">'
            f'<div class="id">{html.escape(sample_id)}</div>'
            f"<div>label <b>{html.escape(label_name(row.label))}</b>{pred_text}</div>"
            f"<div>score {score:.3f}{status}</div></div>"
        )
    return STYLE + '<div class="me-grid">' + "".join(cards) + "</div>"
