"""Run ``mimic-explorer ARGS`` with a fault placed at a chosen point: a kill -9 or a full disk the test
can place, or a record of every point where one could be placed.

Usage: ``python tests/faults/killer.py ARGS`` (or as torchrun's script; ``tests/faults/zygote.py``
arms the same faults in each process it forks). The environment says what happens:

- ``MIMIC_EXPLORER_KILL_AFTER=N``: SIGKILL right after the N-th file whose name contains
  ``MIMIC_EXPLORER_KILL_MATCH`` (default: every file) is committed into place by ``os.replace`` —
  every file the package writes goes through that rename, so each commit is a point where a real
  kill can land and the run must survive it.
- ``MIMIC_EXPLORER_KILL_BEFORE=N``: SIGKILL right *before* that rename: the new file lies complete
  under its temporary name, as a kill in the middle of writing it leaves it.
- ``MIMIC_EXPLORER_ENOSPC_AT=N``: from the N-th write on (``os.write``, ``os.pwrite``, ``os.fsync``:
  every committed file is synced before its rename, the lock and the feature cache are written by
  these), every write fails with ``OSError(ENOSPC)``, as on a disk that just became full.
- ``MIMIC_EXPLORER_FAULT_RECORD=FILE``: append one line per commit (``commit RANK NAME``) and per
  write (``write RANK KIND:NAME``) to FILE, so kill points and full-disk points can be drawn from
  what an uninterrupted run does.
- ``MIMIC_EXPLORER_KILL_RANK=R``: only rank R (``RANK``) is armed (default: every rank).

Nothing is patched in the package itself; the package never knows.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

KILL_AFTER = "MIMIC_EXPLORER_KILL_AFTER"
KILL_BEFORE = "MIMIC_EXPLORER_KILL_BEFORE"
KILL_MATCH = "MIMIC_EXPLORER_KILL_MATCH"
KILL_RANK = "MIMIC_EXPLORER_KILL_RANK"
ENOSPC_AT = "MIMIC_EXPLORER_ENOSPC_AT"
RECORD = "MIMIC_EXPLORER_FAULT_RECORD"
#: every variable above: a process that must run unarmed drops them all
FAULT_VARIABLES = (KILL_AFTER, KILL_BEFORE, KILL_MATCH, KILL_RANK, ENOSPC_AT, RECORD)


def _fd_name(fd: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return "?"


def arm() -> None:
    """Patch ``os.replace`` and the low-level writes of this process as the environment says."""
    rank = os.environ.get(KILL_RANK)
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    after, before = int(os.environ.get(KILL_AFTER, "0")), int(os.environ.get(KILL_BEFORE, "0"))
    full_from = int(os.environ.get(ENOSPC_AT, "0"))
    record_path = os.environ.get(RECORD)
    if after <= 0 and before <= 0 and full_from <= 0 and not record_path:
        return
    match = os.environ.get(KILL_MATCH, "")
    me = os.environ.get("RANK", "0")
    record = open(record_path, "a", buffering=1, encoding="utf-8") if record_path else None  # noqa: SIM115 - lives with the process
    real_replace = os.replace
    commits, writes = [0], [0]

    def note(kind: str, name: str) -> None:
        if record is not None:
            record.write(f"{kind} {me} {name}\n")

    def replace(src, dst, *args, **kwargs):
        name = os.path.basename(os.fspath(dst))
        matched = match in name
        if matched:
            commits[0] += 1
            note("commit", name)
            if 0 < before <= commits[0]:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *args, **kwargs)
        if matched and 0 < after <= commits[0]:
            os.kill(os.getpid(), signal.SIGKILL)

    def guarded(real, kind: str):
        def call(fd, *args, **kwargs):
            writes[0] += 1
            note("write", f"{kind}:{_fd_name(fd)}")
            if 0 < full_from <= writes[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, *args, **kwargs)

        return call

    os.replace = replace
    if full_from > 0 or record is not None:
        os.write, os.pwrite, os.fsync = (
            guarded(os.write, "write"),
            guarded(os.pwrite, "pwrite"),
            guarded(os.fsync, "fsync"),
        )


# the name the tests of the distributed commands have used
_arm = arm


if __name__ == "__main__":
    arm()
    from mimic_explorer.cli import main

    raise SystemExit(main(sys.argv[1:]))
