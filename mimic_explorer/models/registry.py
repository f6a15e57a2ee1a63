"""``build_model(ARCH, num_classes)``: every ARCH form of DESIGN §4 to an ``nn.Module``.

ARCH forms, tried in this order:
- a built-in small model: ``mlp``, ``small_cnn`` (``models/small.py``);
- a ``file.py:function`` or ``package.module:function`` factory returning an ``nn.Module``
  (called with ``num_classes=`` when it takes it);
- a torchvision classification model name (``resnet18``, ``vit_b_16``, …), built with
  ``weights=None`` — nothing is ever downloaded; local weights come from ``load_checkpoint``.

Why the head check: mimic scores use the final ``nn.Linear`` (DESIGN §2), so a model without one is
refused here, with the reason, rather than deep inside scoring; a factory that ignores
``num_classes`` gets its head replaced by a fresh ``nn.Linear`` of the right size.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from mimic_explorer.models.heads import find_head
from mimic_explorer.models.small import MLP, SmallCNN


class ArchError(ValueError):
    """An ARCH string that names nothing buildable, or builds something without a linear head."""


def _mlp(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), hidden: Sequence[int] = (128,)) -> nn.Module:
    features = 1
    for dim in input_shape:
        features *= int(dim)
    return MLP(features, num_classes, tuple(hidden))


def _small_cnn(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), width: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels=int(input_shape[0]), width=width)


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "small_cnn": _small_cnn}
_ALIASES = {"smallcnn": "small_cnn", "small-cnn": "small_cnn"}
# torchvision models whose training-mode output is a tuple unless the auxiliary heads are off.
_TV_EXTRA = {"inception_v3": {"aux_logits": False, "init_weights": True}, "googlenet": {"aux_logits": False, "init_weights": True}}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (not detection/segmentation/video)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def list_architectures() -> list[str]:
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
            raise ArchError(f"ARCH {arch!r}: no Python module named {exc.name!r} (is the package installed / on PYTHONPATH?)") from exc
        except Exception as exc:
            raise ArchError(f"ARCH {arch!r}: importing {target} failed: {type(exc).__name__}: {exc}") from exc
        where = f"module {target}"
    factory = getattr(module, func, None)
    if factory is None or not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        close = difflib.get_close_matches(func, found, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"callables defined there: {', '.join(sorted(found)) or 'none'}"
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


def build_model(arch: str, num_classes: int, *, input_shape: Sequence[int] = (3, 32, 32), **kwargs) -> nn.Module:
    """Build an untrained model for ``num_classes`` classes. ``input_shape`` (C, H, W) sizes the
    built-in models and the probe used to find a factory model's head; ``kwargs`` go to the builder."""
    if not isinstance(arch, str) or not arch.strip():
        raise ArchError("empty ARCH; give a built-in (mlp, small_cnn), a torchvision model name or file.py:function")
    if int(num_classes) < 1:
        raise ArchError(f"num_classes must be ≥ 1, got {num_classes}")
    arch = arch.strip()
    key = _ALIASES.get(arch.lower(), arch.lower())
    if key in BUILTIN:
        return BUILTIN[key](num_classes, input_shape=input_shape, **kwargs)
    if ":" in arch:
        model = _call_factory(resolve_factory(arch), num_classes, arch, kwargs)
        example = torch.zeros(1, *input_shape) if input_shape is not None else None
        return _check_head(model, num_classes, arch, example)
    names = torchvision_classifiers()
    if key in names:
        import torchvision.models as tvm

        options = {**_TV_EXTRA.get(key, {}), **kwargs}
        try:
            model = tvm.get_model(key, weights=None, num_classes=num_classes, **options)
        except Exception as exc:
            raise ArchError(f"ARCH {arch!r}: torchvision could not build it: {type(exc).__name__}: {exc}") from exc
        return _check_head(model, num_classes, arch, None)
    close = difflib.get_close_matches(key, list(BUILTIN) + names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ArchError(
        f"unknown ARCH {arch!r}: not a built-in model ({', '.join(BUILTIN)}), not a torchvision classification "
        f"model, and not a path/to/file.py:function or package.module:function factory.{hint}"
    )
