"""Explorer app at a million samples: load time and threshold-change time, server side.

Measures the app's speed bounds (1 M samples load in under 3 s; a threshold change updates counts and
plots in under 0.2 s):
- load = ``Explorer(run_dir)`` (read samples.parquet, sort once, counts, galleries) plus the first
  render of every visible part into a Bokeh document (what ``panel serve`` does for a new session);
- threshold change = setting ``explorer.threshold`` (or another rule) on the rendered explorer, until
  every watcher has run: counts, "Kept: N of M", per-class table, threshold lines on the histogram
  and on the rendered per-class plots, the around-threshold gallery and the kept/dropped marks.
Lazy tabs (scatter, per-epoch, trajectories) are timed separately, when first opened (``--tabs``).

Two ways to open a run: ``--path index`` (the default: the app's per-run index, ``store.app_index``,
built on the first open — *cold open* — and memory-mapped after — *warm open*) and ``--path whole``
(the older way: all of samples.parquet in pandas, sorted on every open). Also timed: a gallery page
(three galleries redrawn for a new size), a detail click (a card opened in the detail view), the
keep-list export to disk, and the server's resident memory.

With ``--map`` (the run gets 64-d float16 embeddings): the Map view's rows — the PCA layout made as
``mimic-explorer map`` makes it (and, with hnswlib installed, the neighbour index), the Map tab's first
render with the layout kept, a box and a lasso selection (galleries, "selected N · kept K" and the
highlight updated), and "more like this" (exact, and HNSW when built).

Also: ``Explorer.select(sample_id)`` in a fresh explorer (the index's sorted id hashes, not a pandas
index over every id) and, with ``--cli-export``, the command-line export in fresh processes (time and
peak RSS).

Usage: python benchmarks/bench_app.py [--samples 1000000] [--run DIR] [--repeat 3] [--path index|whole] [--tabs]
       [--map [--no-neighbours]] [--cli-export]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

from synthetic_run import write_large_synthetic_run, write_synthetic_run

#: above this many samples the synthetic run is written a chunk at a time, with 2 epochs of rows
LARGE_RUN = 20_000_000


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


def rss_gb() -> tuple[float, float]:
    """(resident memory now, peak), in GB."""
    now = 0.0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1e6
    return now, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_map(run_dir: Path, explorer, neighbours: bool = True) -> None:
    """The Map view's rows (see the module docstring); ``neighbours``: also build the HNSW index (when
    hnswlib is installed) and time "more like this"."""
    import numpy as np
    import panel as pn
    from bokeh.document import Document

    from mimic_explorer.maps.neighbours import hnswlib_available
    from mimic_explorer.maps.run_map import make_map
    from mimic_explorer.store.layout import RunLayout
    from mimic_explorer.ui import Explorer

    layout = RunLayout(run_dir)
    n = explorer.state.total
    seconds, _ = timed(lambda: make_map(layout, n, method="pca", neighbours=False))
    print(f"map: PCA layout made and kept (mimic-explorer map): {seconds:.1f} s")
    if neighbours and hnswlib_available():
        from mimic_explorer.maps.neighbours import build_hnsw_index
        from mimic_explorer.store.run_arrays import read_row_array

        vectors = read_row_array(layout.embedding("image"), n)
        seconds, _ = timed(lambda: build_hnsw_index(vectors, layout.neighbour_index("image")))
        print(f"map: HNSW neighbour index built: {seconds:.1f} s")
    tab = explorer.more_views.tabs._names.index("Map")

    def open_map():
        fresh = Explorer(run_dir, restore=False)
        pn.Row(fresh.controls, fresh.main).get_root(Document())
        started = time.perf_counter()
        fresh.more_views.tabs.active = tab
        fresh.more_views.tabs[tab].get_root(Document())
        return time.perf_counter() - started, fresh

    open_map()  # warm-up: first-time imports and numba compilation of Datashader
    first, explorer = open_map()
    print(f"map: Map tab's first render, layout kept (warm): {first:.2f} s")
    view = explorer.map_view
    coords = np.asarray(view.map.coords)
    lo, hi = np.nanpercentile(coords, 30, axis=0), np.nanpercentile(coords, 60, axis=0)
    boxes = [timed(lambda: view._on_box((lo[0], lo[1], hi[0], hi[1])))[0] for _ in range(3)]
    print(
        f"map: box selection ({len(view.selected):,} selected; galleries, counts, highlight): median "
        f"{statistics.median(boxes):.3f} s"
    )
    triangle = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]]])
    lassos = [timed(lambda: view._on_lasso(triangle))[0] for _ in range(3)]
    print(f"map: lasso selection ({len(view.selected):,} selected): median {statistics.median(lassos):.3f} s")
    if not neighbours:
        return
    view.map._search = None
    rows = np.random.default_rng(0).choice(n, 5, replace=False)
    similar = [timed(lambda r=r: view.map.more_like_this(int(r), 12))[0] for r in rows]
    kind = type(view.map._search).__name__
    print(f"map: more like this ({kind}, 5 samples): median {statistics.median(similar) * 1000:.1f} ms")


#: runs the command line in a child and reports the child's peak resident memory on its last line: VmHWM
#: of its own address space (``ru_maxrss`` would not do: Linux keeps it across exec, so a child of this
#: benchmark would report the benchmark's own peak)
_PEAK_CHILD = (
    "import sys\n"
    "from mimic_explorer.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "peak = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "print('PEAK_KB', peak, file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def time_cli_export(run_dir: Path) -> None:
    """``mimic-explorer export RUN --quantile 0.3`` in csv and parquet (and uids for a pairs run), each in a
    fresh process with the app index already built: wall time and the process's peak RSS."""
    import json

    pairs = json.loads((run_dir / "meta.json").read_text()).get("source", {}).get("pool_kind") == "pairs"
    column = ["--column", "clip_score_ref"] if pairs else []
    with tempfile.TemporaryDirectory(prefix="bench-cli-export-") as folder:
        for fmt in ("csv", "parquet", *(("uids",) if pairs else ())):
            out = Path(folder) / f"keep.{'npy' if fmt == 'uids' else fmt}"
            command = [sys.executable, "-c", _PEAK_CHILD, "export", str(run_dir), "--quantile", "0.3", *column]
            started = time.perf_counter()
            proc = subprocess.run(
                [*command, "--format", fmt, "--out", str(out)], capture_output=True, text=True, check=False
            )
            seconds = time.perf_counter() - started
            peak = next((int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")), 0)
            size = out.stat().st_size / 1e6 if out.exists() else 0
            status = "" if proc.returncode == 0 else f" FAILED: {proc.stderr.strip().splitlines()[-1]}"
            print(f"CLI export --format {fmt} ({size:.0f} MB): {seconds:.2f} s, peak RSS {peak / 1e6:.2f} GB{status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--run", help="reuse/create the synthetic run here (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="app loads to time (default 3)")
    parser.add_argument(
        "--path",
        choices=("index", "whole"),
        default="index",
        help="open through the app index (default) or read samples.parquet whole",
    )
    parser.add_argument("--tabs", action="store_true", help="also time the lazy tabs (slow at millions)")
    parser.add_argument(
        "--cli-export",
        action="store_true",
        help="also time `mimic-explorer export` (csv, parquet; uids on a pairs run) in fresh processes",
    )
    parser.add_argument("--map", action="store_true", help="the run has embeddings: time the Map view's rows")
    parser.add_argument(
        "--no-neighbours",
        action="store_true",
        help="with --map: no HNSW index and no 'more like this' rows (the HNSW build takes ~1 h at 12.8 M here)",
    )
    parser.add_argument(
        "--open-only",
        action="store_true",
        help="only time one open of an existing --run (what a fresh server process pays)",
    )
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
        if args.samples > LARGE_RUN:  # a chunk at a time, 2 epochs (the 128 M simulation fits disk and memory)
            write_time, _ = timed(lambda: write_large_synthetic_run(run_dir, args.samples, epochs=2))
            epochs = 2
        else:
            write_time, _ = timed(lambda: write_synthetic_run(run_dir, args.samples, embeddings=64 if args.map else 0))
            epochs = 5
        print(f"wrote synthetic run ({args.samples:,} samples, {epochs} epochs) in {write_time:.1f} s: {run_dir}")

    from mimic_explorer.store.layout import RunLayout

    if args.path == "whole":
        from mimic_explorer.ui import state as state_module

        state_module.indexed_samples = lambda run: run.samples
    print(f"path: {args.path}; {args.samples:,} samples; RSS before opening {rss_gb()[0]:.2f} GB")

    def load():
        explorer = Explorer(run_dir, restore=False)
        root = pn.Row(explorer.controls, explorer.main).get_root(Document())
        return explorer, root

    if args.open_only:
        seconds, _ = timed(load)
        print(f"open in a fresh process (index already built): {seconds:.2f} s; RSS {rss_gb()[0]:.2f} GB")
        return 0
    if args.path == "index":
        shutil.rmtree(RunLayout(run_dir).index_dir, ignore_errors=True)
        from mimic_explorer.store.app_index import open_index

        build, _ = timed(lambda: open_index(run_dir))
        cold, _ = timed(load)
        print(f"cold open (index build {build:.2f} s, then construct + first render): {build + cold:.2f} s")
    else:
        timed(load)  # warm-up: first-time imports and numba/bokeh caches are not what a session pays
    loads = []
    for _ in range(args.repeat):
        seconds, (explorer, _root) = timed(load)
        loads.append(seconds)
    construct, _ = timed(lambda: Explorer(run_dir, restore=False))
    print(
        f"warm open (construct + first render), {args.repeat} runs: median {statistics.median(loads):.3f} s, "
        f"max {max(loads):.3f} s (construction alone {construct:.3f} s)"
    )
    if args.path == "index":  # later sessions of one server share the run's index, counters and thumbnails
        subprocess.run(
            [sys.executable, __file__, "--run", str(run_dir), "--samples", str(args.samples), "--open-only"],
            check=False,
        )

    lo, hi = explorer.state.score_range()
    changes = []
    for i in range(25):
        value = lo + (hi - lo) * (0.2 + 0.6 * ((i * 7) % 25) / 25)
        seconds, _ = timed(lambda value=value: setattr(explorer, "threshold", value))
        changes.append(seconds)
    print(
        f"threshold change (25 values): median {statistics.median(changes) * 1000:.1f} ms, "
        f"max {max(changes) * 1000:.1f} ms — kept {explorer.counts.kept} of {explorer.counts.total}"
    )

    others = {}
    rule = explorer.filter  # the filter model: several rule parameters in one update
    others["quantile 0.3"] = timed(lambda: rule.param.update(rule="quantile", quantile=0.3))[0]
    others["quantile 0.3 per class"] = timed(lambda: setattr(explorer, "per_class", True))[0]
    others["keep-count 600k (first: sorts once)"] = timed(
        lambda: rule.param.update(rule="keep_count", per_class=False, keep_count=600_000)
    )[0]
    others["keep-count 650k"] = timed(lambda: setattr(explorer, "keep_count", 650_000))[0]
    others["ensemble"] = timed(lambda: setattr(explorer, "rule", "ensemble"))[0]
    others["by value + 2 class overrides"] = timed(
        lambda: rule.param.update(rule="threshold", class_overrides={1: 0.6, 2: 0.4})
    )[0]
    for name, seconds in others.items():
        print(f"  {name}: {seconds * 1000:.1f} ms")

    rule.param.update(rule="threshold", class_overrides={})
    pages = [
        timed(lambda size=size: setattr(explorer.galleries, "gallery_size", size))[0] for size in (24, 16, 32, 16, 20)
    ]
    print(
        f"gallery page (three galleries redrawn, 5 sizes): median {statistics.median(pages) * 1000:.0f} ms, "
        f"max {max(pages) * 1000:.0f} ms"
    )
    clicks = [timed(lambda p=p: explorer.galleries.open(int(p)))[0] for p in explorer.galleries.shown["highest"][:5]]
    print(
        f"detail click (detail view + trajectory from {len(explorer.run.epoch_scores.epochs)} epoch parts), 5 cards: "
        f"median {statistics.median(clicks):.2f} s, max {max(clicks):.2f} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-keep-") as folder:
        seconds, out = timed(lambda: explorer.exports.write_keep_list(Path(folder) / "keep.csv"))
        print(
            f"keep-list export to disk (csv, {explorer.counts.kept:,} rows, {out.stat().st_size / 1e6:.0f} MB): "
            f"{seconds:.2f} s"
        )
    now, peak = rss_gb()
    print(f"server RSS after open, changes, pages, clicks and export: {now:.2f} GB (peak {peak:.2f} GB)")
    fresh = Explorer(run_dir, restore=False)  # no id was looked up in this one yet
    some_id = str(fresh.state.rows([fresh.state.total // 3])["sample_id"].iloc[0])
    first, _ = timed(lambda: fresh.select(some_id))
    again, _ = timed(lambda: fresh.select(str(fresh.state.rows([7])["sample_id"].iloc[0])))
    print(f"select(sample_id) in a fresh explorer: first {first:.3f} s, next {again:.3f} s")
    if args.cli_export:
        time_cli_export(run_dir)
    if args.map:
        time_map(run_dir, explorer, neighbours=not args.no_neighbours)
    if not args.tabs:
        print(
            f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, panel {pn.__version__}"
        )
        if tmp is not None:
            tmp.cleanup()
        return 0
    tabs = explorer.more_views.tabs
    for index, name in enumerate(tabs._names):
        if index == 0:
            continue
        seconds, _ = timed(lambda index=index: setattr(tabs, "active", index))
        print(f"first open of tab {name!r}: {seconds:.2f} s")
    with_tabs = []
    for i in range(25):
        value = lo + (hi - lo) * (0.2 + 0.6 * ((i * 11) % 25) / 25)
        seconds, _ = timed(lambda value=value: setattr(explorer, "threshold", value))
        with_tabs.append(seconds)
    print(
        f"threshold change with every tab rendered (10 per-class plots, scatter, ...): median "
        f"{statistics.median(with_tabs) * 1000:.1f} ms, max {max(with_tabs) * 1000:.1f} ms"
    )

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, panel {pn.__version__}")
    ok = statistics.median(loads) < 3.0 and statistics.median(changes) < 0.2 and statistics.median(with_tabs) < 0.2
    print("PASS" if ok else "FAIL", "(load < 3 s, threshold change < 0.2 s)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
