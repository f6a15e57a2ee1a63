"""Small pools cut from the real shards in ../shared/data and keep-lists written for them, for the
``--subset`` tests: a keep-list of a few ids (some not in the pool), in any format ``export`` writes."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR = SHARED / "cifar10"
needs_cifar = pytest.mark.skipif(not (CIFAR / "train-00.tar").exists(), reason="../shared/data/cifar10 not present")


def shard_excerpt(source: Path, out: Path, count: int) -> Path:
    """A shard holding the first ``count`` samples (every member) of ``source``; CIFAR's classes.txt
    is copied beside it so the class names stay the real ones."""
    out.parent.mkdir(parents=True, exist_ok=True)
    kept: set[str] = set()
    with tarfile.open(source) as src, tarfile.open(out, "w") as dst:
        for member in src:
            key = member.name.split(".", 1)[0]
            if key not in kept:
                if len(kept) == count:
                    break
                kept.add(key)
            dst.addfile(member, src.extractfile(member))
    classes = source.parent / "classes.txt"
    if classes.exists():
        shutil.copy(classes, out.parent / "classes.txt")
    return out


def write_ids(path: Path, ids) -> Path:
    """A keep-list of ``ids`` as ``export`` writes it (the format from the extension; .npy: id strings)."""
    ids = [str(i) for i in ids]
    if path.suffix == ".npy":
        np.save(path, np.asarray(ids))
        return path
    frame = pd.DataFrame({"sample_id": ids, "source": "", "label": -1, "score": 0.0, "keep": True})
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records", indent=1)
    else:
        frame.to_parquet(path, index=False)
    return path
