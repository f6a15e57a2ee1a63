"""Terminal progress for long commands: one tqdm bar per stage on stderr, counted in samples."""

from __future__ import annotations

import sys
from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def tqdm_progress() -> Progress:
    """A ``Progress`` that draws one tqdm bar per stage on standard error, counted in samples."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=total, desc=stage, unit="sample", unit_scale=True, file=sys.stderr, leave=True, mininterval=0.2
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
