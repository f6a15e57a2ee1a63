"""Write a synthetic run directory of any size with pandas only (no torch, no training).

Why: the app's speed bar is set at a million samples, far beyond the digits demo. The run has the
same files and columns as a real one — samples with ground truth and baseline signals, per-epoch score
parts, a thumbnail store whose index covers every sample — so loading it exercises the real code paths.

Two kinds: ``write_synthetic_run`` (a labelled pool: classes, injected label noise) and
``write_synthetic_pairs_run`` (an image-text pool as ``train``/``score`` write it for DataComp-style
shards: ``sample_id`` a 32-hex-digit uid, ``caption``, no class labels, swapped captions as
``is_noisy``, the CLIP-score baselines ``clip_score_ref`` / ``clip_score_model`` and the loss under the
reference; ``meta.json`` says ``source.pool_kind = "pairs"``). The pairs' thumbnails are drawn shapes
whose clean caption says what is drawn, so a swapped caption is visibly wrong. ``combined=True``
adds issue 15's ``combined_score`` / ``combined_keep`` and ``summary.combined_quality``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (238, 201, 0),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (245, 245, 245), "black": (25, 25, 25), "grey": (150, 150, 150), "sand": (222, 196, 150)}
CAPTIONS = (
    "{a} {colour} {shape} on a {background} background",
    "{colour} {shape}, {background} backdrop",
    "close-up of a single {colour} {shape} against {background}",
    (
        "a photograph of a small {colour} {shape} sitting in the middle of a plain {background} background, taken in "
        "soft daylight with slightly blurred edges, a little sensor noise in the corners and nothing else in the frame"
    ),
)


def _webp(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def _thumbnail_blobs(count: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    blobs = []
    for _i in range(count):
        pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
        blobs.append(_webp(Image.fromarray(pixels, mode="L").resize((96, 96), Image.NEAREST).convert("RGB")))
    return blobs


def _shape_scenes() -> tuple[list[bytes], list[dict[str, str]]]:
    """One 96-px picture per (colour, shape, background), and what each shows."""
    from PIL import Image, ImageDraw

    blobs, scenes = [], []
    for background, bg in BACKGROUNDS.items():
        for colour, rgb in COLOURS.items():
            for shape in SHAPES:
                image = Image.new("RGB", (96, 96), bg)
                draw = ImageDraw.Draw(image)
                box = (22, 22, 74, 74)
                if shape == "circle":
                    draw.ellipse(box, fill=rgb)
                elif shape == "square":
                    draw.rectangle(box, fill=rgb)
                else:
                    draw.polygon([(48, 18), (78, 76), (18, 76)], fill=rgb)
                blobs.append(_webp(image))
                scenes.append({"colour": colour, "shape": shape, "background": background})
    return blobs, scenes


def _write_thumbnails(path: Path, ids, blobs: list[bytes], which: np.ndarray) -> None:
    (path / "thumbs").mkdir(exist_ok=True)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    (path / "thumbs" / "thumbs.bin").write_bytes(b"".join(blobs))
    pd.DataFrame({"sample_id": ids, "offset": offsets[which], "length": np.diff(offsets)[which]}).to_parquet(
        path / "thumbs" / "index.parquet", index=False
    )


def _epoch_columns(
    score: np.ndarray, loss: np.ndarray, epoch: int, epochs: int, rng, first: int = 0, batch: int = 256
) -> dict[str, np.ndarray]:
    """One epoch's score-part columns (but the ids) for samples ``first`` onwards: the recorded
    signals drift towards the sample's score over the epochs."""
    n = len(score)
    drift = (epoch + 1) / epochs
    proj = (score - 0.5) * 2 * drift + rng.normal(0, 0.3, n)
    recorded = {  # float32 numbers in float64 columns, as a run records its tensors' values
        "proj": proj,
        "weight": np.exp(proj) / (batch * np.exp(0.5)),
        "loss": loss * (2 - drift),
    }
    return {
        "epoch": np.full(n, epoch, dtype=np.int32),
        "step": np.arange(first, first + n) // batch,
        **{name: values.astype(np.float32).astype(np.float64) for name, values in recorded.items()},
        "batch_size": np.full(n, batch, dtype=np.int32),
    }


def _write_epochs(path: Path, ids, score: np.ndarray, loss: np.ndarray, epochs: int, rng) -> None:
    for epoch in range(epochs):
        pd.DataFrame({"sample_id": ids, **_epoch_columns(score, loss, epoch, epochs, rng)}).to_parquet(
            path / "scores" / f"epoch-{epoch:04d}.parquet", index=False
        )


