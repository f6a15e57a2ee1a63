"""Every message a run prints to the terminal also goes to ``run.log`` in its directory."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable

from mimic_explorer.pipeline.distributed import DistContext
from mimic_explorer.pipeline.options import RunOptions
from mimic_explorer.store.writer import prepare_run_dir


def tee_log(out: Path, log: Callable[[str], None], rank: int = 0) -> Callable[[str], None]:
    path = Path(out) / "run.log"

    def both(text: str) -> None:
        log(text)
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        prefix = f"[rank {rank}] " if rank else ""
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {prefix}{text}\n")

    return both


def start_run_dir(options: RunOptions, ctx: DistContext, device: str,
                  log: Callable[[str], None]) -> tuple[Path, Callable[[str], None]]:
    """Create the run directory (rank 0; the others wait), note the command in ``run.log`` only (the
    terminal gets results and problems), and return it with a logger that writes to both."""
    out = prepare_run_dir(options.out) if ctx.is_main else Path(options.out).expanduser()
    ctx.barrier()
    tee_log(out, lambda text: None, ctx.rank)(
        f"{options.command} {options.data} {options.arch} -> {out} (device {device}, {ctx.world} process(es))")
    return out, tee_log(out, log, ctx.rank)
