"""``build_for_run``: the one call that turns a run's model options into a model ready to train or score.

Why one entry point: the valid Grad-Mimic protocol is a linear probe on a pretrained backbone shared
by model and reference, and each piece of "pretrained backbone" (which architecture, which weights,
which classifier head, which preprocessing) must agree with the others. ``build_for_run`` decides all
of them together, from ``--arch``, ``--init``, ``--pretrained``, ``--image-size`` and ``--transform``,
and returns them with a load report and the warnings a user must see. See docs/ARCHITECTURE.md
("a CLI option to the scorer" and "where a new model family goes").

ARCH forms and what each brings:

=============================  ==================================  ==========================================
ARCH                           head                                preprocessing (before overrides)
=============================  ==================================  ==========================================
``mlp``, ``small_cnn``         ``head`` (traced)                   32 px, mean/std 0.5
``file.py:function``,          traced on an example input          ``input_size`` declared on the function,
``package.module:function``                                        the returned module or in the file; else
                                                                   ImageNet 256→224 with a note saying so
``resnet18`` (torchvision)     traced                              the DEFAULT weights' ``transforms()``
``torchvision:NAME``           traced                              the DEFAULT weights' ``transforms()``
``torchvision:NAME:WEIGHTS``   traced; weights from the torch hub  ``WEIGHTS.transforms()``
                               cache or ``init``, never downloaded
``timm:NAME[.TAG]``            timm's ``get_classifier()``         timm's resolved data config
=============================  ==================================  ==========================================

Then, in order: preprocessing recorded with the init checkpoint (a model folder's ``config.json``
``pretrained_cfg`` or our sidecar's ``preprocessing``) replaces the model's — or, when the init records
none, the preprocessing recorded with a checkpoint the run uses beside it (``adopt_from``: the
``--reference``, the ``--model`` that ``score`` scores); ``image_size`` and ``transform`` override it
(``models/preprocessing.py``); a contradiction between the recorded one and the one used is a loud
warning.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mimic_explorer.data.transforms import ImageTransform, default_transform
from mimic_explorer.models.checkpoints import CheckpointError, LoadReport, load_checkpoint
from mimic_explorer.models.heads import find_head
from mimic_explorer.models.init_files import InitSource, open_init
from mimic_explorer.models.preprocessing import (
    check_image_size,
    declared_input_size,
    override_preprocessing,
    parse_transform_text,
    preprocessing_mismatch,
)
from mimic_explorer.models.registry import ArchError, ArchSpec, build_model, parse_arch, resolve_factory


@dataclass
class BuiltModel:
    """A model ready for a run, with everything decided about it.

    ``preprocessing`` is ``transform.describe()``: what meta.json records and the feature-cache key
    hashes. ``warnings`` must reach the user loudly (terminal and meta.json); ``notes`` say which
    defaults were assumed. ``twin()`` builds the same architecture with fresh weights (for the
    reference, whose own checkpoint is then loaded into it).
    """

    model: nn.Module
    head_name: str
    transform: ImageTransform
    preprocessing: dict
    preprocessing_source: str
    load_report: LoadReport | None
    warnings: list[str]
    notes: list[str]
    arch: ArchSpec
    weights: dict | None = None
    _rebuild: Callable[[], nn.Module] | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the tensors ``transform`` makes."""
        return (3, self.transform.crop, self.transform.crop)

    def twin(self) -> nn.Module:
        """The same architecture (same head size and options) with fresh random weights."""
        return self._rebuild()

    def describe(self) -> dict:
        """JSON-able facts for meta.json: the ARCH (as ``parse_arch`` reads it), family, name, head,
        preprocessing (+ where it came from), weights and what was loaded."""
        return {
            "arch": self.arch.text,
            "family": self.arch.family,
            "name": self.arch.name,
            "head": self.head_name,
            "preprocessing": self.preprocessing,
            "preprocessing_source": self.preprocessing_source,
            "weights": self.weights,
            "load_report": self.load_report.to_dict() if self.load_report else None,
        }


@dataclass
class _Draft:
    """What a family contributes before the common steps: the model, how to rebuild it, the head, the
    model's own preprocessing, and weights to load when no ``init`` is given."""

    model: nn.Module
    rebuild: Callable[[], nn.Module]
    head: Callable[[nn.Module, int], str]
    base: ImageTransform
    base_source: str
    notes: list[str] = field(default_factory=list)
    weights_file: Path | None = None
    ignore: tuple[str, ...] = ()
    weights: dict | None = None
    recorded: dict | None = None  # preprocessing the init's metadata records, in describe() form


