"""The command-line entry point leaves the process after Python's own teardown, with the status it was given."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import run_cli


def test_exit_runs_threads_atexit_and_flushes_then_returns_the_status(tmp_path):
    """What the program registered still happens: a foreground thread finishes, a thread pool's workers are
    told to stop (they would hang a naive join), ``atexit`` handlers run, buffered output arrives."""
    marker = tmp_path / "atexit.txt"
    script = textwrap.dedent(
        f"""
        import atexit, sys, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from mimic_explorer.util.process_exit import exit_after_python_teardown

        done = []
        threading.Thread(target=lambda: (time.sleep(0.3), done.append(1))).start()
        pool = ThreadPoolExecutor(2)
        pool.submit(time.sleep, 0.1)
        atexit.register(lambda: open({str(marker)!r}, "w").write(f"thread finished: {{bool(done)}}"))
        sys.stdout.write("buffered, no newline")
        exit_after_python_teardown(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert marker.read_text() == "thread finished: True"


def test_the_program_exits_with_main_s_status():
    assert run_cli("--version").returncode == 0
    bad = run_cli("export", "/nonexistent/run", "--threshold", "0", "--out", "/nonexistent/keep.csv")
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr
