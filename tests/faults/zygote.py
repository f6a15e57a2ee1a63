"""A warm process that forks one child per command: the fault tests' way to run hundreds of commands.

Why: a ``mimic-explorer`` process spends about four of its five seconds here importing torch,
pandas and the package; a fault test runs each command dozens of times (an uninterrupted run, then
a killed run and its rerun per fault point). This process imports everything once, then for each
request forks a child that is a real process of its own — its own pid, files, exit status and a
real SIGKILL — arms the faults the request's environment names (``killer.arm``) and runs the
command through the command-line entry point ``mimic_explorer.cli.main`` (or a named function).

Protocol: one JSON request a line on stdin — ``{"argv": [...]}`` or ``{"call": "module:function",
"args": [...]}``, with ``env`` (set), ``unset`` (names to drop), ``stdout``/``stderr`` (files) and
``timeout`` (seconds) — answered by one JSON line on stdout: ``{"rc": N}`` (``-9`` for a SIGKILL,
``null`` when the child ran past its timeout and was killed).

Started with ``OMP_NUM_THREADS=1``: a child forked from a process whose OpenMP pool has threads can
hang, and one thread also makes every run's numbers bit-identical (tests/golden/runner.py); a
command that asks for more threads (``demo``) keeps one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
import traceback

WARM_MODULES = (
    "torch",
    "torchvision",
    "pandas",
    "pyarrow.parquet",
    "numpy",
    "PIL.Image",
    "sklearn.metrics",
    "mimic_explorer.cli",
    "mimic_explorer.commands.train",
    "mimic_explorer.commands.score",
    "mimic_explorer.commands.demo",
    "mimic_explorer.commands.finalize",
    "mimic_explorer.tasks.labelled",
    "mimic_explorer.tasks.pairs",
    "mimic_explorer.store.app_index",
    "mimic_explorer.store.reader",
    "mimic_explorer.store.filter_files",
    "mimic_explorer.ui.state",
    "mimic_explorer.data.specs",
    "mimic_explorer.data.digits",
)


def _warm() -> None:
    """Import what every command imports, and let torch initialise its kernels once."""
    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):  # an optional package: its commands import it themselves
            importlib.import_module(name)
    import torch

    torch.set_num_threads(1)
    with torch.no_grad():
        torch.nn.functional.conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3)).sum()


def _child(request: dict) -> None:
    """In the forked child: become the command's process, run it, exit with its status."""
    code = 1
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        for name in request.get("unset", ()):
            os.environ.pop(name, None)
        os.environ.update(request.get("env", {}))
        if request.get("cwd"):
            os.chdir(request["cwd"])
        import torch

        torch.set_num_threads = lambda _count: None  # one thread, whatever a command asks (module docstring)
        from tests.faults.killer import arm

        arm()
        if "argv" in request:
            from mimic_explorer.cli import main

            sys.argv = ["mimic-explorer", *request["argv"]]
            code = main(request["argv"])
        else:
            module, function = request["call"].split(":")
            code = getattr(importlib.import_module(module), function)(*request.get("args", ()))
        code = int(code or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a crash is what the test wants to see, as a real process shows it
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def main() -> None:
    _warm()
    reply = sys.stdout
    print(json.dumps({"ready": os.getpid()}), file=reply, flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        request = json.loads(line)
        reply.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"rc": _wait(pid, float(request.get("timeout", 300)))}), file=reply, flush=True)


if __name__ == "__main__":
    main()
