"""Explorer app at a million samples: load time and threshold-change time, server side.

Measures the app's speed bounds (1 M samples load in under 3 s; a threshold change updates counts and
plots in under 0.2 s):
- load = ``Explorer(run_dir)`` (read samples.parquet, sort once, counts, galleries) plus the first
  render of every visible part into a Bokeh document (what ``panel serve`` does for a new session);
- threshold change = setting ``explorer.threshold`` (or another rule) on the rendered explorer, until
  every watcher has run: counts, "Kept: N of M", per-class table, threshold lines on the histogram
  and on the rendered per-class plots, the around-threshold gallery and the kept/dropped marks.
Lazy tabs (scatter, per-epoch, trajectories) are timed separately, when first opened.

Usage: python benchmarks/bench_app.py [--samples 1000000] [--run DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_run import write_synthetic_run  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--run", help="reuse/create the synthetic run here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="app loads to time (default 3)")
    args = parser.parse_args(argv)

    import panel as pn
    from bokeh.document import Document

    from mimic_explorer.ui import Explorer

    pn.extension("tabulator")
    tmp = None
    if args.run:
        run_dir = Path(args.run)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-app-")
        run_dir = Path(tmp.name) / "run"
    if not (run_dir / "meta.json").exists():
        write_time, _ = timed(lambda: write_synthetic_run(run_dir, args.samples))
        print(f"wrote synthetic run ({args.samples:,} samples, 5 epochs) in {write_time:.1f} s: {run_dir}")

    def load():
        explorer = Explorer(run_dir, restore=False)
        root = pn.Row(explorer.controls, explorer.main).get_root(Document())
        return explorer, root

    timed(load)  # warm-up: first-time imports and numba/bokeh caches are not what a session pays
    loads = []
    for _ in range(args.repeat):
        seconds, (explorer, root) = timed(load)
        loads.append(seconds)
    construct, _ = timed(lambda: Explorer(run_dir, restore=False))
    print(f"load (construct + first render), {args.repeat} runs: median {statistics.median(loads):.3f} s, "
          f"max {max(loads):.3f} s (construction alone {construct:.3f} s)")

    lo, hi = explorer.state.score_range()
    changes = []
    for i in range(25):
        value = lo + (hi - lo) * (0.2 + 0.6 * ((i * 7) % 25) / 25)
        seconds, _ = timed(lambda: setattr(explorer, "threshold", value))
        changes.append(seconds)
    print(f"threshold change (25 values): median {statistics.median(changes) * 1000:.1f} ms, "
          f"max {max(changes) * 1000:.1f} ms — kept {explorer.counts.kept} of {explorer.counts.total}")

    others = {}
    rule = explorer.filter  # the filter model: several rule parameters in one update
    others["quantile 0.3"] = timed(lambda: rule.param.update(rule="quantile", quantile=0.3))[0]
    others["quantile 0.3 per class"] = timed(lambda: setattr(explorer, "per_class", True))[0]
    others["keep-count 600k (first: sorts once)"] = timed(lambda: rule.param.update(rule="keep_count", per_class=False, keep_count=600_000))[0]
    others["keep-count 650k"] = timed(lambda: setattr(explorer, "keep_count", 650_000))[0]
    others["ensemble"] = timed(lambda: setattr(explorer, "rule", "ensemble"))[0]
    others["by value + 2 class overrides"] = timed(lambda: rule.param.update(rule="threshold", class_overrides={1: 0.6, 2: 0.4}))[0]
    for name, seconds in others.items():
        print(f"  {name}: {seconds * 1000:.1f} ms")

    tabs = explorer.more_views.tabs
    for index, name in enumerate(tabs._names):
        if index == 0:
            continue
        seconds, _ = timed(lambda: setattr(tabs, "active", index))
        print(f"first open of tab {name!r}: {seconds:.2f} s")
    rule.param.update(rule="threshold", class_overrides={})
    with_tabs = []
    for i in range(25):
        value = lo + (hi - lo) * (0.2 + 0.6 * ((i * 11) % 25) / 25)
        seconds, _ = timed(lambda: setattr(explorer, "threshold", value))
        with_tabs.append(seconds)
    print(f"threshold change with every tab rendered (10 per-class plots, scatter, ...): median "
          f"{statistics.median(with_tabs) * 1000:.1f} ms, max {max(with_tabs) * 1000:.1f} ms")
    seconds, _ = timed(lambda: explorer.select(explorer.samples["sample_id"].iloc[12345]))
    print(f"click on a card (detail view + trajectory read from {len(explorer.run.epoch_scores.epochs)} epoch parts): {seconds:.2f} s")
    seconds, _ = timed(lambda: explorer.exports.keep_list_file())
    print(f"Download keep-list (csv, via filters.apply_rule/render_export): {seconds:.2f} s")

    print(f"machine: {cpu_name()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, "
          f"Python {platform.python_version()}, panel {pn.__version__}")
    ok = statistics.median(loads) < 3.0 and statistics.median(changes) < 0.2 and statistics.median(with_tabs) < 0.2
    print("PASS" if ok else "FAIL", "(load < 3 s, threshold change < 0.2 s)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