def _labelled_columns(rng, n: int, classes: int, noise: float, epochs: int) -> dict[str, np.ndarray]:
    """A labelled pool's samples.parquet columns after ``sample_id`` and ``source``: a ``noise``
    fraction mislabeled, scoring low on every signal (the draws in one fixed order per ``rng``)."""
    true_label = rng.integers(0, classes, n)
    is_noisy = rng.random(n) < noise
    label = np.where(is_noisy, (true_label + rng.integers(1, classes, n)) % classes, true_label)
    score = np.where(is_noisy, rng.normal(0.25, 0.12, n), rng.normal(0.75, 0.12, n)).clip(0, 1)
    pred = np.where(rng.random(n) < 0.9, true_label, rng.integers(0, classes, n))
    ref_loss = np.where(is_noisy, rng.gamma(4, 0.8, n), rng.gamma(1, 0.1, n))
    model_loss = ref_loss * rng.uniform(0.5, 1.5, n)
    return {
        "label": label,
        "true_label": true_label,
        "is_noisy": is_noisy,
        "pred": pred,
        "mimic_score": score,
        "keep": score >= 0.5,
        "votes": np.round(score * epochs) / epochs,
        "proj_mean": (score - 0.5) * 2 + rng.normal(0, 0.1, n),
        "proj_min": (score - 0.9) * 2,
        "proj_last": (score - 0.5) * 2 + rng.normal(0, 0.3, n),
        "reference_loss": ref_loss,
        "model_loss": model_loss,
        "reducible_loss": model_loss - ref_loss,
        "grand": np.sqrt(model_loss) + rng.gamma(1, 0.2, n),
    }


def _add_combined(samples: pd.DataFrame, rng, summary: dict) -> None:
    """Issue 15's combined score: a little better separated than mimic_score, its own keep and estimate."""
    n = len(samples)
    noisy = samples["is_noisy"].to_numpy()
    combined = np.where(noisy, rng.normal(-1.2, 0.5, n), rng.normal(0.6, 0.5, n))
    samples["combined_score"] = combined
    samples["combined_keep"] = combined >= -0.3
    summary["combined_quality"] = float(samples["combined_keep"].mean())


def _write_meta(path: Path, meta: dict) -> None:
    (path / "meta.json").write_text(
        json.dumps({"format_version": 1, "kind": "synthetic", "status": "complete", "warnings": [], **meta}, indent=1)
    )


def write_synthetic_run(
    path: str | Path,
    n: int,
    *,
    classes: int = 10,
    epochs: int = 5,
    noise: float = 0.3,
    seed: int = 0,
    thumbnails: bool = True,
    combined: bool = False,
    embeddings: int = 0,
) -> Path:
    """A complete run of ``n`` samples: 30 % mislabeled samples score low, the rest high. ``embeddings``: the
    width of an image embedding per sample (0: none), each near its true class's centre, with the reference's
    suggested label (``ref_pred``, ``ref_prob``) and class probabilities as a Grad-Mimic train run keeps them."""
    path = Path(path)
    (path / "scores").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = pd.array([f"syn-{i:07d}" for i in range(n)], dtype="str")
    columns = _labelled_columns(rng, n, classes, noise, epochs)
    samples = pd.DataFrame({"sample_id": ids, "source": "synthetic", **columns})
    if embeddings:
        samples["ref_pred"] = columns["pred"]
        samples["ref_prob"] = rng.uniform(0.4, 1.0, n)
    blobs = _thumbnail_blobs(64, seed) if thumbnails else None
    if embeddings:
        write_synthetic_vectors(
            path, columns["true_label"], classes, embeddings, seed, columns["pred"], samples["ref_prob"].to_numpy()
        )
    return _write_run(
        path,
        samples,
        columns["model_loss"],
        epochs,
        rng,
        combined,
        None if blobs is None else (blobs, np.arange(n) % len(blobs)),
        {
            "run_id": f"synthetic-{n}",
            "class_names": [f"class {c}" for c in range(classes)],
            "config": {"epochs": epochs, "method": "normed_proj", "batch_size": 256, "data": "synthetic"},
            "method": "normed_proj",
            "reference": {"kind": "synthetic"},
            "source": {"spec": "synthetic", "pool_kind": "labelled"},
            "fingerprints": {"data": f"synthetic-{n}-{seed}"},
        },
    )


