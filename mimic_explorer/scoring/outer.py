"""Per-sample squared norms of sums of outer products, without materialising a B×P matrix.

Why: a Linear or Conv2d layer's per-sample weight gradient is G_i = Σ_t δ_{i,t} h_{i,t}ᵀ (t runs over
tokens, spatial positions or repeated calls). ‖G_i‖² has two exact forms: the Gram ("ghost") form
Σ_{t,t'} (h_t·h_t')(δ_t·δ_t'), which costs B·T²·(C+D), and the direct form that builds G_i, which costs
B·T·C·D and B·C·D memory (and gives ⟨G_i, V⟩ for free). We pick the cheaper per layer and walk the batch in
slices so neither form needs more than a bounded amount of scratch memory.

Shapes: ``h`` (B, G, T, D) and ``d`` (B, G, T, C); G groups (1 for Linear, ``groups`` for Conv2d) are
independent blocks of the weight, so their squared norms add.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Scratch elements a single slice of the batch may use (about 64 MB in float32).
SCRATCH_ELEMENTS = 1 << 24


def _use_gram(t: int, c: int, d: int) -> bool:
    """Gram costs T²(C+D) per sample, direct T·C·D and writes C·D per sample (memory-bound); the dot
    adds one well-shaped matmul to the Gram form, so it does not change the choice."""
    return t * (c + d) <= c * d


def weight_sqnorm_dot(h: Tensor, d: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """‖Σ_t δ_t h_tᵀ‖² per sample, and ⟨Σ_t δ_t h_tᵀ, V⟩ when ``v`` (G, C, D) is given; (B,) each.

    The inner product is δᵀ(V h) summed over positions (B·T·C·D), or read off the per-sample
    gradients when the direct form builds them anyway.
    """
    b, g, t, dim_h = h.shape
    dim_d = d.shape[-1]
    gram = _use_gram(t, dim_d, dim_h)
    per_sample = g * (t * t if gram else dim_d * dim_h) + (g * t * dim_d if v is not None else 0)
    step = max(1, SCRATCH_ELEMENTS // max(per_sample, 1))
    sqs, dots = [], []
    for start in range(0, b, step):
        hs, ds = h[start : start + step], d[start : start + step]
        if gram:
            gh = hs @ hs.transpose(-1, -2)
            gd = ds @ ds.transpose(-1, -2)
            sqs.append((gh * gd).sum((1, 2, 3)))
            if v is not None:
                dots.append(((hs @ v.transpose(-1, -2)) * ds).sum((1, 2, 3)))
        else:
            grads = ds.transpose(-1, -2) @ hs  # (b, G, C, D)
            sqs.append(grads.pow(2).sum((1, 2, 3)))
            if v is not None:
                dots.append((grads * v).sum((1, 2, 3)))
    empty = h.new_zeros(0)
    sq = torch.cat(sqs) if sqs else empty
    return sq, ((torch.cat(dots) if dots else empty) if v is not None else None)


def weight_sqnorm(h: Tensor, d: Tensor) -> Tensor:
    """‖Σ_t δ_t h_tᵀ‖² per sample, summed over groups. Returns shape (B,)."""
    return weight_sqnorm_dot(h, d)[0]


def bias_sqnorm(d: Tensor) -> Tensor:
    """‖Σ_t δ_t‖² per sample (the bias gradient), summed over groups. Returns shape (B,)."""
    return d.sum(2).pow(2).sum((1, 2))
