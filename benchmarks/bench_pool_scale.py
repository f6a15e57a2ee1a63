"""How memory and time grow with the pool: feature extraction, scoring and Stage 2 at millions of samples.

Three phases, each in a fresh process so its peak RSS is its own, on the code ``train``/``score`` run:

1. **features**: a synthetic feature source (a seeded generator standing in for decoding and a
   backbone, which at 12.8 M would take days here) is streamed into a feature cache entry
   (``pipeline.feature_cache.FeatureEntry``) chunk by chunk, each chunk sealed, then finished;
2. **scoring**: the entry is read a chunk at a time (explicit reads, no memory map of the matrix),
   scored with the closed form of a linear head (proj, Stage-1 weight, loss, prediction) and written
   as chunk part files (``store.writer.write_score_part``), ``--epochs`` epochs of rows per sample;
3. **stage 2**: ``pipeline.finalize.finish_samples`` over the parts (two passes over ranges of
   positions, ``samples.parquet`` streamed in row groups, evaluation read back a column at a time).

Flat means the peak RSS of phases 1 and 2 does not grow with the pool; Stage 2 keeps O(N) arrays only
in its evaluation (a few 8-byte columns) and the fit subsamples.

    python benchmarks/bench_pool_scale.py [--sizes 1000000 4000000 12800000] [--dim 128] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, in every phase

CHUNK = 65_536
#: the pool's labels, int64, one after another (written and read a chunk at a time, like the features)
LABELS = "labels.bin"
BATCH = 4096


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def extract(folder: Path, n: int, dim: int) -> dict:
    """Phase 1: the synthetic source streamed into a feature cache entry."""
    import numpy as np

    from mimic_explorer.training.feature_cache import FeatureEntry

    rng = np.random.default_rng(0)
    entry = FeatureEntry(folder / "features")
    started = time.perf_counter()
    with entry.locked(), open(folder / LABELS, "wb") as labels:
        entry.start("synthetic", n, dim, CHUNK)
        for chunk in range(entry.chunk_count):
            lo, hi = chunk * CHUNK, min((chunk + 1) * CHUNK, n)
            entry.write_positions(lo, np.arange(lo, hi))
            entry.write_rows(lo, rng.standard_normal((hi - lo, dim), dtype=np.float32))
            entry.seal(chunk, [])
            labels.write(rng.integers(0, 10, hi - lo, dtype=np.int64).tobytes())
        entry.finish()
    return {"features_s": time.perf_counter() - started, "features_rss_mb": _peak_mb()}


def read_labels(folder: Path, lo: int, hi: int):
    """Labels ``lo:hi`` by an explicit read: a memory map of the whole file would count every page it
    touched in the phase's peak RSS, which then grows with the pool (8 bytes a sample)."""
    import numpy as np

    with open(folder / LABELS, "rb") as handle:
        handle.seek(lo * 8)
        return np.fromfile(handle, dtype=np.int64, count=hi - lo)


