"""How many threads torch's intra-op pool gets: the cores this process may use, shared among the ranks.

Why not torch's own default: torch starts one thread per core *of the machine*, whatever the process
may actually use. In a container limited by a CPU quota, under a CPU affinity mask (``taskset``, a
batch scheduler's cpuset) or with several torchrun ranks on one machine, that is more threads than
cores; OpenMP threads then spin waiting for each other while the kernel runs something else, and a
run slows down many times over (measured in benchmarks/RESULTS.md, "Threads"). So a command asks for
the cores it may use — the affinity mask, capped by a cgroup CPU quota where one is set — less the
cores the machine's other work keeps busy, divided by the torchrun processes on this machine
(``LOCAL_WORLD_SIZE``).

Why the busy cores count: on a machine shared with other busy processes, threads beyond the free
cores wait on each other just the same (a frozen-tower pairs run took 3-10× longer with two threads
than with one on a loaded 2-core machine, RESULTS.md). The busy cores are the 1-minute load average
(rounded), read when the run starts; it is used only when this process may use every core of the
machine — inside a smaller cpuset or quota, the machine's load says nothing about our share. The
load lags by about a minute, so a machine that has just become idle can still give fewer threads
for a run started then; ``--threads`` overrides.

Who decides, first match wins: ``--threads N`` (``threads=`` from Python), the environment variable
``MIMIC_EXPLORER_THREADS``, ``OMP_NUM_THREADS`` (torch already honours it: left alone), then the
default above.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

#: the environment variable that sets the thread count when ``--threads`` is not given
THREADS_VARIABLE = "MIMIC_EXPLORER_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``), or None when none is set.

    cgroup v2 writes ``QUOTA PERIOD`` (``max PERIOD`` without a quota) to ``cpu.max``; cgroup v1 keeps
    ``cpu.cfs_quota_us`` (-1 without one) and ``cpu.cfs_period_us`` under ``cpu/``."""
    text = _read(root / "cpu.max")
    if text is not None:
        quota, _, period = text.partition(" ")
        if quota == "max":
            return None
        numbers = (quota, period or "100000")
    else:
        numbers = (_read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us"))
        if numbers[0] is None or numbers[1] is None:
            return None
    try:
        quota_us, period_us = int(numbers[0]), int(numbers[1])
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on: its affinity mask, capped by the cgroup quota (rounded down,
    at least 1: a quota of 1.5 cores keeps two threads from both running all the time)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)


def machine_load() -> float | None:
    """The machine's 1-minute load average (runnable processes), or None where it cannot be read."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def free_cores(root: Path = CGROUP_ROOT, load: float | None = None, machine_cores: int | None = None) -> int:
    """``usable_cores()`` less the cores the machine's other work keeps busy (``load``, rounded; default: the
    1-minute load average) — only when this process may use every core of the machine (``machine_cores``,
    default ``os.cpu_count()``); at least 1."""
    cores = usable_cores(root)
    machine_cores = machine_cores or os.cpu_count() or cores
    load = machine_load() if load is None else load
    if load is None or cores < machine_cores:
        return cores
    return max(1, cores - round(load))


def default_threads(
    env: Mapping[str, str] | None = None,
    root: Path = CGROUP_ROOT,
    load: float | None = None,
    machine_cores: int | None = None,
) -> int:
    """``free_cores()`` shared among the torchrun processes on this machine (``LOCAL_WORLD_SIZE``), at least 1."""
    env = os.environ if env is None else env
    try:
        local = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, free_cores(root, load, machine_cores) // local)


def check_threads(value: object, where: str) -> int:
    """``value`` as a thread count, or ``ValueError`` naming ``where`` it came from."""
    try:
        count = int(str(value).strip()) if not isinstance(value, bool) else 0
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"{where} must be a whole number of threads >= 1, got {value!r}")
    return count


def choose_threads(requested: int | None = None, env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """(the thread count to set — None to leave torch's —, and who chose it), by the order in the module docstring."""
    env = os.environ if env is None else env
    if requested is not None:
        return check_threads(requested, "--threads"), "--threads"
    if env.get(THREADS_VARIABLE, "").strip():
        return check_threads(env[THREADS_VARIABLE], THREADS_VARIABLE), THREADS_VARIABLE
    if env.get("OMP_NUM_THREADS", "").strip():
        return None, "OMP_NUM_THREADS"
    return default_threads(env), "the free cores this process may use"


@contextmanager
def run_threads(requested: int | None = None) -> Iterator[int]:
    """Set torch's intra-op threads for one run (``choose_threads``) and give the caller's count back after it.

    Why given back: the Python API runs commands inside a notebook's or script's process, whose own
    setting must outlive the run; the command line's process ends with the run anyway."""
    count, _ = choose_threads(requested)
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
