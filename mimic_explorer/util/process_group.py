"""Run a long-lived child command (the app server) so that stopping the parent always stops it.

Why a process group: ``mimic-explorer serve`` starts ``panel serve`` as a child, and that server may
start children of its own (the first launch builds the demo run in a subprocess). The child runs in
a new session, hence its own process group; on SIGTERM, SIGINT or SIGHUP, and whenever the parent
returns, the whole group gets SIGTERM, then SIGKILL if it has not exited after ``stop_timeout``
seconds. A terminal's Ctrl-C reaches only the parent, which stops the group once, in order. On Linux
the child also asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so even a
parent killed with SIGKILL does not leave the server holding its port.

Why a child and not an in-process server (``pn.serve``): ``serve`` stays exactly ``panel serve
mimic_explorer/app.py --args RUN`` (the same app script run per session, the same options and
logging as the README's command, nothing to keep in step), and the server's own children would need
a group to be stopped with it anyway; a default SIGTERM ends a Python process without running its
``atexit`` hooks, so an in-process server could not take them along without this machinery either.

Standard library only (see the layers in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

#: signals that stop the child's group (and then the parent)
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if s is not None)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when ``parent_pid`` exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child must not load libraries
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when the group has no process left."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user: nothing more this process may do
        return False
    return True


def run_process_group(
    command: Sequence[str], *, stop_timeout: float = 10.0, on_stop: Callable[[int], None] | None = None
) -> int:
    """Run ``command`` in its own process group until it exits or this process is asked to stop.

    Parameters
    ----------
    command
        The child's argument vector (``sys.executable``, ``-m``, …).
    stop_timeout
        Seconds the group has to exit after SIGTERM before it gets SIGKILL.
    on_stop
        Called with the signal number when a stop signal arrives (e.g. to print a line).

    Returns
    -------
    int
        The child's exit status; ``128 + signum`` when a stop signal ended it (130 for SIGINT, 143 for
        SIGTERM), as a shell reports a process stopped by that signal.
    """
    # preexec_fn only calls prctl (looked up beforehand); `serve` starts no thread before this point
    proc = subprocess.Popen(list(command), start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))  # noqa: PLW1509 - no thread yet (above)
    pgid = proc.pid  # a new session's leader leads its own process group
    received: list[int] = []
    deadline: list[float] = []

    def stop(signum: int, _frame) -> None:
        received.append(signum)
        if len(received) == 1:
            deadline.append(time.monotonic() + stop_timeout)
            _signal_group(pgid, signal.SIGTERM)
            if on_stop is not None:
                on_stop(signum)
        else:  # asked twice: no more waiting
            _signal_group(pgid, signal.SIGKILL)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        while True:
            try:
                status = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if deadline and time.monotonic() > deadline[0]:
                    _signal_group(pgid, signal.SIGKILL)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_group(proc, pgid, stop_timeout)
    return 128 + received[0] if received else status


def _stop_group(proc: subprocess.Popen, pgid: int, stop_timeout: float) -> None:
    """Whatever is left of the group (the leader if this process is leaving early, or a grandchild
    the leader did not take with it): SIGTERM, then SIGKILL after ``stop_timeout``."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    end = time.monotonic() + stop_timeout
    while time.monotonic() < end:
        if proc.poll() is None:
            time.sleep(0.05)
            continue
        if not _signal_group(pgid, 0):  # signal 0: is any member left?
            return
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=stop_timeout)
