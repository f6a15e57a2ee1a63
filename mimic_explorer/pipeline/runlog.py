"""Every message a run prints to the terminal also goes to ``run.log`` in its directory."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable


def tee_log(out: Path, log: Callable[[str], None], rank: int = 0) -> Callable[[str], None]:
    path = Path(out) / "run.log"

    def both(text: str) -> None:
        log(text)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        prefix = f"[rank {rank}] " if rank else ""
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {prefix}{text}\n")

    return both
