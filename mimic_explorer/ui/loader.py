"""Build the demo run on first launch, in a subprocess, with progress the page can show.

Why a subprocess: the app never imports torch; training lives in the CLI (``python -m mimic_explorer
demo``). One build per server process is shared by all sessions; its last progress line is polled.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
import threading
from pathlib import Path


class DemoBuild:
    """A single background ``mimic-explorer demo`` run whose progress is readable from any thread."""

    _lock = threading.Lock()
    _current: DemoBuild | None = None

    def __init__(self, out: Path):
        self.out = out
        self.last_line = "starting…"
        self.returncode: int | None = None
        self.error = ""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mimic_explorer", "demo", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        atexit.register(self.stop)  # a server that shuts down takes its unfinished build with it

    def stop(self) -> None:
        """Terminate the build if it is still running (the run directory stays 'running', never 'complete')."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    @classmethod
    def shared(cls, out: Path) -> DemoBuild:
        """The build of ``out`` every session shares: started once, started again only after a failed one."""
        with cls._lock:
            if cls._current is None or (cls._current.returncode not in (None, 0)):
                cls._current = cls(out)
            return cls._current

    def _pump(self) -> None:
        buffer = b""
        tail: list[str] = []
        assert self._proc.stderr is not None
        while (
            chunk := self._proc.stderr.read1(4096)
            if hasattr(self._proc.stderr, "read1")
            else self._proc.stderr.read(4096)
        ):
            buffer += chunk
            *lines, buffer = buffer.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").strip()
                if text:
                    self.last_line = text
                    tail = [*tail, text][-5:]
        self.returncode = self._proc.wait()
        if self.returncode != 0:
            self.error = "\n".join(tail)

    @property
    def done(self) -> bool:
        """Whether the build process has ended."""
        return self.returncode is not None
