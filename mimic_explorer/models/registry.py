"""``build_model(ARCH, num_classes)``: every ARCH form to an ``nn.Module`` with random weights.

ARCH forms (docs/ARCHITECTURE.md), tried in this order:
- a built-in small model: ``mlp``, ``small_cnn`` (``models/small.py``);
- ``timm:NAME`` (``models/timm_models.py``, the optional timm extra);
- ``torchvision:NAME[:WEIGHTS]``: the architecture as torchvision builds it for that weights enum
  member (``models/torchvision_models.py``); the weights themselves are loaded by ``models.build``;
- a ``file.py:function`` or ``package.module:function`` factory returning an ``nn.Module``
  (called with ``num_classes=`` when it takes it);
- a torchvision classification model name (``resnet18``, ``vit_b_16``, …), built with
  ``weights=None`` — nothing is ever downloaded; local weights come from ``load_checkpoint``.

``models.build.build_for_run`` is what a run calls: it adds weights, the head and the preprocessing.

Why the head check: mimic scores use the final ``nn.Linear`` (docs/ARCHITECTURE.md, "What the tool
does"), so a model without one is refused here, with the reason, rather than deep inside scoring; a
factory that ignores ``num_classes`` gets its head replaced by a fresh ``nn.Linear`` of the right size.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mimic_explorer.models.arch_names import ArchError, torchvision_classifiers
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN


def _mlp(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), hidden: Sequence[int] = (128,)) -> nn.Module:
    features = 1
    for dim in input_shape:
        features *= int(dim)
    return MLP(features, num_classes, tuple(hidden))


def _small_cnn(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), width: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels=int(input_shape[0]), width=width)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "small_cnn": _small_cnn}
#: (C, H, W) the built-in models are made for, and a factory model's head is traced with
DEFAULT_INPUT_SHAPE = (3, 32, 32)
_ALIASES = {"smallcnn": "small_cnn", "small-cnn": "small_cnn"}
# torchvision models whose training-mode output is a tuple unless the auxiliary heads are off.
_TV_EXTRA = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
}


def list_architectures() -> list[str]:
    """The names ``--arch`` accepts without a prefix: the built-in models and torchvision's classifiers."""
    return sorted(BUILTIN) + torchvision_classifiers()


