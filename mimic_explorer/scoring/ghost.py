"""Ghost norms: ‖g_i‖² and ⟨g_i, v⟩ for Linear, Conv2d and norm-layer parameters from one forward and
one (input-only) backward pass.

Why: cos needs each sample's gradient norm. For a Linear or Conv2d layer the per-sample weight
gradient is a sum of outer products of the layer's input (unfolded into patches for a convolution)
and its output gradient δ, so its norm — and its inner product with the task vector — follow from
those two tensors (``scoring.outer``), never B×P memory. Norm layers (eval-mode BatchNorm, LayerNorm,
GroupNorm) are per-sample affine maps of their normalised input x̂: their weight's per-sample gradient
is Σ δ ⊙ x̂ and their bias's Σ δ, small enough to build directly. The backward pass runs to the input
only, so no weight gradient is ever computed.

Only uses we can see completely qualify. A parameter is covered when its module is one of those
types with the stock forward, the module was called, and — watched by a TorchFunctionMode during the
forward — the parameter fed exactly one op of the expected kind per module call and nothing else
that carries gradient (a weight also used functionally elsewhere, or shared, is not covered). Every
other parameter is left to the caller's fallback (forward-mode dot and chunked ``vmap(grad)`` norm).

Per-sample losses only: the backward of Σ_i ℓ_i gives each layer sample i's own δ_i only when ℓ_i
depends on sample i alone (a loss that couples the batch takes ``scoring.jacobian_path``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mimic_explorer.scoring.losses import CrossEntropyLoss, PerSampleLoss, loss_values
from mimic_explorer.scoring.outer import bias_sqnorm, weight_sqnorm_dot
from mimic_explorer.scoring.parts import Parts
from mimic_explorer.scoring.trees import as_args, detached, input_batch_size

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _expected_op(module: nn.Module):
    """The functional op a stock module's forward applies to its weight and bias, or None."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return F.linear
    if (
        isinstance(module, nn.Conv2d)
        and type(module).forward is nn.Conv2d.forward
        and type(module)._conv_forward is nn.Conv2d._conv_forward
    ):
        return torch.conv2d
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        # eval-mode BatchNorm with running statistics is a per-channel affine map of each sample
        stock = type(module).forward is nn.modules.batchnorm._BatchNorm.forward
        if stock and module.running_mean is not None and module.running_var is not None:
            return F.batch_norm
        return None
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return F.layer_norm
    if isinstance(module, nn.GroupNorm) and type(module).forward is nn.GroupNorm.forward:
        return F.group_norm
    return None


