"""Random access by position into WebDataset shards once the member index exists.

Measures, on the real CIFAR-10 shards (50,000 images in 5 tar files):
- building the offset index (first open) and re-opening with the cached index;
- fetching a random sample's encoded bytes (one ``pread``) and decoding it to an RGB image.

Usage: python benchmarks/bench_wds_access.py [--pattern PATTERN] [--fetches N] [--seed S]
Prints one JSON object. The index goes to a fresh temporary folder, so the build time is real.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mimic_explorer.data.specs import open_source

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10" / "train-0{0..4}.tar"


def percentiles(values: list[float]) -> dict:
    ms = np.asarray(values) * 1e3
    return {
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default=str(DEFAULT))
    parser.add_argument("--fetches", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        source = open_source(f"wds:{args.pattern}", index_dir=run_dir)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        source = open_source(f"wds:{args.pattern}", index_dir=run_dir)
        reopen_s = time.perf_counter() - started

        rng = np.random.default_rng(args.seed)
        positions = rng.integers(0, len(source), size=args.fetches).tolist()
        source.read_bytes(0)  # open the shard files once, as a long-lived app would have them
        raw, decoded, by_id = [], [], []
        for i in positions:
            t0 = time.perf_counter()
            source.read_bytes(i)
            raw.append(time.perf_counter() - t0)
        for i in positions:
            t0 = time.perf_counter()
            source.load(i)
            decoded.append(time.perf_counter() - t0)
        ids = source.sample_ids[positions].tolist()
        source.index_of(ids[0])  # builds the id → position map once
        for sid in ids:
            t0 = time.perf_counter()
            source.get(sid)
            by_id.append(time.perf_counter() - t0)

    print(
        json.dumps(
            {
                "pattern": args.pattern,
                "samples": len(source),
                "shards": len(source.shards),
                "fetches": args.fetches,
                "index_build_s": round(build_s, 3),
                "reopen_with_index_s": round(reopen_s, 3),
                "read_bytes": percentiles(raw),
                "load_rgb": percentiles(decoded),
                "get_by_id_rgb": percentiles(by_id),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
