"""Nearest neighbours for "more like this": exact (numpy, chunked) against hnswlib and faiss-cpu.

Synthetic float16 vectors shaped like embeddings (a mixture of Gaussian clusters, unit length), the
way the run stores them. For each library: index build time, the time of one query (k = 10, the
median of ``--queries`` single-vector queries, as the app asks), and recall@10 against the exact
cosine neighbours. Also the exact chunked search the app uses on small pools (``maps.neighbours``).

Usage: python benchmarks/bench_neighbours.py [--rows 100000 1000000] [--dim 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package


def synthetic(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit-length float16 vectors around 200 cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    out = np.empty((rows, dim), dtype=np.float16)
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        block = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """The exact top-k rows of each query (the app's chunked search) and its median time per query."""
    from mimic_explorer.maps.neighbours import ExactNeighbours

    exact = ExactNeighbours(vectors)
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        rows, _ = exact.query_row(int(q), k)
        times.append(time.perf_counter() - started)
        found.append(rows)
    return np.stack(found), statistics.median(times)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the exact top-k found."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_hnswlib(vectors: np.ndarray, queries: np.ndarray, k: int, threads: int) -> dict:
    import hnswlib

    data = np.asarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    index = hnswlib.Index(space="cosine", dim=data.shape[1])
    index.init_index(max_elements=len(data), ef_construction=100, M=16, random_seed=0)
    index.set_num_threads(threads)
    index.add_items(data, np.arange(len(data)))
    build = time.perf_counter() - started
    index.set_ef(64)
    index.set_num_threads(1)
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        labels, _ = index.knn_query(data[q : q + 1], k=k)
        times.append(time.perf_counter() - started)
        found.append(labels[0])
    return {"build_s": build, "query_ms": 1000 * statistics.median(times), "found": np.stack(found)}


def bench_faiss(vectors: np.ndarray, queries: np.ndarray, k: int, threads: int, kind: str) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    data = np.ascontiguousarray(vectors, dtype=np.float32)  # unit length: inner product = cosine
    started = time.perf_counter()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(data.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 100
        index.add(data)
        index.hnsw.efSearch = 64
    else:
        lists = int(4 * np.sqrt(len(data)))
        quantizer = faiss.IndexFlatIP(data.shape[1])
        index = faiss.IndexIVFFlat(quantizer, data.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.train(data[np.random.default_rng(0).choice(len(data), min(len(data), 50 * lists), replace=False)])
        index.add(data)
        index.nprobe = 16
    build = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, labels = index.search(data[q : q + 1], k)
        times.append(time.perf_counter() - started)
        found.append(labels[0])
    return {"build_s": build, "query_ms": 1000 * statistics.median(times), "found": np.stack(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--methods", nargs="+", default=["hnswlib", "faiss-hnsw", "faiss-ivf"], help="which ANN methods to time"
    )
    args = parser.parse_args()
    k = 10
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} build threads")
    print("| rows | dim | method | build s | query ms | recall@10 |")
    print("|---:|---:|---|---:|---:|---:|")
    for rows in args.rows:
        vectors = synthetic(rows, args.dim)
        queries = np.random.default_rng(1).choice(rows, args.queries, replace=False)
        truth, exact_s = exact_truth(vectors, queries, k)
        print(f"| {rows:,} | {args.dim} | exact (numpy, chunked) | 0 | {1000 * exact_s:.1f} | 1.000 |", flush=True)
        methods = {
            "hnswlib": ("hnswlib HNSW (M 16, ef 100/64)", lambda v, q: bench_hnswlib(v, q, k, args.threads)),
            "faiss-hnsw": (
                "faiss HNSWFlat (M 16, ef 100/64)",
                lambda v, q: bench_faiss(v, q, k, args.threads, "hnsw"),
            ),
            "faiss-ivf": (
                "faiss IVFFlat (4√n lists, nprobe 16)",
                lambda v, q: bench_faiss(v, q, k, args.threads, "ivf"),
            ),
        }
        for name, run in (methods[m] for m in args.methods):
            found = run(vectors, queries)
            print(
                f"| {rows:,} | {args.dim} | {name} | {found['build_s']:.1f} | {found['query_ms']:.2f} | "
                f"{recall(found['found'], truth):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