def _traced_head(arch: str) -> Callable[[nn.Module, int], str]:
    def head(model: nn.Module, crop: int) -> str:
        try:
            return find_head(model, torch.zeros(1, 3, crop, crop))[0]
        except Exception as exc:  # the model's own error, with the size that caused it
            raise ArchError(
                f"ARCH {arch!r}: the model cannot run a 3×{crop}×{crop} input ({type(exc).__name__}: {exc}); if it is "
                "made for another size, declare input_size on it or pass --image-size N"
            ) from exc

    return head


def _builtin(spec: ArchSpec, num_classes: int, crop: int | None, pretrained: bool, init: InitSource | None) -> _Draft:
    base = default_transform(spec.name)
    size = crop or base.crop

    def make() -> nn.Module:
        return build_model(spec.name, num_classes, input_shape=(3, size, size))

    return _Draft(make(), make, _traced_head(spec.name), base, f"{spec.name} default ({base.crop} px)")


def _factory(spec: ArchSpec, num_classes: int, crop: int | None, pretrained: bool, init: InitSource | None) -> _Draft:
    factory = resolve_factory(spec.name)
    size = crop or declared_input_size(factory, inspect.getmodule(factory))

    def make() -> nn.Module:
        return build_model(spec.name, num_classes, input_shape=(3, size, size) if size else None)

    model = make()
    declared = declared_input_size(model, factory, inspect.getmodule(factory))
    if declared is not None:
        base, source, notes = ImageTransform(declared, declared), f"input_size {declared} declared by {spec.name}", []
    else:
        base = default_transform(spec.name)
        source = f"assumed ImageNet default for {spec.name} ({base.crop} px)"
        note = (
            f"{spec.name} declares no input size, so {base.crop}-px inputs are assumed (resize {base.resize}, "
            f"crop {base.crop}, ImageNet mean/std). Set input_size = N on the function, on the module it returns "
            "or in its file, or pass --image-size N, if it is made for another size (a 32-px CNN fed 224-px "
            "images trains ~49x slower)."
        )
        notes = [] if crop else [note]
    return _Draft(model, make, _traced_head(spec.name), base, source, notes)


def _torchvision(
    spec: ArchSpec, num_classes: int, crop: int | None, pretrained: bool, init: InitSource | None
) -> _Draft:
    from mimic_explorer.models.torchvision_models import (
        AUXILIARY_HEADS,
        describe_weights,
        hub_checkpoint_path,
        torchvision_weights,
        weights_preprocessing,
    )

    if pretrained and not spec.weights:
        spec = ArchSpec(spec.family, spec.name, "DEFAULT")
    arch = f"torchvision:{spec.name}" + (f":{spec.weights}" if spec.weights else "")
    if not spec.weights:
        base = default_transform(spec.name)
        size = crop or base.crop

        def make() -> nn.Module:
            return build_model(f"torchvision:{spec.name}", num_classes, input_shape=(3, size, size))

        return _Draft(
            make(),
            make,
            _traced_head(arch),
            base,
            f"torchvision default for {spec.name} (the DEFAULT weights' transforms())",
        )
    weights = torchvision_weights(spec.name, spec.weights)
    hub_file = None if init else hub_checkpoint_path(weights)
    if hub_file is not None and not hub_file.is_file():
        raise CheckpointError(
            f"the weights {weights!r} are not in the local torch hub cache: looked for {hub_file}. Nothing is "
            f"downloaded: copy the file there (it is {weights.url}), or pass --init with a local file."
        )
    base = weights_preprocessing(weights)
    size = crop or base.crop

    def make_weighted() -> nn.Module:
        return build_model(arch, num_classes, input_shape=(3, size, size))

    return _Draft(
        make_weighted(),
        make_weighted,
        _traced_head(arch),
        base,
        f"{weights!r}.transforms()",
        weights_file=hub_file,
        ignore=AUXILIARY_HEADS.get(spec.name, ()),
        weights=describe_weights(weights),
    )


def _timm(spec: ArchSpec, num_classes: int, crop: int | None, pretrained: bool, init: InitSource | None) -> _Draft:
    from mimic_explorer.models.timm_models import (
        build_timm_model,
        check_timm_name,
        timm_config_preprocessing,
        timm_head_name,
        timm_preprocessing,
    )

    check_timm_name(spec.name)
    args = init.model_args if init else {}

    def make(load: bool = False) -> nn.Module:
        return build_timm_model(spec.name, num_classes, pretrained=load, image_size=crop, model_args=args)

    model = make(pretrained)
    notes = []
    config = model.pretrained_cfg if hasattr(model, "pretrained_cfg") else {}
    if config.get("crop_mode") == "border":
        notes.append(f"timm's 'border' crop mode of {spec.name} (pad, no crop) is approximated by a centre crop")
    recorded = timm_config_preprocessing(init.pretrained_cfg).describe() if init and init.pretrained_cfg else None
    weights = {"timm_pretrained": model.pretrained_cfg.get("hf_hub_id") or spec.name} if pretrained else None
    return _Draft(
        model,
        make,
        lambda m, _crop: timm_head_name(m),
        timm_preprocessing(model),
        f"timm data config of {spec.name}",
        notes,
        weights=weights,
        recorded=recorded,
    )


