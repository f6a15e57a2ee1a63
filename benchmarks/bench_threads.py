"""torch's intra-op threads beside a busy process: a frozen-tower pairs ``train`` timed with each thread setting.

What it measures (benchmarks/RESULTS.md, "Threads"): the same Grad-Mimic run — a Flickr8k excerpt,
``--arch small_dual --frozen-towers``, a reference made first by a plain run — started as a fresh
process for each setting: torch's own default (``OMP_NUM_THREADS`` and ``MIMIC_EXPLORER_THREADS``
unset and the command's choice switched off: ``--threads`` equal to ``torch.get_num_threads()`` of a
fresh interpreter), the command's default (``util.threads``: the free cores this process may use), and
``--threads 1``; each alone and beside a second process that keeps one core busy
(``python -c "while True: pass"``). Wall time of the whole command, the run's own ``train_s``, the
threads its ``run.log`` names and the machine's 1-minute load average after it.

    python benchmarks/bench_threads.py [--pairs 512] [--epochs 5] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.subset_helpers import shard_excerpt  # noqa: E402 - the repository root is put on the path first

FLICKR = ROOT.parent / "shared" / "data" / "flickr8k" / "train-00.tar"
WORK = ROOT / "benchmarks" / "_work" / "threads"
TRAIN = ["--arch", "small_dual", "--frozen-towers", "--batch-size", "32", "--lr", "0.01", "--quiet", "--force"]


def _environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MIMIC_EXPLORER_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    env["MIMIC_EXPLORER_CACHE"] = str(WORK / "cache")
    return env


def _torch_default() -> int:
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=_environment(), capture_output=True, text=True).stdout)


def _train(args: list[str], timeout: float) -> tuple[float, float | None, str]:
    """(wall seconds, the run's train_s, the threads its run.log names) of ``mimic-explorer train ARGS``;
    (timeout, None, "?") when it ran out."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mimic_explorer", "train", *args],
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return timeout, None, "?"
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    out = Path(done.stdout.strip().splitlines()[-1])
    threads = re.findall(r"(\d+) thread\(s\)", (out / "run.log").read_text())[-1]
    return wall, json.loads((out / "meta.json").read_text())["timings"]["train_s"], threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is stopped and reported")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    pool = f"wds:{shard_excerpt(FLICKR, WORK / f'pool-{args.pairs}.tar', args.pairs)}"
    reference = WORK / "R.pt"
    if not reference.exists():
        _train(
            ["--data", pool, *TRAIN, "--epochs", "10", "--out", str(WORK / "ref"), "--save-model", str(reference)], 3600
        )
    grad_mimic = ["--data", pool, *TRAIN, "--epochs", str(args.epochs), "--reference", str(reference)]
    settings = {
        f"torch's default ({_torch_default()})": ["--threads", str(_torch_default())],
        "the command's default": [],
        "--threads 1": ["--threads", "1"],
    }
    print(f"{os.cpu_count()} cores, affinity {len(os.sched_getaffinity(0))}, load {os.getloadavg()}")
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for name, extra in settings.items():
                for k in range(args.repeat):
                    wall, train_s, threads = _train([*grad_mimic, *extra, "--out", str(WORK / f"gm-{k}")], args.timeout)
                    shown = "stopped" if train_s is None else f"{train_s:.2f}"
                    load = os.getloadavg()[0]
                    line = f"{name} | {threads} | wall {wall:.2f} s | train_s {shown} | load after {load:.1f}"
                    print(f"{'busy' if busy else 'idle'} | {line}", flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()


if __name__ == "__main__":
    main()
