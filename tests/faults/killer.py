"""Run ``mimic-explorer ARGS`` and die by SIGKILL at a chosen point: a kill -9 the test can place.

Usage: ``python tests/faults/killer.py ARGS`` (or as torchrun's script), with
``MIMIC_EXPLORER_KILL_AFTER=N`` and optionally ``MIMIC_EXPLORER_KILL_MATCH=TEXT`` (default: every
file) and ``MIMIC_EXPLORER_KILL_RANK=R`` (default: every rank). The process kills itself right after
the N-th file whose name contains TEXT is committed into place (``os.replace``: every file the
package writes goes through that rename, so each commit is a point where a real kill can land and
the run must survive it). Nothing is patched in the package itself; the package never knows.
"""

from __future__ import annotations

import os
import signal
import sys


def _arm() -> None:
    after = int(os.environ.get("MIMIC_EXPLORER_KILL_AFTER", "0"))
    rank = os.environ.get("MIMIC_EXPLORER_KILL_RANK")
    if after <= 0 or (rank is not None and rank != os.environ.get("RANK", "0")):
        return
    match = os.environ.get("MIMIC_EXPLORER_KILL_MATCH", "")
    real_replace, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if match in os.path.basename(os.fspath(dst)):
            seen[0] += 1
            if seen[0] >= after:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


if __name__ == "__main__":
    _arm()
    from mimic_explorer.cli import main

    raise SystemExit(main(sys.argv[1:]))
