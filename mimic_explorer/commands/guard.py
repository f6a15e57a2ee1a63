"""Whatever stops a run marks it failed, with the reason, on every rank together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mimic_explorer.store.writer import RunWriter
from mimic_explorer.util.distributed import DistContext


@contextmanager
def failure_recorded(writer: RunWriter | None, ctx: DistContext) -> Iterator[None]:
    """Run the body; on any exception (Ctrl-C included) ``meta.json`` says failed and why. Under
    torchrun every rank reports whether it succeeded, so no rank waits forever on a dead one."""
    ok = False
    try:
        yield
        ok = True
    except BaseException as exc:
        if writer is not None:
            writer.fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise
    finally:
        if ctx.active:
            ctx.all_ok(ok)
