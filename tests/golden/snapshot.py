"""What a golden test compares of a run directory: its samples, its score rows and its meta.json, with
what legitimately differs between two identical runs taken out.

Only the run-directory contract (docs/ARCHITECTURE.md, "The run-directory contract") is read here —
``samples.parquet``, ``scores/*.parquet`` (or an older run's ``scores.parquet``) and ``meta.json`` —
never the package's own reader, so the snapshot does not move when the code that writes the run does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: meta.json keys that differ between two runs of one command: wall-clock times and timings, the
#: interpreter's argv, the package versions and device of the machine, and the run id (a hash of
#: the options, whose paths hold the temporary folder)
VARYING_META_KEYS = ("timings", "created", "finished", "command", "versions", "device", "run_id", "pid")
#: config keys that name where the run was written (the temporary folder itself)
VARYING_CONFIG_KEYS = ("out",)
#: meta.json fingerprints that hash weights a run trained (``--init`` of a plain run's checkpoint, the
#: reference, the scored model): a float that moves in its last bit changes the hash, though every score
#: agrees within the tolerance (here, one thread against two moved the demo reference's hash). Each is
#: replaced by ``<weights-N>``, N counting the distinct hashes of the run in key order, so which weights
#: are the same ones (the model's init and the reference's: the feature-basis check) is still compared.
#: The data, labels and subset fingerprints hash ids and ints: compared as they are.
WEIGHT_FINGERPRINTS = (
    ("basis", "model_init_fingerprint"),
    ("basis", "reference_init_fingerprint"),
    ("fingerprints", "init"),
    ("fingerprints", "model"),
    ("fingerprints", "reference"),
    ("fingerprints", "reference_init"),
)
#: the order score rows are compared in: epoch first, then the sample's pool position
SCORE_ORDER = ("epoch", "position", "sample_id")


@dataclass
class RunSnapshot:
    """A run's comparable content: ``samples`` (sorted by sample_id), ``scores`` (every score row,
    sorted by epoch then position) and ``meta`` (meta.json without its varying keys)."""

    samples: pd.DataFrame
    scores: pd.DataFrame
    meta: dict


def take_snapshot(run_dir: Path, placeholders: dict[str, str]) -> RunSnapshot:
    """Read ``run_dir`` and replace every occurrence of each ``placeholders`` key (a folder's path)
    by its value (e.g. ``<tmp>``) in every string.

    Parameters
    ----------
    run_dir
        A finished run directory.
    placeholders
        Path text -> the placeholder that stands for it; longer paths are replaced first, so a
        folder inside another keeps its own placeholder.

    Returns
    -------
    RunSnapshot
    """
    run_dir = Path(run_dir)
    order = sorted(placeholders, key=len, reverse=True)

    def scrub(text: str) -> str:
        for path in order:
            text = text.replace(path, placeholders[path])
        return text

    samples = _scrub_frame(pd.read_parquet(run_dir / "samples.parquet"), scrub)
    samples = samples.sort_values("sample_id", kind="stable").reset_index(drop=True)
    scores = _scrub_frame(_score_rows(run_dir), scrub)
    keys = [c for c in SCORE_ORDER if c in scores.columns]
    if keys and len(scores):
        scores = scores.sort_values(keys, kind="stable").reset_index(drop=True)
    meta = json.loads((run_dir / "meta.json").read_text())
    return RunSnapshot(samples, scores, _scrub_value(_stable_meta(meta), scrub))


def _score_rows(run_dir: Path) -> pd.DataFrame:
    """Every score row of the run: the parts under ``scores/`` concatenated (or ``scores.parquet``)."""
    parts = sorted((run_dir / "scores").glob("*.parquet")) if (run_dir / "scores").is_dir() else []
    if not parts and (run_dir / "scores.parquet").exists():
        parts = [run_dir / "scores.parquet"]
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _stable_meta(meta: dict) -> dict:
    meta = {k: v for k, v in meta.items() if k not in VARYING_META_KEYS}
    if isinstance(meta.get("config"), dict):
        meta["config"] = {k: v for k, v in meta["config"].items() if k not in VARYING_CONFIG_KEYS}
    aliases: dict[str, str] = {}
    for section, key in WEIGHT_FINGERPRINTS:
        value = (meta.get(section) or {}).get(key) if isinstance(meta.get(section), dict) else None
        if isinstance(value, str):
            alias = aliases.setdefault(value, f"<weights-{len(aliases) + 1}>")
            meta[section] = {**meta[section], key: alias}
    return meta


def _scrub_value(value, scrub):
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrub) for k, v in value.items() if k != "pid"}
    if isinstance(value, list):
        return [_scrub_value(v, scrub) for v in value]
    return value


def _scrub_frame(frame: pd.DataFrame, scrub) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if not (pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column])):
            frame[column] = frame[column].map(lambda v: scrub(v) if isinstance(v, str) else v)
    return frame
