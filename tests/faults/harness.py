"""What the fault tests share: running commands in forked children of a warm process, drawing fault
points from what an uninterrupted run did, and deciding whether a rerun gave the uninterrupted result.

A *fault point* is a place in a command's run where the fault lands:

- a **kill** right after the N-th file the run commits (``after N``) or right before it (``before N``:
  the new file lies complete under its temporary name, as a kill in the middle of writing it leaves
  it), N drawn (seeded) from the commits an uninterrupted run makes;
- a **full disk** from the N-th write on (``ENOSPC at N``), N drawn from its writes.

A run is *lost* when the same command run again does not give the uninterrupted result: the same
samples (ids, every score within 1e-6, keep, mimic_score), errors, score rows, thumbnails and meta
facts, with no temporary file, no lock and status complete.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tests.faults.killer import ENOSPC_AT, FAULT_VARIABLES, KILL_AFTER, KILL_BEFORE, RECORD

ROOT = Path(__file__).resolve().parents[2]
#: tolerance of every score compared with the uninterrupted run
TOLERANCE = 1e-6
#: seeds of the fault points: MIMIC_EXPLORER_FAULT_SEED moves every draw (the suite's default is fixed)
SEED = int(os.environ.get("MIMIC_EXPLORER_FAULT_SEED", "22"))
#: meta.json fields that say when and how a run was made, not what it holds
VOLATILE_META = {"created", "finished", "timings", "command", "versions", "error"}
#: options that say only where a run's files go (each trial writes its own folder)
WHERE_OPTIONS = {"out", "save_model"}
#: hidden files a finished run directory may hold: the app index's flock file (kept by design)
ALLOWED_HIDDEN = {".index.lock"}


@dataclass
class Result:
    """One command's exit status (negative: killed by that signal; None: ran past its timeout) and output."""

    rc: int | None
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class Zygote:
    """The warm process of ``tests/faults/zygote.py`` and the commands run in its forked children."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in FAULT_VARIABLES}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        self.log = open(scratch / "zygote.log", "w")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "faults" / "zygote.py")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the zygote did not start: {(scratch / 'zygote.log').read_text()[-3000:]}")
        self.numbers = itertools.count()
        self.runs = 0

    def _request(self, request: dict, env: dict | None, timeout: float) -> Result:
        number = next(self.numbers)
        out, err = self.scratch / f"{number:05d}.out", self.scratch / f"{number:05d}.err"
        request = {
            **request,
            "env": {k: str(v) for k, v in (env or {}).items()},
            "unset": list(FAULT_VARIABLES),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the zygote died: {(self.scratch / 'zygote.log').read_text()[-3000:]}")
        self.runs += 1
        return Result(json.loads(answer)["rc"], out.read_text(), err.read_text())

    def cli(self, argv: list[str], env: dict | None = None, timeout: float = 300) -> Result:
        """``mimic-explorer ARGV`` in a forked child with ``env`` added (fault variables among them)."""
        return self._request({"argv": [str(a) for a in argv]}, env, timeout)

    def call(self, function: str, args: list, env: dict | None = None, timeout: float = 300) -> Result:
        """``module:function(*args)`` in a forked child; its return value is the exit status."""
        return self._request({"call": function, "args": [str(a) for a in args]}, env, timeout)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.log.close()


# ------------------------------------------------------------------------------------------ fault points


@dataclass(frozen=True)
class Point:
    """Where a fault lands: ``kind`` is 'after' or 'before' (a kill at the N-th commit) or 'enospc'
    (a full disk from the N-th write on); ``what`` names the commit or write."""

    kind: str
    number: int
    what: str

    def env(self) -> dict:
        variable = {"after": KILL_AFTER, "before": KILL_BEFORE, "enospc": ENOSPC_AT}[self.kind]
        return {variable: self.number}

    def __str__(self) -> str:
        return f"{'full disk at' if self.kind == 'enospc' else 'kill ' + self.kind} #{self.number} ({self.what})"


@dataclass
class Recording:
    """What an uninterrupted run committed and wrote, in order (``killer.RECORD``)."""

    commits: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Recording:
        found = cls()
        for line in path.read_text().splitlines() if path.exists() else []:
            kind, _rank, name = line.split(" ", 2)
            (found.commits if kind == "commit" else found.writes).append(name)
        return found

    def kill_points(self, label: str, count: int) -> list[Point]:
        """``count`` kill points, drawn without repeats from every (before/after, commit) of the run."""
        rng = random.Random(zlib.crc32(f"{SEED}-{label}-kill".encode()))
        every = [(kind, n) for n in range(1, len(self.commits) + 1) for kind in ("before", "after")]
        chosen = sorted(rng.sample(every, min(count, len(every))), key=lambda p: (p[1], p[0]))
        return [Point(kind, n, self.commits[n - 1]) for kind, n in chosen]

    def named_point(self, kind: str, name: str, occurrence: int) -> Point:
        """The kill ``kind`` at the ``occurrence``-th commit (Python index: -1 is the last) of a file whose
        name is ``name`` or, for a name that starts with a dot, ends with it (``.npz``)."""
        numbers = [
            n
            for n, committed in enumerate(self.commits, start=1)
            if committed == name or (name.startswith(".") and committed.endswith(name))
        ]
        assert numbers, f"the run never committed {name}: {self.commits}"
        return Point(kind, numbers[occurrence], self.commits[numbers[occurrence] - 1])

    def full_disk_points(self, label: str, count: int) -> list[Point]:
        rng = random.Random(zlib.crc32(f"{SEED}-{label}-enospc".encode()))
        chosen = sorted(rng.sample(range(1, len(self.writes) + 1), min(count, len(self.writes))))
        return [Point("enospc", n, self.writes[n - 1]) for n in chosen]


def record_env(path: Path) -> dict:
    return {RECORD: path}


# ------------------------------------------------------------------------------------------ the checks


def files_of(folder: Path) -> set[str]:
    """Every file under ``folder``, as relative paths."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden partial files and folders under ``folder``, and a run's ``.lock``."""
    found = []
    for path in folder.rglob("*"):
        name = path.name
        if ".tmp" in name or (name.startswith(".") and name not in ALLOWED_HIDDEN):
            found.append(str(path.relative_to(folder)))
    return sorted(found)


