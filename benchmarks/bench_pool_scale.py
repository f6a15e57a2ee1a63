"""Scoring a pool of a million samples from cached features with a linear head (issue: run store).

End to end for the scoring stage of a linear-probe run: features are read from an on-disk feature
file chunk by chunk (never the whole matrix), scored with the closed form (proj, Stage-1 weight,
loss, prediction), written as chunk part files, then Stage 2 reads the parts and ``samples.parquet``
is written — the same writers, part layout and Stage-2 code as ``mimic-explorer score``.

Each pool size runs in a fresh subprocess so its peak RSS is its own. While scoring, memory is
bounded by the chunk and must stay flat as the pool grows; Stage 2 then needs the per-sample scores
(O(N) rows), which is reported separately.

    python benchmarks/bench_pool_scale.py [--sizes 100000 300000 1000000] [--dim 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 65_536
BATCH = 4096


def write_features(path: Path, n: int, dim: int, classes: int) -> None:
    """A synthetic feature file (raw float32, row-major) and labels, written in chunks."""
    import numpy as np

    rng = np.random.default_rng(0)
    with open(path, "wb") as fh:
        for start in range(0, n, CHUNK):
            fh.write(rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32).tobytes())
    np.save(path.with_suffix(".labels.npy"), rng.integers(0, classes, n))


def score_pool(path: Path, n: int, dim: int, classes: int, out: Path) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from mimic_explorer import stage2
    from mimic_explorer.pipeline.finalize import add_stage2, samples_table
    from mimic_explorer.scoring.linear_head import cross_entropy_output_grad, linear_grad_dot
    from mimic_explorer.scoring.projection import mimic_projection
    from mimic_explorer.scoring.stage1 import stage1_weights
    from mimic_explorer.store.writer import RunWriter

    torch.manual_seed(0)
    head, ref = torch.nn.Linear(dim, classes), torch.nn.Linear(dim, classes)
    v_w, v_b = (ref.weight - head.weight).detach(), (ref.bias - head.bias).detach()
    v_norm = torch.sqrt((v_w**2).sum() + (v_b**2).sum())
    labels = np.load(path.with_suffix(".labels.npy"), mmap_mode="r")

    def ids(start: int, stop: int) -> np.ndarray:  # made per chunk: nothing per-sample is held while scoring
        return np.char.add("s", np.arange(start, stop).astype(str))
    writer = RunWriter(out, kind="score", config={"benchmark": "pool_scale", "n": n})
    started = time.perf_counter()
    with open(path, "rb") as fh, torch.no_grad():
        for chunk, start in enumerate(range(0, n, CHUNK)):
            rows = min(CHUNK, n - start)
            feats = torch.from_numpy(np.fromfile(fh, dtype=np.float32, count=rows * dim).reshape(rows, dim))
            y = torch.from_numpy(np.array(labels[start : start + rows]))
            parts = []
            for b in range(0, rows, BATCH):
                h, t = feats[b : b + BATCH], y[b : b + BATCH]
                logits = head(h)
                proj = mimic_projection(linear_grad_dot(h, cross_entropy_output_grad(logits, t), v_w, v_b), v_norm).proj
                parts.append(pd.DataFrame({
                    "sample_id": ids(start + b, start + b + len(t)), "epoch": 0, "step": chunk * 1000 + b // BATCH,
                    "proj": proj.double().numpy(), "weight": stage1_weights(proj, "normed_proj").double().numpy(),
                    "loss": F.cross_entropy(logits, t, reduction="none").double().numpy(),
                    "pred": logits.argmax(-1).int().numpy(), "batch_size": np.int32(len(t))}))
            writer.write_scores(writer.layout.chunk_part(chunk), pd.concat(parts, ignore_index=True))
    scored = time.perf_counter() - started
    rss_scoring = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scores = pd.concat([pd.read_parquet(p, columns=["sample_id", "epoch", "step", "proj", "weight", "batch_size"])
                        for p in writer.layout.chunk_parts()], ignore_index=True)
    samples = add_stage2(samples_table(ids(0, n), np.full(n, "synthetic"), np.asarray(labels), None, None), scores, "proj", "majority")
    writer.write_samples(samples)
    writer.complete(summary={"samples": n, "estimated_quality": stage2.quality_estimate(samples["keep"].to_numpy())})
    total = time.perf_counter() - started
    return {"n": n, "score_s": scored, "total_s": total, "samples_per_s": n / total, "rss_scoring_mb": rss_scoring,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--child", nargs=2, metavar=("FEATURES", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, n = Path(args.child[0]), int(args.child[1])
        print(json.dumps(score_pool(path, n, args.dim, args.classes, path.parent / f"run-{n}")))
        return 0
    print("| pool | feature file | scoring (closed form, parts) | end to end (+ Stage 2, samples.parquet) | samples/s "
          "| peak RSS while scoring | peak RSS incl. Stage 2 |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "features.f32"
            write_features(path, n, args.dim, args.classes)
            proc = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--classes", str(args.classes),
                                   "--child", str(path), str(n)], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            size_gb = path.stat().st_size / 1e9
            print(f"| {n:,} | {size_gb:.2f} GB | {r['score_s']:.1f} s | {r['total_s']:.1f} s | {r['samples_per_s']:,.0f} | "
                  f"{r['rss_scoring_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
