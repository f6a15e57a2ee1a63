"""Batches as pytrees: what the scorer does to inputs, targets and outputs that need not be single tensors.

Why: a classifier's inputs are one tensor, its targets a (B,) label tensor and its outputs a (B, C)
logits tensor, but a dual encoder takes two inputs (images, tokens), a custom loss may take anything
(``None`` for an InfoNCE whose positives are the diagonal, a tuple of tensors) and a model may return
a tuple (two towers' embeddings). The scoring paths slice, move, cast, detach and concatenate them
alike: tensor leaves whose first dimension is the batch are split with the batch; every other leaf
goes along whole. Inputs given as a tuple (or list) are the model's positional arguments
(``as_args``); every tensor in it carries the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


def moved(tree: Any, device: torch.device) -> Any:
    """Tensor leaves on ``device`` (cloned out of inference mode, so autograd may save them)."""
    return tree_map(lambda t: (t.clone() if t.is_inference() else t).to(device) if isinstance(t, Tensor) else t, tree)


def cast(tree: Any, dtype: torch.dtype) -> Any:
    """Floating tensor leaves in ``dtype``."""
    return tree_map(lambda t: t.to(dtype) if isinstance(t, Tensor) and t.is_floating_point() else t, tree)


def as_args(inputs: Any) -> tuple:
    """The model's positional arguments: the tensors of a tuple or list of inputs, or the one input."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def input_batch_size(inputs: Any) -> int:
    """B of a batch of inputs: a tensor's first dimension, or the common first dimension of the
    tensors of a tuple (or list) of inputs (a dual encoder's images and tokens), checked equal."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0:
            raise ValueError("inputs must have a batch dimension; got a 0-d tensor")
        return int(inputs.shape[0])
    if not isinstance(inputs, (tuple, list)) or not inputs:
        raise TypeError(
            "inputs must be a torch.Tensor or a tuple of batched tensors (the model's arguments), got "
            f"{type(inputs).__name__}"
        )
    sizes = []
    for k, t in enumerate(inputs):
        if not isinstance(t, Tensor) or t.dim() == 0:
            raise TypeError(
                f"input {k} of the tuple must be a batched torch.Tensor, got {type(t).__name__}"
                + (" (0-d)" if isinstance(t, Tensor) else "")
            )
        sizes.append(int(t.shape[0]))
    if len(set(sizes)) != 1:
        raise ValueError(f"the inputs of a tuple must share their batch size (first dimension), got {sizes}")
    return sizes[0]


def detached(tree: Any) -> Any:
    """``tree`` with every tensor detached (the outputs a scoring path returns hold no graph)."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, tree)


def _is_batched(leaf: Any, batch: int) -> bool:
    return isinstance(leaf, Tensor) and leaf.dim() > 0 and leaf.shape[0] == batch


def rows(tree: Any, start: int, stop: int, batch: int) -> Any:
    """Rows ``start:stop`` of every batched tensor leaf."""
    if isinstance(tree, Tensor):  # the common case, without the pytree walk
        return tree[start:stop]
    return tree_map(lambda t: t[start:stop] if _is_batched(t, batch) else t, tree)


def batch_dims(tree: Any, batch: int) -> Any:
    """``vmap`` in_dims for ``tree``: 0 for batched tensor leaves, None for the rest."""
    if isinstance(tree, Tensor):
        return 0 if _is_batched(tree, batch) else None
    leaves, spec = tree_flatten(tree)
    return tree_unflatten([0 if _is_batched(t, batch) else None for t in leaves], spec)


def as_batch_of_one(tree: Any, dims: Any) -> Any:
    """Inside ``vmap``: give the leaves that ``dims`` (from ``batch_dims``) maps back their batch axis."""
    if isinstance(tree, Tensor):
        return tree.unsqueeze(0) if dims == 0 else tree
    leaves, spec = tree_flatten(tree)
    flags = tree_flatten(dims, is_leaf=lambda d: d is None)[0]
    return tree_unflatten([t.unsqueeze(0) if d == 0 else t for t, d in zip(leaves, flags, strict=True)], spec)


def cat_rows(trees: list[Any]) -> Any:
    """Concatenate per-slice outputs along the batch (the first slice's structure)."""
    if not trees:
        return None
    if isinstance(trees[0], Tensor):
        return torch.cat(trees) if len(trees) > 1 else trees[0]
    if len(trees) == 1:
        return trees[0]
    flat = [tree_flatten(t)[0] for t in trees]
    spec = tree_flatten(trees[0])[1]
    joined = [
        torch.cat(parts) if isinstance(parts[0], Tensor) and parts[0].dim() > 0 else parts[0]
        for parts in zip(*flat, strict=True)
    ]
    return tree_unflatten(joined, spec)