def temporaries(folder: Path) -> list[str]:
    """Temporary files and folders under ``folder`` (a failed command may leave its committed parts —
    what a rerun resumes from — but never a file it was still writing) and a run's ``.lock``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if ".tmp" in p.name or p.name.startswith((".index-building-", ".index-old-")) or p.name == ".lock"
    )


def assert_clean(folder: Path) -> None:
    left = leftovers(folder)
    assert not left, f"left behind in {folder}: {left}"


def _compare(expected, actual, where: str) -> None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        assert set(expected) == set(actual), f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"
        for key in expected:
            _compare(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(expected) == len(actual), f"{where}: {len(actual)} items, {len(expected)} expected"
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            _compare(a, b, f"{where}[{i}]")
    elif isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        assert (np.isnan(expected) and np.isnan(actual)) or abs(expected - actual) <= TOLERANCE, (
            f"{where}: {actual} != {expected}"
        )
    else:
        assert expected == actual, f"{where}: {actual!r} != {expected!r}"


def meta_facts(run: Path, ignore: set[str] = frozenset()) -> dict:
    meta = json.loads((run / "meta.json").read_text())
    meta["config"] = {k: v for k, v in meta.get("config", {}).items() if k not in WHERE_OPTIONS}
    return {k: v for k, v in meta.items() if k not in VOLATILE_META | set(ignore)}


def assert_same_frames(expected: pd.DataFrame, actual: pd.DataFrame, what: str) -> None:
    assert list(actual.columns) == list(expected.columns), f"{what}: columns {list(actual.columns)}"
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, {len(expected)} expected"
    pd.testing.assert_frame_equal(
        actual.reset_index(drop=True),
        expected.reset_index(drop=True),
        check_exact=False,
        atol=TOLERANCE,
        rtol=0,
        obj=what,
    )


def score_rows(run: Path) -> pd.DataFrame:
    parts = sorted((run / "scores").glob("*.parquet"))
    if not parts:
        return pd.DataFrame()
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    keys = [c for c in ("epoch", "position", "sample_id") if c in rows.columns]
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


def thumbnails(run: Path) -> dict[str, bytes]:
    index = run / "thumbs" / "index.parquet"
    if not index.exists():
        return {}
    blob = (run / "thumbs" / "thumbs.bin").read_bytes()
    rows = pd.read_parquet(index)
    return {str(s): blob[o : o + n] for s, o, n in zip(rows["sample_id"], rows["offset"], rows["length"], strict=True)}


def assert_same_run(
    expected: Path, actual: Path, *, ignore_meta: set[str] = frozenset(), same_files: bool = True
) -> None:
    """``actual`` holds the run ``expected`` holds (module docstring), finished and clean."""
    meta = json.loads((actual / "meta.json").read_text())
    assert meta["status"] == "complete", f"status {meta['status']}: {meta.get('error')}"
    assert not (actual / ".lock").exists(), "the run's .lock is left"
    assert_clean(actual)
    if same_files:
        assert files_of(actual) == files_of(expected), f"files differ: {sorted(files_of(actual) ^ files_of(expected))}"
    _compare(meta_facts(expected, ignore_meta), meta_facts(actual, ignore_meta), "meta")
    assert_same_frames(
        pd.read_parquet(expected / "samples.parquet"), pd.read_parquet(actual / "samples.parquet"), "samples"
    )
    if (expected / "errors.parquet").exists() or (actual / "errors.parquet").exists():
        assert_same_frames(
            pd.read_parquet(expected / "errors.parquet").sort_values("sample_id"),
            pd.read_parquet(actual / "errors.parquet").sort_values("sample_id"),
            "errors",
        )
    assert_same_frames(score_rows(expected), score_rows(actual), "score rows")
    assert thumbnails(actual) == thumbnails(expected), "thumbnails differ"


def assert_whole_or_absent(folder: Path) -> None:
    """Every file a failed command left under its final name is whole: parquet and JSON files read,
    a training state loads. (A half-written file can only hide under a temporary name.)"""
    import torch

    for path in folder.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------ the tally


#: the kinds of fault a trial tries, as the tally's columns name them
FAULT_KINDS = {
    "kill": "kill -9",
    "enospc": "full disk (injected)",
    "tmpfs": "full disk (tmpfs)",
    "process_count": "process count",
}


@dataclass
class Tally:
    """Per command: fault points tried by kind, survived and runs lost — the figures of benchmarks/RESULTS.md."""

    rows: dict = field(default_factory=dict)

    def _row(self, command: str) -> dict:
        return self.rows.setdefault(command, {**dict.fromkeys(FAULT_KINDS, 0), "survived": 0, "lost": 0})

    def trial(self, command: str, kind: str) -> _Trial:
        return _Trial(self._row(command), kind)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.rows, indent=2, sort_keys=True) + "\n")

    def table(self) -> str:
        """A Markdown table: one row per command, and the totals."""
        keys = [*FAULT_KINDS, "survived", "lost"]
        lines = [
            "| command | " + " | ".join([*FAULT_KINDS.values(), "faults survived", "runs lost"]) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        total = dict.fromkeys(keys, 0)
        for command, row in sorted(self.rows.items()):
            lines.append(f"| {command} | " + " | ".join(str(row[k]) for k in keys) + " |")
            for k in keys:
                total[k] += row[k]
        lines.append("| **total** | " + " | ".join(f"**{total[k]}**" for k in keys) + " |")
        return "\n".join(lines)


class _Trial:
    """One fault tried on one command: counted when entered, survived when the body passes, else lost."""

    def __init__(self, row: dict, kind: str):
        self.row, self.kind = row, kind

    def __enter__(self) -> _Trial:
        self.row[self.kind] += 1
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.row["survived"] += 1
        elif issubclass(kind, Exception):
            self.row["lost"] += 1
