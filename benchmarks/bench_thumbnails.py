"""Random access to thumbnails of a 50,000-image WebDataset run (issue: data sources).

Builds (once, cached under benchmarks/_work) the thumbnails of every CIFAR-10 training image from the
five shards into a run's thumbnail store, the way runs write them, then fetches random samples' thumbnails
by id — through the store's reader and through the app's gallery lookup — and reports latency.

    python benchmarks/bench_thumbnails.py [--fetches 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARDS = ROOT.parent / "shared" / "data" / "cifar10"


def build(run: Path) -> tuple[list[str], float]:
    from mimic_explorer.data.specs import open_source
    from mimic_explorer.store.thumbs import ThumbnailWriter, thumbnail_bytes

    source = open_source(f"wds:{SHARDS}/train-{{00..04}}.tar", index_dir=run)
    ids = [str(s) for s in source.sample_ids]
    if (run / "thumbs" / "index.parquet").exists():
        return ids, float("nan")
    started = time.perf_counter()
    with ThumbnailWriter(run) as thumbs:
        for i, image in source.iter_images(workers=2):  # as runs do: a small original is its own thumbnail
            thumbs.add(ids[i], thumbnail_bytes(image, source.read_bytes(i)))
    return ids, time.perf_counter() - started


def timings(fetch, ids: list[str], count: int) -> dict:
    rng = np.random.default_rng(0)
    picks = [ids[i] for i in rng.integers(0, len(ids), count)]
    out = []
    for sample_id in picks:
        start = time.perf_counter()
        data = fetch(sample_id)
        out.append(time.perf_counter() - start)
        assert data, sample_id
    out.sort()
    return {
        "mean_ms": 1e3 * statistics.mean(out),
        "p50_ms": 1e3 * out[len(out) // 2],
        "p99_ms": 1e3 * out[int(len(out) * 0.99)],
        "max_ms": 1e3 * out[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "thumbs50k"))
    args = parser.parse_args()
    run = Path(args.work)
    run.mkdir(parents=True, exist_ok=True)
    ids, build_s = build(run)
    from mimic_explorer.store.thumbs import ThumbnailReader
    from mimic_explorer.ui.thumbnails import ThumbnailURIs

    started = time.perf_counter()
    reader = ThumbnailReader(run)
    open_s = time.perf_counter() - started
    store = timings(reader.get, ids, args.fetches)
    app = ThumbnailURIs(ThumbnailReader(run), cache_size=0)
    gallery = timings(lambda s: app.uri(s), ids, args.fetches)
    size_mb = (run / "thumbs" / "thumbs.bin").stat().st_size / 1e6
    print(
        f"{len(ids):,} thumbnails, {size_mb:.0f} MB blob; built in {build_s:.0f} s; "
        f"reader opened in {open_s * 1e3:.0f} ms"
    )
    print("| random fetch by id | mean | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, t in (("store reader (bytes)", store), ("app gallery lookup (data URI)", gallery)):
        print(
            f"| {name} | {t['mean_ms']:.3f} ms | {t['p50_ms']:.3f} ms | {t['p99_ms']:.3f} ms | {t['max_ms']:.3f} ms |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
