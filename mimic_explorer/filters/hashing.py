"""The hashes a filter spec carries: of its own content, of a keep mask, of a rule.

Why a module: the spec (``filters/spec.py``) computes them and the account of an edited spec
(``filters/spec_edits.py``) recomputes them for each edit it tries; both import them from here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

#: Fields outside a spec's hash: the hash itself, when the spec was written, and the keep-list file's
#: attestation (a spec downloaded from the app without a file must hash the same as one saved with it).
UNHASHED = ("spec_hash", "created", "keep_list")


def canonical(data: Any) -> str:
    """The JSON text a spec's hash is taken over (sorted keys, no spaces): unchanged since the first
    spec, so old specs verify."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(spec: dict[str, Any]) -> str:
    """The ``spec_hash`` ``spec`` should carry: sha256 of its canonical content without ``UNHASHED``,
    16 hex digits."""
    body = {key: value for key, value in spec.items() if key not in UNHASHED}
    return hashlib.sha256(canonical(body).encode()).hexdigest()[:16]


def mask_sha256(keep: np.ndarray) -> str:
    """sha256 of a keep mask packed to bits (what ``keep_mask_sha256`` records)."""
    return hashlib.sha256(np.packbits(np.asarray(keep, dtype=bool)).tobytes()).hexdigest()


def rule_digest(rule: Any) -> str:
    """12 hex digits naming a rule (not its result): how the app names a filter saved with a run."""
    return hashlib.sha256(canonical(rule.to_dict()).encode()).hexdigest()[:12]
