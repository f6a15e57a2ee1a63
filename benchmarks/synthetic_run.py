"""Write a synthetic run directory of any size with pandas only (no torch, no training).

Why: the app's speed bar is set at a million samples, far beyond the digits demo. The run has the
same files and columns as a real one — samples with ground truth and baseline signals, per-epoch score
parts, a thumbnail store whose index covers every sample — so loading it exercises the real code paths.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd


def _thumbnail_blobs(count: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(count):
        pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((96, 96), Image.NEAREST).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=80)
        blobs.append(buffer.getvalue())
    return blobs


def write_synthetic_run(path: str | Path, n: int, *, classes: int = 10, epochs: int = 5, noise: float = 0.3,
                        seed: int = 0, thumbnails: bool = True) -> Path:
    """A complete run of ``n`` samples: 30 % mislabeled samples score low, the rest high."""
    path = Path(path)
    (path / "scores").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = pd.array([f"syn-{i:07d}" for i in range(n)], dtype="str")
    true_label = rng.integers(0, classes, n)
    is_noisy = rng.random(n) < noise
    label = np.where(is_noisy, (true_label + rng.integers(1, classes, n)) % classes, true_label)
    score = np.where(is_noisy, rng.normal(0.25, 0.12, n), rng.normal(0.75, 0.12, n)).clip(0, 1)
    keep = score >= 0.5
    pred = np.where(rng.random(n) < 0.9, true_label, rng.integers(0, classes, n))
    ref_loss = np.where(is_noisy, rng.gamma(4, 0.8, n), rng.gamma(1, 0.1, n))
    model_loss = ref_loss * rng.uniform(0.5, 1.5, n)
    samples = pd.DataFrame({
        "sample_id": ids, "source": "synthetic", "label": label, "true_label": true_label,
        "is_noisy": is_noisy, "pred": pred, "mimic_score": score, "keep": keep,
        "votes": np.round(score * epochs) / epochs, "proj_mean": (score - 0.5) * 2 + rng.normal(0, 0.1, n),
        "proj_min": (score - 0.9) * 2, "proj_last": (score - 0.5) * 2 + rng.normal(0, 0.3, n),
        "reference_loss": ref_loss, "model_loss": model_loss, "reducible_loss": model_loss - ref_loss,
        "grand": np.sqrt(model_loss) + rng.gamma(1, 0.2, n),
    })
    samples.to_parquet(path / "samples.parquet", index=False)
    batch = 256
    for epoch in range(epochs):
        drift = (epoch + 1) / epochs
        proj = (score - 0.5) * 2 * drift + rng.normal(0, 0.3, n)
        pd.DataFrame({
            "sample_id": ids, "epoch": np.full(n, epoch, dtype=np.int32), "step": np.arange(n) // batch,
            "proj": proj, "weight": np.exp(proj) / (batch * np.exp(0.5)), "loss": model_loss * (2 - drift),
            "batch_size": np.full(n, batch, dtype=np.int32),
        }).to_parquet(path / "scores" / f"epoch-{epoch:04d}.parquet", index=False)
    if thumbnails:
        (path / "thumbs").mkdir(exist_ok=True)
        blobs = _thumbnail_blobs(64, seed)
        offsets = np.cumsum([0] + [len(b) for b in blobs])
        (path / "thumbs" / "thumbs.bin").write_bytes(b"".join(blobs))
        which = np.arange(n) % len(blobs)
        pd.DataFrame({"sample_id": ids, "offset": offsets[which], "length": np.diff(offsets)[which]}).to_parquet(
            path / "thumbs" / "index.parquet", index=False)
    meta = {
        "format_version": 1, "kind": "synthetic", "status": "complete", "run_id": f"synthetic-{n}",
        "class_names": [f"class {c}" for c in range(classes)],
        "config": {"epochs": epochs, "method": "normed_proj", "batch_size": batch, "data": "synthetic"},
        "method": "normed_proj", "reference": {"kind": "synthetic"},
        "fingerprints": {"data": f"synthetic-{n}-{seed}"}, "warnings": [],
        "summary": {"samples": n, "epochs": epochs, "estimated_quality": float(keep.mean())},
    }
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    return path
