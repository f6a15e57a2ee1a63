"""Leave the process once the command is done, without the C++ teardown that can abort it.

Why: a command that finished its work and wrote its run can still die with SIGABRT ("terminate called
without an active exception") while the interpreter exits: native thread pools (Arrow's, apache/arrow
issue 34314; gloo's under torchrun) are destroyed by ``exit()``'s static destructors while one of their
threads is still joinable. The exit status is then -6, and ``torchrun`` reports a failed job and kills the
other ranks, though every file was written. So the command-line entry point ends the Python way first
(foreground threads joined, ``atexit`` handlers run, streams flushed: everything the program itself
registered) and then leaves with ``os._exit``, which skips only the native destructors.

Standard library only (see the layers in docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_after_python_teardown(status: int) -> NoReturn:
    """Finish what Python's own shutdown would (threads, ``atexit``, stream buffers), then exit with ``status``."""
    shutdown = getattr(threading, "_shutdown", None)  # joins foreground threads, as Py_FinalizeEx does first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing left to keep
            stream.flush()
    os._exit(status)
