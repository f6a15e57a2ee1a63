"""Run one ``mimic-explorer`` command in this process, pinned to one CPU thread, through the stable
command-line entry point ``mimic_explorer.cli.main`` — the interface the golden files outlive.

Why one thread: float reductions split across threads add in another order, and the last bits of the
scores moved between one and two threads here (the demo asks for up to four). One thread gives the
same bits on every machine, so the goldens hold within their tolerance anywhere.
"""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

#: options every command of the golden cases takes: CPU, no worker processes, no progress bars
QUIET_CPU = ["--device", "cpu", "--workers", "0", "--quiet"]


def run_command(args: list[str], out: Path) -> Path:
    """Run ``mimic-explorer ARGS --out OUT`` and return the run directory it printed last.

    Fails the test (with the command's stderr) when the command does not exit 0 or does not end its
    stdout with the run directory.

    Parameters
    ----------
    args
        The command and its options, without ``--out``.
    out
        The run directory to write.

    Returns
    -------
    Path
        ``out``, resolved.
    """
    from mimic_explorer.cli import main

    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    stdout, stderr = io.StringIO(), io.StringIO()
    set_threads(1)
    torch.set_num_threads = lambda _n: None  # a command asking for more threads keeps one
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            status = main([*args, "--out", str(out)])
    finally:
        torch.set_num_threads = set_threads
        set_threads(threads)
    if status != 0:
        pytest.fail(f"mimic-explorer {' '.join(args)} exited {status}:\n{stderr.getvalue()[-4000:]}", pytrace=False)
    printed = stdout.getvalue().strip().splitlines()
    out = Path(out).resolve()
    if not printed or Path(printed[-1]) != out:
        pytest.fail(
            f"mimic-explorer {args[0]} did not end its output with the run directory {out}: {printed[-1:]}",
            pytrace=False,
        )
    return out