_FAMILIES = {"builtin": _builtin, "factory": _factory, "torchvision": _torchvision, "timm": _timm}


def _requested_crop(image_size: int | None, overrides: Mapping, recorded: Mapping | None) -> int | None:
    """The input size asked for before the model is built (it sizes ViTs and the built-in MLP)."""
    for value in (overrides.get("crop"), image_size, (recorded or {}).get("crop")):
        if value is not None:
            return int(value)
    return None


def _folder_crop(source: InitSource | None) -> dict | None:
    """The crop a model folder's ``pretrained_cfg`` records, before any timm resolution (it sizes ViTs)."""
    cfg = source.pretrained_cfg if source else None
    return {"crop": int(cfg["input_size"][-1])} if cfg else None


def recorded_preprocessing(path: str | os.PathLike) -> dict | None:
    """The preprocessing (``ImageTransform.describe()`` form) a checkpoint's metadata records — our
    ``.meta.json`` sidecar's ``preprocessing``, else a model folder's ``pretrained_cfg`` resolved by
    timm — or None (also when ``path`` does not exist: loading it reports that, naming the flag)."""
    if not Path(path).expanduser().exists():
        return None
    source = open_init(path)
    if source.recorded_preprocessing is not None:
        return source.recorded_preprocessing
    if source.pretrained_cfg:
        from mimic_explorer.models.timm_models import timm_config_preprocessing

        return timm_config_preprocessing(source.pretrained_cfg).describe()
    return None


def _adopted(adopt_from: Sequence[tuple[str, str | os.PathLike]]) -> tuple[dict | None, str | None]:
    """The first recorded preprocessing among ``adopt_from`` ((flag, path) pairs), and where it is from."""
    for flag, path in adopt_from:
        recorded = recorded_preprocessing(path) if path else None
        if recorded is not None:
            return recorded, f"{flag} {Path(path).expanduser()}"
    return None, None


def _load_init(built: _Draft, model: nn.Module, head_name: str, init: InitSource, trust_pickle: bool) -> LoadReport:
    try:
        return load_checkpoint(model, init.path, trust_pickle=trust_pickle, head=head_name, ignore=built.ignore)
    except CheckpointError as exc:
        named = init.architecture
        if named:
            raise CheckpointError(f"{exc} (its metadata names architecture {named!r})") from None
        raise