def _load_file_module(path: str, arch: str):
    if not os.path.isfile(path):
        raise ArchError(f"ARCH {arch!r}: file {path} does not exist")
    path = os.path.realpath(path)
    name = "mimic_user_arch_" + hashlib.sha256(path.encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ArchError(f"ARCH {arch!r}: cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ArchError(f"ARCH {arch!r}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    """The callable a ``file.py:function`` or ``package.module:function`` ARCH names."""
    target, _, func = arch.rpartition(":")
    if not target or not func:
        raise ArchError(f"ARCH {arch!r}: expected path/to/file.py:function or package.module:function")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _load_file_module(os.path.expanduser(target), arch)
        where = target
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise ArchError(
                f"ARCH {arch!r}: no Python module named {exc.name!r} (is the package installed / on PYTHONPATH?)"
            ) from exc
        except Exception as exc:
            raise ArchError(f"ARCH {arch!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
        where = f"module {target}"
    factory = getattr(module, func, None)
    if factory is None or not callable(factory):
        found = [
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
        close = difflib.get_close_matches(func, found, n=3)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"callables defined there: {', '.join(sorted(found)) or 'none'}"
        )
        raise ArchError(f"ARCH {arch!r}: {where} has no function {func!r}; {hint}")
    return factory


def _call_factory(factory: Callable, num_classes: int, arch: str, kwargs: dict) -> nn.Module:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        if "num_classes" in params or takes_kwargs:
            model = factory(num_classes=num_classes, **kwargs)
        elif any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values()):
            model = factory(num_classes, **kwargs)
        else:
            model = factory(**kwargs)
    except Exception as exc:
        raise ArchError(f"ARCH {arch!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ArchError(f"ARCH {arch!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def replace_head(model: nn.Module, num_classes: int, head_name: str | None = None) -> str:
    """Give ``model`` a fresh ``nn.Linear`` head with ``num_classes`` outputs (in place); return its name."""
    if head_name is None:
        head_name, head = find_head(model)
    else:
        head = model.get_submodule(head_name)
    if head.out_features != num_classes:
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        new = new.to(device=head.weight.device, dtype=head.weight.dtype)
        _set_submodule(model, head_name, new)
    return head_name


def strip_head(model: nn.Module, example: torch.Tensor | None = None) -> int:
    """Replace the classifier head by ``nn.Identity`` (in place) and return its input width: what is
    left maps an image to its features (the image tower of a dual encoder)."""
    head_name, head = find_head(model, example)
    _set_submodule(model, head_name, nn.Identity())
    return head.in_features


def _check_head(model: nn.Module, num_classes: int, arch: str, example: torch.Tensor | None) -> nn.Module:
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ArchError(
            f"ARCH {arch!r} builds {type(model).__name__}, which has no nn.Linear classifier head "
            "(mimic scores need a linear head; wrap the model so its logits come from nn.Linear)"
        )
    head_name = None
    if example is not None:
        try:
            head_name, _ = find_head(model, example)
        except Exception:  # noqa: BLE001 - a model that cannot run the example: fall back to the last Linear
            head_name = None
    replace_head(model, num_classes, head_name)
    return model


@dataclass(frozen=True)
class ArchSpec:
    """What an ARCH string names: ``family`` is builtin, timm, torchvision or factory; ``name`` the
    model within it (the whole string for a factory); ``weights`` a torchvision weights enum member."""

    family: str
    name: str
    weights: str | None = None

    @property
    def text(self) -> str:
        """The ARCH string in its canonical form (``small_cnn``, ``timm:NAME``, ``torchvision:NAME:WEIGHTS``…)."""
        if self.family in ("timm", "torchvision"):
            return f"{self.family}:{self.name}" + (f":{self.weights}" if self.weights else "")
        return self.name


def parse_arch(arch: str) -> ArchSpec:
    """Split ARCH into its family and name (nothing is imported or built; names are checked later)."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchError(
            "empty ARCH; give a built-in (mlp, small_cnn), timm:NAME, torchvision:NAME[:WEIGHTS], a torchvision "
            "model name or file.py:function"
        )
    arch = arch.strip()
    key = _ALIASES.get(arch.lower(), arch.lower())
    if key in BUILTIN:
        return ArchSpec("builtin", key)
    family, _, rest = arch.partition(":")
    if family in ("timm", "torchvision") and rest:
        name, _, weights = rest.partition(":")
        if not name or (family == "timm" and weights):
            form = "timm:NAME" if family == "timm" else "torchvision:NAME[:WEIGHTS]"
            raise ArchError(f"ARCH {arch!r}: expected {form}")
        return ArchSpec(family, name, weights or None)
    if ":" in arch:
        return ArchSpec("factory", arch)
    return ArchSpec("torchvision", key)


def _build_torchvision(spec: ArchSpec, num_classes: int, input_shape: Sequence[int] | None, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    from mimic_explorer.models.torchvision_models import (
        check_torchvision_name,
        input_size_options,
        torchvision_weights,
        weights_model_options,
        weights_preprocessing,
    )

    check_torchvision_name(spec.name)
    options = dict(_TV_EXTRA.get(spec.name, {}))
    crop = int(input_shape[-1]) if input_shape is not None else None
    if spec.weights:
        weights = torchvision_weights(spec.name, spec.weights)
        options.update(weights_model_options(spec.name))
        crop = crop or weights_preprocessing(weights).crop
    if crop is not None:
        options.update(input_size_options(spec.name, crop))
    options.update(kwargs)
    try:
        model = tvm.get_model(spec.name, weights=None, num_classes=num_classes, **options)
    except Exception as exc:
        raise ArchError(f"ARCH {spec.name!r}: torchvision could not build it: {type(exc).__name__}: {exc}") from exc
    return _check_head(model, num_classes, spec.name, None)


def build_model(arch: str, num_classes: int, *, input_shape: Sequence[int] | None = None, **kwargs) -> nn.Module:
    """Build an untrained model for ``num_classes`` classes. ``input_shape`` (C, H, W) sizes the
    built-in models and the probe used to find a factory model's head (default 3×32×32) and, when
    given, rebuilds fixed-size models (ViTs) for that size; ``kwargs`` go to the builder."""
    spec = parse_arch(arch)
    if int(num_classes) < 1:
        raise ArchError(f"num_classes must be ≥ 1, got {num_classes}")
    if spec.family == "builtin":
        return BUILTIN[spec.name](num_classes, input_shape=input_shape or DEFAULT_INPUT_SHAPE, **kwargs)
    if spec.family == "timm":
        from mimic_explorer.models.timm_models import build_timm_model

        image_size = int(input_shape[-1]) if input_shape is not None else None
        return build_timm_model(spec.name, num_classes, image_size=image_size, model_args=kwargs)
    if spec.family == "factory":
        model = _call_factory(resolve_factory(arch.strip()), num_classes, arch.strip(), kwargs)
        return _check_head(model, num_classes, arch.strip(), torch.zeros(1, *(input_shape or DEFAULT_INPUT_SHAPE)))
    if arch.strip().startswith("torchvision:") or spec.name in torchvision_classifiers():
        return _build_torchvision(spec, num_classes, input_shape, kwargs)  # an unknown name: close matches listed
    close = difflib.get_close_matches(spec.name, list(BUILTIN) + torchvision_classifiers(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ArchError(
        f"unknown ARCH {arch.strip()!r}: not a built-in model ({', '.join(BUILTIN)}), not a torchvision classification "
        f"model, not timm:NAME or torchvision:NAME[:WEIGHTS], and not a path/to/file.py:function or "
        f"package.module:function factory.{hint}"
    )