def write_synthetic_vectors(
    path: Path,
    groups: np.ndarray,
    classes: int,
    dim: int,
    seed: int,
    pred: np.ndarray | None = None,
    prob: np.ndarray | None = None,
    name: str = "image",
) -> None:
    """``embeddings/NAME.npy``: float16 vectors near one centre per group, written a block at a time (12.8 M rows
    stay out of memory); with ``pred``, also ``reference_probs.npy`` (``prob`` on the predicted class)."""
    rng = np.random.default_rng(seed + 7)
    centres = rng.standard_normal((max(classes, 1), dim)).astype(np.float32) * 3
    folder = path / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(groups)
    vectors = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    probs = (
        np.lib.format.open_memmap(path / "reference_probs.npy", mode="w+", dtype=np.float32, shape=(n, classes))
        if pred is not None
        else None
    )
    for start in range(0, n, 1 << 20):
        stop = min(n, start + (1 << 20))
        block = centres[groups[start:stop]] + rng.standard_normal((stop - start, dim)).astype(np.float32)
        vectors[start:stop] = block
        if probs is not None:
            rest = (1 - prob[start:stop]) / max(classes - 1, 1)
            filled = np.repeat(rest[:, None], classes, axis=1).astype(np.float32)
            filled[np.arange(stop - start), pred[start:stop]] = prob[start:stop]
            probs[start:stop] = filled
    vectors.flush()
    del vectors
    if probs is not None:
        probs.flush()


def _write_run(
    path: Path,
    samples: pd.DataFrame,
    model_loss: np.ndarray,
    epochs: int,
    rng,
    combined: bool,
    thumbnails: tuple[list[bytes], np.ndarray] | None,
    meta: dict,
) -> Path:
    """samples.parquet (with the combined score when asked), per-epoch parts, thumbnails, meta.json."""
    keep = samples["keep"].to_numpy()
    summary = {"samples": len(samples), "epochs": epochs, "estimated_quality": float(keep.mean())}
    if combined:
        _add_combined(samples, rng, summary)
    samples.to_parquet(path / "samples.parquet", index=False)
    ids = samples["sample_id"].array
    _write_epochs(path, ids, samples["mimic_score"].to_numpy(), model_loss, epochs, rng)
    if thumbnails is not None:
        _write_thumbnails(path, ids, *thumbnails)
    _write_meta(path, {**meta, "summary": summary})
    return path


def synthetic_uids(n: int, seed: int) -> list[str]:
    """``n`` distinct 32-hex-digit uids (DataComp's 128-bit sample ids), reproducible from ``seed``."""
    raw = np.random.default_rng(seed).bytes(16 * n).hex()
    uids = [raw[32 * i : 32 * (i + 1)] for i in range(n)]
    assert len(set(uids)) == n  # 128 random bits: a repeat would be news
    return uids


def write_synthetic_pairs_run(
    path: str | Path,
    n: int,
    *,
    epochs: int = 3,
    noise: float = 0.3,
    seed: int = 0,
    thumbnails: bool = True,
    label: str = "none",
    combined: bool = False,
    embeddings: int = 0,
) -> Path:
    """A complete image-text pairs run of ``n`` pairs, a ``noise`` fraction of them with swapped captions
    (``is_noisy``): those score low on every signal, the CLIP score under the reference most clearly.
    ``label``: ``"none"`` writes no label column, ``"minus_one"`` a label of -1 for every pair (the
    two ways a pairs pool may say it has no classes)."""
    path = Path(path)
    (path / "scores").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = pd.array(synthetic_uids(n, seed), dtype="str")
    blobs, scenes = _shape_scenes()
    which = rng.integers(0, len(scenes), n)
    template = rng.integers(0, len(CAPTIONS), n)
    true_caption = np.array(
        [
            CAPTIONS[t].format(a="an" if scenes[w]["colour"][0] in "aeiou" else "a", **scenes[w])
            for t, w in zip(template, which)
        ],
        dtype=object,
    )
    is_noisy = np.zeros(n, dtype=bool)
    is_noisy[rng.permutation(n)[: int(noise * n)]] = True
    caption = true_caption.copy()
    swapped = np.flatnonzero(is_noisy)
    caption[swapped] = true_caption[np.roll(swapped, 1)]  # a derangement of the chosen pairs' captions
    long = template == len(CAPTIONS) - 1  # the paper: captions longer than the context score low
    mimic = np.where(is_noisy, rng.normal(0.3, 0.15, n), rng.normal(0.7, 0.15, n)) - 0.1 * long
    clip_ref = np.where(is_noisy, rng.normal(0.17, 0.04, n), rng.normal(0.31, 0.05, n))
    clip_model = clip_ref + rng.normal(0, 0.05, n)
    ref_loss = np.where(is_noisy, rng.gamma(6, 0.8, n), rng.gamma(2, 0.5, n))
    model_loss = ref_loss * rng.uniform(0.6, 1.4, n)
    keep = mimic >= 0.5
    samples = pd.DataFrame({"sample_id": ids, "source": "synthetic-pairs", "caption": pd.array(caption, dtype="str")})
    if label == "minus_one":
        samples["label"] = np.full(n, -1, dtype=np.int64)
    elif label != "none":
        raise ValueError(f"label must be 'none' or 'minus_one', got {label!r}")
    samples = samples.assign(
        is_noisy=is_noisy,
        mimic_score=mimic,
        keep=keep,
        votes=np.round(mimic.clip(0, 1) * epochs) / epochs,
        proj_mean=(mimic - 0.5) * 2 + rng.normal(0, 0.1, n),
        clip_score_ref=clip_ref,
        clip_score_model=clip_model,
        reference_loss=ref_loss,
        model_loss=model_loss,
    )
    if embeddings:  # the photo's scene, and the caption's (a swapped caption sits with another scene)
        scene_of_caption = which.copy()
        scene_of_caption[swapped] = which[np.roll(swapped, 1)]
        write_synthetic_vectors(path, which, len(scenes), embeddings, seed, name="image")
        write_synthetic_vectors(path, scene_of_caption, len(scenes), embeddings, seed, name="text")
    return _write_run(
        path,
        samples,
        model_loss,
        epochs,
        rng,
        combined,
        (blobs, which) if thumbnails else None,
        {
            "run_id": f"synthetic-pairs-{n}",
            "class_names": [],
            "config": {
                "epochs": epochs,
                "method": "normed_proj",
                "batch_size": 256,
                "data": "synthetic-pairs",
                "mimic_layer": "text",
            },
            "method": "normed_proj",
            "reference": {"kind": "synthetic"},
            "source": {"spec": "synthetic-pairs", "pool_kind": "pairs"},
            "fingerprints": {"data": f"synthetic-pairs-{n}-{seed}"},
        },
    )