def build_for_run(
    arch: str,
    num_classes: int,
    *,
    init: str | os.PathLike | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    transform: str | Mapping | None = None,
    trust_pickle: bool = False,
    adopt_from: Sequence[tuple[str, str | os.PathLike]] = (),
) -> BuiltModel:
    """Build ``arch`` for ``num_classes`` classes, load its initial weights, find its head and choose its
    preprocessing.

    Args:
        arch: ``mlp``, ``small_cnn``, ``file.py:function``, ``package.module:function``, a torchvision
            name (``resnet18``), ``torchvision:NAME[:WEIGHTS]`` (``torchvision:resnet50:IMAGENET1K_V2``)
            or ``timm:NAME[.TAG]`` (``timm:vit_small_patch16_224.augreg_in21k``; needs the timm extra).
        num_classes: classes of the pool; a differently sized head in the weights is skipped (reported).
        init: initial weights: a ``.pt``/``.pth``/``.safetensors`` state dict or a Hugging Face-style
            model folder (``model.safetensors`` + ``config.json``, whose ``model_args`` and
            ``pretrained_cfg`` are used for timm models). For ``torchvision:NAME:WEIGHTS`` it replaces
            the hub-cache file.
        pretrained: timm: timm's own loader (needs network access or timm's cache); torchvision: the
            DEFAULT weights (or WEIGHTS) from the local torch hub cache. Not with ``init``.
        image_size: resize and crop to this many pixels (``--image-size``).
        transform: ``--transform`` text (``"resize=R,crop=C,mean=a,b,c,std=a,b,c,interpolation=bicubic"``)
            or the dict ``parse_transform_text`` returns; keys left out keep the model's value.
        trust_pickle: allow checkpoints holding pickled objects (``--trust-checkpoint``).
        adopt_from: checkpoints the run uses with this model, as (flag, path) pairs in order of
            preference (``[("--reference", path)]``): when ``init`` records no preprocessing, the first
            of them that does supplies it, so a probe trained at ``--image-size 64`` and saved with
            ``--save-model`` is met at 64 px by the run that uses it. Nothing is loaded from them here.

    Returns:
        ``BuiltModel`` (model on CPU in train mode; seed the RNG before calling for reproducible heads).

    Raises:
        ArchError: an ARCH that names nothing buildable (close names listed), no linear head, timm missing,
            pretrained weights unavailable.
        CheckpointError: an init or weights file that is missing or does not fit (the first mismatched
            tensor named); a torchvision weights file absent from the hub cache (the path looked for named).
        PreprocessingError: bad ``image_size``/``transform``.
    """
    spec = parse_arch(arch)
    if isinstance(num_classes, bool) or int(num_classes) < 1:
        raise ArchError(f"num_classes must be ≥ 1, got {num_classes}")
    if pretrained and init is not None:
        raise ArchError("pass either --pretrained (the model's published weights) or --init (a local file), not both")
    if pretrained and spec.family not in ("timm", "torchvision"):
        raise ArchError(
            f"--pretrained applies to timm:NAME and torchvision models, not to {arch!r}; pass --init with a file"
        )
    overrides = parse_transform_text(transform) if isinstance(transform, str) else dict(transform or {})
    check_image_size(image_size)
    source = open_init(init) if init is not None else None
    sidecar_recorded = source.recorded_preprocessing if source else None
    folder_crop = _folder_crop(source) if spec.family == "timm" else None
    adopted, adopted_where = (None, None) if sidecar_recorded or folder_crop else _adopted(adopt_from)
    pre_crop = _requested_crop(image_size, overrides, sidecar_recorded or folder_crop or adopted)
    draft = _FAMILIES[spec.family](spec, int(num_classes), pre_crop, pretrained, source)
    recorded = sidecar_recorded or draft.recorded
    where = f"--init {source.path}" if recorded else adopted_where
    chosen, source_text, notes, warnings = _choose_preprocessing(
        draft, recorded or adopted, where, image_size, overrides
    )
    model = draft.model
    head_name = draft.head(model, chosen.crop)
    report = None
    weights = draft.weights
    if source is not None:
        report = _load_init(draft, model, head_name, source, trust_pickle)
        weights = {**(weights or {}), "init": str(source.path)}
    elif draft.weights_file is not None:
        from mimic_explorer.models.torchvision_models import hub_file_warning

        report = load_checkpoint(model, draft.weights_file, head=head_name, ignore=draft.ignore)
        warnings += filter(None, [hub_file_warning(draft.weights_file)])
    return BuiltModel(
        model, head_name, chosen, chosen.describe(), source_text, report, warnings, notes, spec, weights, draft.rebuild
    )


def _choose_preprocessing(
    draft: _Draft, recorded: dict | None, where: str | None, image_size: int | None, overrides: dict
) -> tuple[ImageTransform, str, list[str], list[str]]:
    """The preprocessing used (the model's, replaced by what ``where`` — a checkpoint flag and path —
    records, then overridden), where it came from, notes, and the mismatch warning when an override
    contradicts the recorded one."""
    base, base_source, notes = draft.base, draft.base_source, list(draft.notes)
    if recorded:
        base, base_source = ImageTransform.from_description(recorded), f"recorded with {where}"
    chosen = override_preprocessing(base, image_size=image_size, overrides=overrides)
    source_text = (
        base_source
        + (f"; --image-size {image_size}" if image_size else "")
        + (f"; --transform {', '.join(sorted(overrides))}" if overrides else "")
    )
    mismatch = preprocessing_mismatch(recorded, chosen, where) if recorded else None
    if recorded and not mismatch and preprocessing_mismatch(recorded, draft.base, where):  # a change worth a note
        notes.append(f"preprocessing {base_source} is used (it replaces the model's {draft.base_source})")
    return chosen, source_text, notes, [mismatch] if mismatch else []


def checkpoint_preprocessing_warning(
    path: str | os.PathLike, transform: ImageTransform, role: str = "--reference"
) -> str | None:
    """The loud warning when the checkpoint at ``path`` (a ``--reference``) records other preprocessing
    than ``transform`` — in its ``.meta.json`` sidecar or a model folder's ``pretrained_cfg`` — or None.

    Why: a reference probe trained on features of other inputs than the pool's is compared, in head
    space, with a model that sees different features; its scores then mean little.
    """
    recorded = recorded_preprocessing(path)
    return preprocessing_mismatch(recorded, transform, f"{role} {Path(path).expanduser()}") if recorded else None
