"""Every message a run prints to the terminal also goes to its ``run.log``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path


def tee_log(path: Path, log: Callable[[str], None], rank: int = 0) -> Callable[[str], None]:
    """A logger that calls ``log`` and appends the message, time-stamped (and ranked under torchrun),
    to the file ``path`` (the run layout's ``log``)."""

    def both(text: str) -> None:
        log(text)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        prefix = f"[rank {rank}] " if rank else ""
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {prefix}{text}\n")

    return both
