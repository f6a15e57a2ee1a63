"""Linear probing on cached backbone features.

Why: with the backbone frozen, every epoch of a linear probe sees the same features; computing them
once (keyed by backbone weights, transform and data) turns an E-epoch run into one backbone pass plus
E cheap passes over a (N, D) matrix, and lets the reference probe, the plain probe and the Grad-Mimic
probe of one experiment share a single pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from mimic_explorer.cache import features_cache_dir
from mimic_explorer.data.errors import BadSample, ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.fingerprint import state_fingerprint
from mimic_explorer.pipeline.pool_pass import pool_pass


@dataclass
class Features:
    positions: np.ndarray  # source positions of the good samples, in pool order
    values: torch.Tensor  # (N, D) float32 head inputs
    bad: list[BadSample]
    cached: bool


def backbone_fingerprint(model: nn.Module, head_name: str) -> str:
    prefix = head_name + "."
    return state_fingerprint({k: v for k, v in model.state_dict().items() if not k.startswith(prefix)})


def feature_key(model: nn.Module, head_name: str, transform, source: Source, indices: np.ndarray | None) -> str:
    describe = getattr(transform, "describe", None)
    parts = {
        "backbone": backbone_fingerprint(model, head_name),
        "transform": describe() if describe else repr(transform),
        "data": source.fingerprint(),
        "indices": hashlib.sha256(np.asarray(indices if indices is not None else [], dtype=np.int64).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: Source,
    labels: np.ndarray,
    transform,
    *,
    head_name: str,
    device: str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    indices: np.ndarray | None = None,
    on_thumbnails: Callable[[np.ndarray, list], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> Features:
    """Head inputs for every good sample (eval mode), from the cache when the same backbone,
    transform and data were seen before. ``head_name`` is the head as found when the run built its
    models. ``on_thumbnails(positions, thumbs)`` receives the thumbnails made from the same decoded
    images (only on a cache miss)."""
    head = model.get_submodule(head_name)
    key = feature_key(model, head_name, transform, source, indices)
    path = features_cache_dir() / f"{key}.pt"
    if use_cache and path.exists():
        try:
            saved = torch.load(path, weights_only=True, mmap=True)  # paged in as read, not copied into memory
            bad = [BadSample(*row) for row in saved["bad"]]
            return Features(saved["positions"].numpy(), saved["values"], bad, True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    errors = ErrorLog()
    positions: list[torch.Tensor] = []
    total = len(source) if indices is None else len(indices)
    done = 0
    try:
        for batch in pool_pass(source, labels, transform, batch_size, indices=indices,
                               thumbnails=on_thumbnails is not None, workers=workers, errors=errors):
            model(batch.inputs.to(device))
            positions.append(batch.index)
            if on_thumbnails is not None:
                on_thumbnails(batch.index.numpy(), batch.thumbs)
            done += len(batch.index) + len(batch.bad)
            if progress is not None:
                progress(done, total)
    finally:
        hook.remove()
        model.train(was_training)
    values = torch.cat(captured) if captured else torch.zeros(0, head.in_features)
    pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)
    bad = list(errors)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"positions": pos, "values": values, "bad": [(b.sample_id, b.path, b.reason) for b in bad]}, tmp)
        os.replace(tmp, path)
    return Features(pos.numpy(), values, bad, False)
