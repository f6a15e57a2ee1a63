"""Run ids and the cache rule: the same command on the same inputs returns the existing run.

Why: a run is identified by what determines its numbers — the command's options (not where it writes
or how it reports) and the fingerprints of data, init and reference — so repeating a command is free
and a directory can never silently mix two different runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mimic_explorer.store.reader import RunError, read_meta


def make_run_id(command: str, identity: dict, fingerprints: dict) -> str:
    payload = json.dumps({"command": command, "options": identity, "fingerprints": fingerprints}, sort_keys=True, default=str)
    return f"{command}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def existing_state(out: Path, run_id: str) -> str:
    """'absent' | 'complete' (same run, reusable) | 'resumable' (same run, unfinished) | 'other'."""
    try:
        meta = read_meta(out)
    except RunError:
        return "absent"
    if meta.get("run_id") != run_id:
        return "other"
    return "complete" if meta.get("status") == "complete" else "resumable"
