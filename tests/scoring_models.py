"""Tiny float64 models and an independent brute-force oracle for the scoring tests.

The oracle shares no code with ``mimic_explorer.scoring``: a deep copy of the model in eval mode, one
sample at a time, ``loss.backward()`` into ``.grad``, explicit dot products.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mimic_explorer.models.small import MLP, SmallCNN


def perturbed(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A reference 'fine-tuned' from the same init: every parameter moved a little."""
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return ref


def _randomise_bn(model: nn.Module, seed: int = 2) -> None:
    """Non-trivial running statistics, so eval mode is distinguishable from train mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen, dtype=m.running_var.dtype))


def build(name: str, batch: int = 4):
    """(model, reference, inputs, targets, subset of parameter names) in float64."""
    torch.manual_seed(0)
    if name == "mlp":
        model = MLP(12, 5, hidden=(16, 8))
        x = torch.randn(batch, 12)
        subset = ["backbone.1.weight", "head.bias"]
    elif name == "cnn_bn":
        model = SmallCNN(5, width=4)
        x = torch.randn(batch, 3, 8, 8)
        subset = ["backbone.1.0.weight", "backbone.1.1.weight", "head.weight"]
    elif name == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
        x = torch.randn(batch, 3, 8, 8)  # 8×8 still reaches layer4 (at 1×1); keeps float64 fast
        subset = ["layer4.1.conv2.weight", "layer4.1.bn2.bias", "fc.weight"]
    elif name == "vit":
        model = torchvision.models.VisionTransformer(
            image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
        )
        x = torch.randn(batch, 3, 16, 16)
        subset = [
            "class_token",
            "encoder.layers.encoder_layer_1.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_1.mlp.0.weight",
            "heads.head.bias",
        ]
    else:
        raise KeyError(name)
    model = model.double()
    _randomise_bn(model)
    if name == "vit":  # torchvision zero-initialises the head
        with torch.no_grad():
            model.heads.head.weight.normal_(0, 0.3)
    reference = perturbed(model)
    num_classes = 10 if name == "resnet18" else 5
    targets = torch.randint(0, num_classes, (batch,))
    return model, reference, x.double(), targets, subset


def oracle(model: nn.Module, reference: nn.Module, x, y, names: list[str], method: str) -> torch.Tensor:
    """Brute force: per-sample backward on a deep copy in eval mode."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    params = dict(m.named_parameters())
    ref = dict(reference.named_parameters())
    v = torch.cat([(ref[n].detach() - params[n].detach()).reshape(-1) for n in names])
    scores = []
    for i in range(len(y)):
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).backward()
        g = torch.cat(
            [(params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])).reshape(-1) for n in names]
        )
        s = -(g @ v) / v.norm()
        if method == "cos":
            s = s / g.norm()
        scores.append(s)
    return torch.stack(scores)


def head_names(model: nn.Module, head: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(head + ".")]


def resolve(model: nn.Module, params, head: str) -> list[str]:
    if params == "head":
        return head_names(model, head)
    if params == "all":
        return [n for n, p in model.named_parameters() if p.requires_grad]
    return list(params)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5, what: str = "") -> None:
    """|a − e| ≤ rel·max|e| elementwise (relative to the batch's scale, so near-zero scores don't blow up)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-30)
    err = float((actual - expected).abs().max() / scale)
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel}"