def ghost_layers(model: nn.Module, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Module name → {'weight'|'bias': parameter name} for the parameters ghost norms may cover."""
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    layers: dict[str, dict[str, str]] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if attr not in ("weight", "bias"):
            continue
        module = model.get_submodule(module_name) if module_name else model
        param = getattr(module, attr, None)
        if _expected_op(module) is not None and isinstance(param, nn.Parameter) and owners[id(param)] == 1:
            layers.setdefault(module_name, {})[attr] = name
    return layers


class _UseWatch(TorchFunctionMode):
    """Counts, per watched tensor, its uses by the expected op and flags any other use that carries
    gradient (inside ``__torch_function__`` the mode is off, so nested calls are not double counted)."""

    def __init__(self, watched: dict[int, tuple[str, object]]):
        super().__init__()
        self.watched = watched  # id(tensor) → (name, expected op)
        self.uses: Counter[str] = Counter()
        self.foreign: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hits = [self.watched[id(t)] for t in tree_leaves((args, kwargs)) if id(t) in self.watched]
        out = func(*args, **kwargs)
        for name, expected in hits:
            if func is expected:
                self.uses[name] += 1
            elif any(isinstance(o, Tensor) and o.requires_grad for o in tree_leaves(out)):
                self.foreign.add(name)
        return out


def _same_padding(conv: nn.Conv2d) -> list[int]:
    pads: list[int] = []
    for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def _conv_patches(conv: nn.Conv2d, h: Tensor) -> Tensor:
    """The Conv2d input as (B, G, L, Cin/G·kh·kw) patches, matching the weight's layout."""
    padding: tuple[int, ...] | int = 0
    if conv.padding_mode != "zeros":
        h = F.pad(h, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    elif conv.padding == "same":
        h = F.pad(h, _same_padding(conv))
    elif not isinstance(conv.padding, str):
        padding = conv.padding
    cols = F.unfold(h, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    b, dim, length = cols.shape
    return cols.reshape(b, conv.groups, dim // conv.groups, length).transpose(2, 3)


def _position_form(module: nn.Module, h: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """(h, δ) as (B, G, T, D) and (B, G, T, C)."""
    if isinstance(module, nn.Conv2d):
        b, c = d.shape[0], d.shape[1]
        return _conv_patches(module, h), d.reshape(b, module.groups, c // module.groups, -1).transpose(2, 3)
    return h.reshape(h.shape[0], 1, -1, h.shape[-1]), d.reshape(d.shape[0], 1, -1, d.shape[-1])


def _normalized_input(module: nn.Module, h: Tensor) -> Tensor:
    """x̂, the norm layer's input before its affine weight and bias (eval mode for BatchNorm)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (h.dim() - 2)
        mean = module.running_mean.reshape(shape).to(h.dtype)
        var = module.running_var.reshape(shape).to(h.dtype)
        return (h - mean) / torch.sqrt(var + module.eps)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(h, module.normalized_shape, None, None, module.eps)
    return F.group_norm(h, module.num_groups, None, None, module.eps)


def _norm_per_sample(module: nn.Module, xhat: Tensor, d: Tensor) -> dict[str, Tensor]:
    """Per-sample gradients of a norm layer's weight (Σ δ ⊙ x̂) and bias (Σ δ), shaped (B, *param)."""
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(1, d.dim() - len(module.normalized_shape)))
    else:  # channels on dim 1
        dims = tuple(range(2, d.dim()))
    return {"weight": (d * xhat).sum(dims) if dims else d * xhat, "bias": d.sum(dims) if dims else d}


def ghost_parts(
    model: nn.Module,
    names: Sequence[str],
    v: dict[str, Tensor],
    inputs: Any,
    targets: Any,
    need_dot: bool,
    state: dict[str, Tensor] | None = None,
    offset: int = 0,
    loss: PerSampleLoss | None = None,
) -> tuple[Parts, set[str]]:
    """Σ over covered parameters of ‖g_i‖² (and ⟨g_i, v⟩ if ``need_dot``), the losses ℓ_i and outputs,
    and the set of covered names. ``loss``: a per-sample loss (default cross-entropy)."""
    state = dict(state or {})
    batch = input_batch_size(inputs)
    layers = ghost_layers(model, names)
    params = dict(model.named_parameters())
    modules = {m: (model.get_submodule(m) if m else model) for m in layers}
    leaves = {
        n: state.get(n, params[n]).detach().requires_grad_(True) for attrs in layers.values() for n in attrs.values()
    }
    watch = _UseWatch(
        {id(leaves[n]): (n, _expected_op(modules[m])) for m, attrs in layers.items() for n in attrs.values()}
    )
    records: dict[str, list[list]] = {m: [] for m in layers}
    valid: dict[str, dict[str, str]] = {}  # decided after the forward pass, before the backward
    acc: dict[str, Tensor] = {}
    covered: set[str] = set()

    def consume(module_name: str, calls: list[list]) -> None:
        """Add one layer's per-sample ‖g‖² (and ⟨g, v⟩) to the running sums."""
        module, attrs = modules[module_name], valid[module_name]
        dtype = acc["sq"].dtype
        if isinstance(module, _NORMS):
            per_sample: dict[str, Tensor] = {}
            for h, d in calls:
                xhat = _normalized_input(module, h.to(dtype))
                for attr, g in _norm_per_sample(module, xhat, d.to(dtype)).items():
                    per_sample[attr] = per_sample[attr] + g if attr in per_sample else g
            for attr, name in attrs.items():
                g = per_sample[attr].flatten(1)
                acc["sq"] += g.pow(2).sum(1)
                if need_dot:
                    acc["dot"] += g @ v[name].reshape(-1).to(dtype)
                covered.add(name)
            return
        forms = [_position_form(module, h, d) for h, d in calls]
        if len(forms) == 1:
            h_all, d_all = forms[0][0].to(dtype), forms[0][1].to(dtype)
        else:  # repeated calls are more positions of the same layer
            h_all = torch.cat([f[0] for f in forms], dim=2).to(dtype)
            d_all = torch.cat([f[1] for f in forms], dim=2).to(dtype)
        if "weight" in attrs:
            name = attrs["weight"]
            v_w = v[name].reshape(h_all.shape[1], -1, h_all.shape[-1]).to(dtype) if need_dot else None
            w_sq, w_dot = weight_sqnorm_dot(h_all, d_all, v_w)
            acc["sq"] += w_sq
            if need_dot:
                acc["dot"] += w_dot
            covered.add(name)
        if "bias" in attrs:
            name = attrs["bias"]
            acc["sq"] += bias_sqnorm(d_all)
            if need_dot:
                acc["dot"] += d_all.sum(2).flatten(1) @ v[name].reshape(-1).to(dtype)
            covered.add(name)

    def on_grad(module_name: str, entry: list, grad: Tensor) -> None:
        entry[1] = grad.detach()
        # a layer called once is finished as soon as its δ arrives: δ is dropped at once and h is
        # only referenced (autograd saved it anyway), so scoring adds little to a backward's memory
        if module_name in valid and len(records[module_name]) == 1:
            consume(module_name, records[module_name])
            records[module_name] = []

    def make_hook(module_name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad and args and isinstance(args[0], Tensor)):
                records[module_name].append([None, None])  # a call we cannot use: the layer is not covered
                return
            entry = [args[0].detach(), None]
            records[module_name].append(entry)
            output.register_hook(lambda g: on_grad(module_name, entry, g))

        return hook

    handles = [modules[m].register_forward_hook(make_hook(m)) for m in layers]
    # floating inputs become leaves, so the backward below stops at them (integer tokens need none)
    args = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in as_args(inputs))
    try:
        with torch.enable_grad():
            with watch:
                logits = functional_call(model, {**state, **leaves}, args)
            losses = loss_values(loss or CrossEntropyLoss(), logits, targets, batch, offset)
            for module_name, attrs in layers.items():
                calls = records[module_name]
                usable = bool(calls) and all(h is not None and h.shape[0] == batch for h, _ in calls)
                keep = {
                    a: n for a, n in attrs.items() if usable and n not in watch.foreign and watch.uses[n] == len(calls)
                }
                if keep:
                    valid[module_name] = keep
                else:
                    records[module_name] = []  # not covered: keep nothing alive
            acc["sq"] = torch.zeros(batch, dtype=losses.dtype, device=losses.device)
            acc["dot"] = torch.zeros_like(acc["sq"])
            # backward to the input only: every layer's δ, no weight gradients
            # several inputs (a dual encoder's images and tokens): a layer may sit on a tower that no
            # floating input reaches, so the backward goes to the covered weights as well
            floats = [t for t in args if t.requires_grad]
            wrt = floats if len(args) == 1 and floats else floats + list(leaves.values())
            if wrt and losses.requires_grad:
                torch.autograd.grad(losses.sum(), wrt, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    for module_name in valid:  # layers called more than once are finished here
        calls = records[module_name]
        if calls and all(d is not None for _, d in calls):
            consume(module_name, calls)
    sq, dot = acc["sq"], acc["dot"]
    return Parts(dot if need_dot else None, sq, losses.detach(), detached(logits)), covered
