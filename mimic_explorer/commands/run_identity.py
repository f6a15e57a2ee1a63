"""Run ids and the cache rule: the same command on the same inputs returns the existing run.

Why: a run is identified by what determines its numbers — the command's options (not where it writes
or how it reports) and the fingerprints of data, init and reference — so repeating a command is free
and a directory can never silently mix two different runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import RunError, check_format, read_run_meta
from mimic_explorer.store.writer import remove_stale_lock
from mimic_explorer.util.distributed import DistContext


def make_run_id(command: str, identity: dict, fingerprints: dict) -> str:
    """The run id: the command and a hash of the options and fingerprints that decide the results. The same command on
    the same data and models gives the same id, so a finished run is reused and an unfinished one resumed; any change
    gives another id."""
    payload = json.dumps(
        {"command": command, "options": identity, "fingerprints": fingerprints}, sort_keys=True, default=str
    )
    return f"{command}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def remove_leftover_scratch(layout: RunLayout) -> None:
    """Remove the finishing stage's scratch files of a complete run (a kill right after it was marked complete
    leaves them: they are removed after, so that a finish killed before can be finished again)."""
    for scratch in layout.scratch_files():
        scratch.unlink(missing_ok=True)


def _existing_state(out: Path, run_id: str) -> tuple[str, str]:
    """(state, why): 'absent' | 'complete' (same run, reusable) | 'resumable' (same run, unfinished) |
    'other' (a different run, a ``meta.json`` that cannot be read, or one of a newer format — never
    overwritten unless forced; ``why`` names it)."""
    layout = RunLayout(out)
    if not layout.meta.exists():
        return "absent", ""
    try:
        meta = read_run_meta(out)
        check_format(meta, out)
    except RunError as exc:
        return "other", str(exc)
    if meta.run_id != run_id:
        return "other", f"{out} holds a different run ({meta.run_id})"
    return ("complete" if meta.status == "complete" else "resumable"), ""


def _reuse_or_refuse(out: Path, run_id: str, force: bool, log: Callable[[str], None]) -> tuple[str, dict | None]:
    """The directory's state, and the summary of a finished identical run to return at once (else None).

    Refuses (ValueError) a directory that holds a different run or a run it cannot read, unless ``force``."""
    state, why = _existing_state(out, run_id)
    if state == "complete" and not force:
        remove_stale_lock(RunLayout(out))
        remove_leftover_scratch(RunLayout(out))
        log(f"cached: {out} already holds this run ({run_id}); --force recomputes")
        return state, read_run_meta(out).summary
    if state == "other" and not force:
        raise ValueError(f"{why}; choose another --out or pass --force")
    return state, None


def agree_on_reuse(
    ctx: DistContext, out: Path, run_id: str, force: bool, log: Callable[[str], None]
) -> tuple[str, dict | None]:
    """``_reuse_or_refuse`` decided once, by rank 0, and the same answer (or refusal) on every rank.

    Why: rank 0 starts writing ``meta.json`` as soon as it has decided; a slower rank reading the
    directory after that would see a run in the making and refuse it as a different one.
    """
    if not ctx.active:
        return _reuse_or_refuse(out, run_id, force, log)
    answer: tuple = ()
    if ctx.is_main:
        try:
            answer = ("ok", _reuse_or_refuse(out, run_id, force, log))
        except ValueError as exc:
            answer = ("refused", str(exc))
    answer = ctx.broadcast_object(answer)
    if answer[0] == "refused":
        raise ValueError(answer[1])
    return answer[1]