def score(folder: Path, n: int, dim: int, epochs: int) -> dict:
    """Phase 2: chunks of the entry scored and written as score parts."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.nn.functional as F

    from mimic_explorer.scoring.linear_head import cross_entropy_output_grad, linear_grad_dot
    from mimic_explorer.scoring.projection import mimic_projection
    from mimic_explorer.scoring.stage1 import stage1_weights
    from mimic_explorer.store.layout import RunLayout
    from mimic_explorer.store.writer import write_score_part
    from mimic_explorer.training.feature_cache import FeatureEntry

    torch.manual_seed(0)
    entry = FeatureEntry(folder / "features")
    assert entry.open_complete()
    layout = RunLayout(folder / "run")
    layout.scores_dir.mkdir(parents=True)
    heads = [torch.nn.Linear(dim, 10) for _ in range(epochs)]  # one head per recorded epoch
    ref = torch.nn.Linear(dim, 10)
    started = time.perf_counter()
    with torch.no_grad():
        for chunk in range(-(-n // CHUNK)):
            lo, hi = chunk * CHUNK, min((chunk + 1) * CHUNK, n)
            feats, y = torch.from_numpy(entry.read(lo, hi)), torch.from_numpy(read_labels(folder, lo, hi))
            parts = []
            for epoch, head in enumerate(heads):
                v_w, v_b = ref.weight - head.weight, ref.bias - head.bias
                v_norm = torch.sqrt((v_w**2).sum() + (v_b**2).sum())
                for b in range(0, hi - lo, BATCH):
                    h, t = feats[b : b + BATCH], y[b : b + BATCH]
                    logits = head(h)
                    proj = mimic_projection(
                        linear_grad_dot(h, cross_entropy_output_grad(logits, t), v_w, v_b), v_norm
                    ).proj
                    positions = np.arange(lo + b, lo + b + len(t))
                    parts.append(
                        pd.DataFrame(
                            {
                                "sample_id": np.char.add("s", positions.astype(str)),
                                "epoch": np.int32(epoch),
                                "step": np.int64(chunk * 1000 + b // BATCH),
                                "position": positions,
                                "proj": proj.double().numpy(),
                                "weight": stage1_weights(proj, "normed_proj").double().numpy(),
                                "cos": np.nan,
                                "loss": F.cross_entropy(logits, t, reduction="none").double().numpy(),
                                "pred": logits.argmax(-1).int().numpy(),
                                "batch_size": np.int32(len(t)),
                            }
                        )
                    )
            write_score_part(layout.chunk_part(chunk), pd.concat(parts, ignore_index=True))
    return {"score_s": time.perf_counter() - started, "score_rss_mb": _peak_mb()}


def stage_two(folder: Path, n: int) -> dict:
    """Phase 3: ``finish_samples`` over the score parts."""
    import numpy as np

    from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples
    from mimic_explorer.store.layout import RunLayout
    from mimic_explorer.store.sample_rows import samples_table
    from mimic_explorer.store.writer import SamplesWriter

    def base(positions):
        lo = int(positions.min()) if len(positions) else 0
        labels = read_labels(folder, lo, int(positions.max()) + 1 if len(positions) else 0)
        return samples_table(
            np.char.add("s", positions.astype(str)),
            np.full(len(positions), "synthetic"),
            labels[positions - lo],
            None,
            None,
        )

    layout = RunLayout(folder / "run")
    writer = type("Writer", (), {"layout": layout, "samples_writer": lambda self: SamplesWriter(layout.samples)})()
    before = _peak_mb()
    started = time.perf_counter()
    finished = finish_samples(
        writer, PoolView(n, np.zeros(0, dtype=np.int64), base), Stage2Options("proj", "majority", losses_from_rows=True)
    )
    return {
        "stage2_s": time.perf_counter() - started,
        "stage2_rss_mb": _peak_mb(),
        "stage2_start_rss_mb": before,
        "quality": finished.summary["estimated_quality"],
    }


PHASES = {"features": extract, "score": score, "stage2": stage_two}


def _child(phase: str, folder: Path, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        str(folder),
        "--dim",
        str(args.dim),
        "--epochs",
        str(args.epochs),
        "--sizes",
        str(args.size_of_child),
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {phase} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000, 12_800_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    parser.add_argument("--phase", nargs=2, metavar=("PHASE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        from mimic_explorer.store.arrow_pool import use_system_allocator

        use_system_allocator()  # as the train and score commands do
        phase, folder = args.phase[0], Path(args.phase[1])
        n = args.sizes[0]
        kwargs = {
            "features": (folder, n, args.dim),
            "score": (folder, n, args.dim, args.epochs),
            "stage2": (folder, n),
        }[phase]
        print(json.dumps(PHASES[phase](*kwargs)))
        return 0
    print(
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}; dim {args.dim}, {args.epochs} epochs of score rows"
    )
    print("| pool | features: time, peak RSS | scoring: time, peak RSS | Stage 2: time, peak RSS | est. quality |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="pool-scale-", dir=args.tmp))
        try:
            args.size_of_child = n
            r = {}
            for phase in PHASES:
                r.update(_child(phase, folder, args))
            print(
                f"| {n:,} | {r['features_s']:.1f} s, {r['features_rss_mb']:.0f} MB | {r['score_s']:.1f} s, "
                f"{r['score_rss_mb']:.0f} MB | {r['stage2_s']:.1f} s, {r['stage2_rss_mb']:.0f} MB "
                f"| {r['quality']:.3f} |",
                flush=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
