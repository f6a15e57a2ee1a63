"""Ghost norms: ‖g_i‖² for Linear, Conv2d and norm-layer parameters from one ordinary backward pass.

Why: cos needs each sample's gradient norm. For a Linear or Conv2d layer the per-sample weight
gradient is a sum of outer products of the layer's input (unfolded into patches for a convolution)
and its output gradient, so its norm follows from those two tensors (``scoring.outer``) — one forward
and one backward for the whole batch, never B×P memory. Norm layers (eval-mode BatchNorm, LayerNorm,
GroupNorm) are per-sample affine maps of their normalised input x̂, so their weight's per-sample
gradient is Σ δ ⊙ x̂ and their bias's Σ δ — small enough to build directly.

Only layers we can see completely qualify: one of those modules with the stock forward, whose
parameter no other module shares, and that was actually called. As a guard against uses we cannot
see (a weight also used functionally elsewhere), the per-sample pieces summed over the batch must
equal the ordinary batch gradient of that parameter; a parameter failing the check, and every other
parameter, is left to the caller's fallback (chunked ``vmap(grad)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mimic_explorer.scoring.checks import per_sample_losses
from mimic_explorer.scoring.outer import bias_sqnorm, weight_sqnorm, weight_sum


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _stock(module: nn.Module) -> bool:
    """A layer whose per-sample gradients we can derive from its input and output gradient."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    if isinstance(module, nn.Conv2d):
        return type(module).forward is nn.Conv2d.forward and type(module)._conv_forward is nn.Conv2d._conv_forward
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        # eval-mode BatchNorm with running statistics is a per-channel affine map of each sample
        return (
            type(module).forward is nn.modules.batchnorm._BatchNorm.forward
            and module.running_mean is not None
            and module.running_var is not None
        )
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return type(module).forward in (nn.LayerNorm.forward, nn.GroupNorm.forward)
    return False


def ghost_layers(model: nn.Module, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Module name → {'weight'|'bias': parameter name} for the parameters ghost norms can cover."""
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    layers: dict[str, dict[str, str]] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        if attr not in ("weight", "bias"):
            continue
        module = model.get_submodule(module_name) if module_name else model
        param = getattr(module, attr, None)
        if _stock(module) and isinstance(param, nn.Parameter) and owners[id(param)] == 1:
            layers.setdefault(module_name, {})[attr] = name
    return layers


def _same_padding(conv: nn.Conv2d) -> list[int]:
    pads: list[int] = []
    for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def conv_patches(conv: nn.Conv2d, h: Tensor) -> Tensor:
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
        hp = conv_patches(module, h)
        b, c = d.shape[0], d.shape[1]
        dp = d.reshape(b, module.groups, c // module.groups, -1).transpose(2, 3)
        return hp, dp
    return h.reshape(h.shape[0], 1, -1, h.shape[-1]), d.reshape(d.shape[0], 1, -1, d.shape[-1])


def normalized_input(module: nn.Module, h: Tensor) -> Tensor:
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
        k = len(module.normalized_shape)
        dims = tuple(range(1, d.dim() - k))
    else:  # channels on dim 1
        dims = tuple(range(2, d.dim()))
    weight = (d * xhat).sum(dims) if dims else d * xhat
    bias = d.sum(dims) if dims else d
    return {"weight": weight, "bias": bias}


def _agrees(estimate: Tensor, exact: Tensor | None) -> bool:
    if exact is None:
        return bool((estimate == 0).all())
    tol = 1e-9 if exact.dtype == torch.float64 else 1e-3
    scale = exact.abs().max().clamp_min(torch.finfo(exact.dtype).tiny)
    return bool(((estimate - exact).abs() <= tol * scale).all())


def ghost_sqnorms(
    model: nn.Module,
    names: Sequence[str],
    inputs: Tensor,
    targets: Tensor,
    state: dict[str, Tensor] | None = None,
    offset: int = 0,
) -> tuple[Tensor, set[str], Tensor]:
    """Σ over covered parameters of ‖g_i‖², the set of covered names, and the losses ℓ_i."""
    state = dict(state or {})
    batch = inputs.shape[0]
    layers = ghost_layers(model, names)
    params = dict(model.named_parameters())
    covered_names = [n for attrs in layers.values() for n in attrs.values()]
    leaves = {n: state.get(n, params[n]).detach().requires_grad_(True) for n in covered_names}
    records: dict[str, list[list]] = {m: [] for m in layers}

    def make_hook(module_name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad and args and isinstance(args[0], Tensor)):
                return
            h = args[0].detach()
            if isinstance(module, _NORMS):
                h = normalized_input(module, h)
            entry = [h, None]
            records[module_name].append(entry)
            output.register_hook(lambda g: entry.__setitem__(1, g.detach()))

        return hook

    handles = [model.get_submodule(m).register_forward_hook(make_hook(m)) for m in layers if m]
    if "" in layers:
        handles.append(model.register_forward_hook(make_hook("")))
    try:
        with torch.enable_grad():
            logits = functional_call(model, {**state, **leaves}, (inputs,))
            losses = per_sample_losses(logits, targets, offset)
            totals = dict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)))
    finally:
        for handle in handles:
            handle.remove()
    sq = losses.new_zeros(batch).detach()
    covered: set[str] = set()
    for module_name, attrs in layers.items():
        calls = records[module_name]
        if not calls or any(d is None or h.shape[0] != batch for h, d in calls):
            continue
        module = model.get_submodule(module_name) if module_name else model
        if isinstance(module, _NORMS):
            per_sample = {}
            for h, d in calls:
                for attr, g in _norm_per_sample(module, h.to(sq.dtype), d.to(sq.dtype)).items():
                    per_sample[attr] = per_sample[attr] + g if attr in per_sample else g
            for attr, name in attrs.items():
                if _agrees(per_sample[attr].sum(0), totals[name]):
                    sq = sq + per_sample[attr].flatten(1).pow(2).sum(1)
                    covered.add(name)
            continue
        forms = [_position_form(module, h, d) for h, d in calls]
        h_all = torch.cat([f[0] for f in forms], dim=2).to(sq.dtype)
        d_all = torch.cat([f[1] for f in forms], dim=2).to(sq.dtype)
        if "weight" in attrs:
            name = attrs["weight"]
            if _agrees(weight_sum(h_all, d_all).reshape(params[name].shape), totals[name]):
                sq = sq + weight_sqnorm(h_all, d_all)
                covered.add(name)
        if "bias" in attrs:
            name = attrs["bias"]
            if _agrees(d_all.sum((0, 2)).reshape(-1), totals[name]):
                sq = sq + bias_sqnorm(d_all)
                covered.add(name)
    return sq, covered, losses.detach()
