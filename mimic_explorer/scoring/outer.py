"""Per-sample squared norms of sums of outer products, without materialising a B×P matrix.

Why: a Linear or Conv2d layer's per-sample weight gradient is G_i = Σ_t δ_{i,t} h_{i,t}ᵀ (t runs over
tokens, spatial positions or repeated calls). ‖G_i‖² has two exact forms: the Gram ("ghost") form
Σ_{t,t'} (h_t·h_t')(δ_t·δ_t'), which costs B·T²·(C+D), and the direct form that builds G_i, which costs
B·T·C·D and B·C·D memory. We pick the cheaper per layer and walk the batch in slices so neither form
needs more than a bounded amount of scratch memory.

Shapes: ``h`` (B, G, T, D) and ``d`` (B, G, T, C); G groups (1 for Linear, ``groups`` for Conv2d) are
independent blocks of the weight, so their squared norms add.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Scratch elements a single slice of the batch may use (about 256 MB in float32).
SCRATCH_ELEMENTS = 1 << 26


def _use_gram(t: int, c: int, d: int) -> bool:
    return t * (c + d) <= c * d


def weight_sqnorm(h: Tensor, d: Tensor) -> Tensor:
    """‖Σ_t δ_t h_tᵀ‖² per sample, summed over groups. Returns shape (B,)."""
    b, g, t, dim_h = h.shape
    dim_d = d.shape[-1]
    gram = _use_gram(t, dim_d, dim_h)
    per_sample = g * (t * t if gram else dim_d * dim_h)
    step = max(1, SCRATCH_ELEMENTS // max(per_sample, 1))
    out = []
    for start in range(0, b, step):
        hs, ds = h[start : start + step], d[start : start + step]
        if gram:
            gh = hs @ hs.transpose(-1, -2)
            gd = ds @ ds.transpose(-1, -2)
            out.append((gh * gd).sum((1, 2, 3)))
        else:
            grads = ds.transpose(-1, -2) @ hs  # (b, G, C, D)
            out.append(grads.pow(2).sum((1, 2, 3)))
    return torch.cat(out) if out else h.new_zeros(0)


def bias_sqnorm(d: Tensor) -> Tensor:
    """‖Σ_t δ_t‖² per sample (the bias gradient), summed over groups. Returns shape (B,)."""
    return d.sum(2).pow(2).sum((1, 2))


def weight_sum(h: Tensor, d: Tensor) -> Tensor:
    """Σ_i G_i over the batch, shape (G, C, D): the ordinary batch gradient, used as a cross-check."""
    return torch.einsum("bgtc,bgtd->gcd", d, h)