def write_large_synthetic_run(
    path: str | Path,
    n: int,
    *,
    classes: int = 10,
    epochs: int = 2,
    noise: float = 0.3,
    seed: int = 0,
    chunk: int = 1 << 22,
) -> Path:
    """``write_synthetic_run``'s labelled run (same columns, same distributions, thumbnails from a few
    shared images) written ``chunk`` samples at a time, so that its memory does not grow with ``n``:
    what a DataComp-medium-sized simulation (128 M samples) needs on a 24 GB machine. Ids are
    ``syn-`` and nine digits; each chunk draws from its own seeded generator."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    (path / "scores").mkdir(parents=True, exist_ok=True)
    (path / "thumbs").mkdir(exist_ok=True)
    blobs = _thumbnail_blobs(64, seed)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    (path / "thumbs" / "thumbs.bin").write_bytes(b"".join(blobs))
    samples_writer = thumbs_writer = None
    epoch_writers: list = [None] * epochs
    kept = 0
    try:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            rng = np.random.default_rng([seed, start // chunk])
            digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, start + m)), pa.string()), width=9, padding="0")
            ids = pc.binary_join_element_wise("syn-", digits, "")
            columns = _labelled_columns(rng, m, classes, noise, epochs)
            score = columns["mimic_score"]
            kept += int(columns["keep"].sum())
            source = pa.array(np.full(m, "synthetic", dtype=object), type=pa.string())
            table = pa.table({"sample_id": ids, "source": source, **columns})
            if samples_writer is None:
                samples_writer = pq.ParquetWriter(path / "samples.parquet", table.schema)
            samples_writer.write_table(table, row_group_size=1 << 20)
            for epoch in range(epochs):
                part = pa.table(
                    {"sample_id": ids, **_epoch_columns(score, columns["model_loss"], epoch, epochs, rng, first=start)}
                )
                if epoch_writers[epoch] is None:
                    epoch_writers[epoch] = pq.ParquetWriter(path / "scores" / f"epoch-{epoch:04d}.parquet", part.schema)
                epoch_writers[epoch].write_table(part, row_group_size=1 << 20)
            which = np.arange(start, start + m) % len(blobs)
            thumbs = pa.table({"sample_id": ids, "offset": offsets[which], "length": np.diff(offsets)[which]})
            if thumbs_writer is None:
                thumbs_writer = pq.ParquetWriter(path / "thumbs" / "index.parquet", thumbs.schema)
            thumbs_writer.write_table(thumbs, row_group_size=1 << 20)
    finally:
        for writer in (samples_writer, thumbs_writer, *epoch_writers):
            if writer is not None:
                writer.close()
    summary = {"samples": n, "epochs": epochs, "estimated_quality": kept / n}
    _write_meta(
        path,
        {
            "run_id": f"synthetic-{n}",
            "class_names": [f"class {c}" for c in range(classes)],
            "config": {"epochs": epochs, "method": "normed_proj", "batch_size": 256, "data": "synthetic"},
            "method": "normed_proj",
            "reference": {"kind": "synthetic"},
            "source": {"spec": "synthetic", "pool_kind": "labelled"},
            "fingerprints": {"data": f"synthetic-{n}-{seed}"},
            "summary": summary,
        },
    )
    return path
