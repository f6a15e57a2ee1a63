"""``timm:NAME`` architectures: timm classification models, through timm's own API.

timm is an optional extra (``pip install -e ".[timm]"`` in a checkout); nothing here imports it until a
``timm:`` architecture is asked for. Why timm's API rather than ours: timm knows each model's
classifier (``get_classifier()``), its input size and normalisation (its resolved data config) and
how to fetch and adapt its pretrained weights, for some 1,400 architectures. See
docs/ARCHITECTURE.md ("where a new model family goes").
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from torch import nn

from mimic_explorer.data.transforms import ImageTransform
from mimic_explorer.models.arch_names import ArchError
from mimic_explorer.models.preprocessing import transform_from_timm_config

TIMM_PREFIX = "timm:"
TIMM_INSTALL = 'pip install -e ".[timm]"'
LOCAL_WEIGHTS_HINT = (
    "pass --init with a local file instead: a .safetensors/.pt state dict or a Hugging Face-style model folder "
    "(model.safetensors + config.json, e.g. the timm/NAME repository downloaded on a machine with network access)"
)


def _import_timm():
    """The ``timm`` module, or an ``ArchError`` saying which extra to install."""
    try:
        import timm
    except ImportError:
        raise ArchError(
            f"timm: architectures need the optional timm package: {TIMM_INSTALL} in a checkout of "
            "mimic_explorer (or pip install timm)"
        ) from None
    return timm


def check_timm_name(name: str) -> None:
    """Raise ``ArchError`` unless ``name`` (``arch`` or ``arch.pretrained_tag``) is a timm model;
    the message lists the closest names timm knows."""
    timm = _import_timm()
    base, _, tag = name.partition(".")
    if not base or not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models()."
        raise ArchError(f"timm has no model {base!r}.{hint}")
    if tag:
        tagged = timm.list_pretrained(f"{base}.*")
        if name not in tagged:
            close = difflib.get_close_matches(name, tagged, n=5, cutoff=0.5) or tagged[:8]
            hint = f" Known tags: {', '.join(close)}." if close else f" timm lists no pretrained tags for {base}."
            raise ArchError(f"timm has no pretrained tag {tag!r} for {base}.{hint}")


def build_timm_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    image_size: int | None = None,
    model_args: Mapping | None = None,
) -> nn.Module:
    """``timm.create_model(name, num_classes=…)`` with random weights, or timm's own pretrained loader
    when ``pretrained`` (it needs network access or timm's local cache; the error otherwise says to
    use ``--init``). ``image_size`` rebuilds fixed-size models (ViTs) for that input size;
    ``model_args`` are extra constructor arguments (a model folder's ``config.json`` ``model_args``)."""
    timm = _import_timm()
    check_timm_name(name)
    kwargs = dict(model_args or {})
    cfg = timm.models.get_pretrained_cfg(name)
    if (
        image_size is not None
        and cfg is not None
        and cfg.fixed_input_size
        and tuple(cfg.input_size[-2:]) != (image_size, image_size)
    ):
        kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as exc:  # timm and the hub raise many kinds; the reason is kept
        reason = f"{type(exc).__name__}: {exc}"
        if pretrained:
            raise ArchError(
                f"timm could not load the pretrained weights of {name} ({reason}). {LOCAL_WEIGHTS_HINT}"
            ) from exc
        if "img_size" in kwargs and "img_size" not in (model_args or {}):
            reason += f" (building it for {image_size}-px inputs; its native size is {cfg.input_size[-1]})"
        raise ArchError(f"timm could not build {name}: {reason}") from exc


def timm_head_name(model: nn.Module) -> str:
    """Qualified name of the module timm's ``get_classifier()`` returns, found by identity; an
    ``ArchError`` when it is not one ``nn.Linear`` (distilled models have two heads, a few models a
    1×1 convolution), since mimic scores need a single linear head producing the logits."""
    name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):
        raise ArchError(
            f"timm model {name} has {len(classifier)} classifier heads (a distilled model averages them); mimic scores "
            "need one nn.Linear producing the logits: choose a model without distillation"
        )
    if not isinstance(classifier, nn.Linear):
        raise ArchError(
            f"timm model {name}'s classifier is a {type(classifier).__name__}, not an nn.Linear; mimic scores need a "
            "linear head producing the logits: choose another model"
        )
    for qualified, module in model.named_modules():
        if module is classifier:
            return qualified
    raise ArchError(f"timm model {name}'s classifier is not one of its submodules")  # pragma: no cover


def timm_preprocessing(model: nn.Module) -> ImageTransform:
    """The eval preprocessing timm resolves for ``model`` (``timm.data.resolve_model_data_config``)."""
    return transform_from_timm_config(_import_timm().data.resolve_model_data_config(model))


def timm_config_preprocessing(pretrained_cfg: Mapping) -> ImageTransform:
    """The eval preprocessing a ``pretrained_cfg`` (a model folder's ``config.json``) stands for,
    resolved by timm (which fills crop_pct, interpolation, … the file leaves out)."""
    return transform_from_timm_config(_import_timm().data.resolve_data_config(pretrained_cfg=dict(pretrained_cfg)))
