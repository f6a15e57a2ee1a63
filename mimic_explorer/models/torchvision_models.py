"""``torchvision:NAME[:WEIGHTS]`` architectures: torchvision classifiers and their weights enums.

A weights enum member (``torchvision:resnet50:IMAGENET1K_V2``) decides three things, all taken from
the enum itself: the architecture's options (Inception's input transform, a ViT's image size), the
preprocessing (``weights.transforms()``) and the file (``weights.url``). The file is read from the
local torch hub cache (``torch.hub.get_dir()/checkpoints/<file name of the url>``, where
``torchvision`` itself keeps it) or from an explicit ``--init``; it is never downloaded. See
docs/ARCHITECTURE.md ("where a new model family goes").
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from urllib.parse import urlparse

import torch

from mimic_explorer.data.transforms import ImageTransform, image_transform_from_preset
from mimic_explorer.models.arch_names import ArchError, torchvision_classifiers

TORCHVISION_PREFIX = "torchvision:"
#: checkpoint modules torchvision's weights hold but a model built for scoring leaves out
AUXILIARY_HEADS = {"inception_v3": ("AuxLogits",), "googlenet": ("aux1", "aux2")}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: NAME-<sha256 prefix>.pth


def check_torchvision_name(name: str) -> None:
    """Raise ``ArchError`` unless ``name`` is a torchvision classification model (close matches listed)."""
    names = torchvision_classifiers()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ArchError(f"torchvision has no classification model {name!r}.{hint}")


def torchvision_weights(name: str, member: str):
    """The weights enum member ``member`` (``IMAGENET1K_V2``, ``DEFAULT`` or ``ResNet50_Weights.IMAGENET1K_V2``)
    of model ``name``; an ``ArchError`` listing the valid members otherwise."""
    from torchvision.models import get_model_weights

    check_torchvision_name(name)
    enum = get_model_weights(name)
    key = member.rpartition(".")[2] if member.startswith(f"{enum.__name__}.") else member
    valid = list(enum.__members__)
    if key not in enum.__members__:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ArchError(f"torchvision {name} has no weights {member!r}{hint}; {enum.__name__} has: {', '.join(valid)}")
    return enum[key]


def hub_checkpoint_path(weights) -> Path:
    """Where torchvision keeps ``weights``' file once downloaded: the torch hub cache's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def weights_model_options(name: str) -> dict:
    """Constructor options that torchvision's own builder sets for ``weights`` (besides the class count):
    Inception and GoogLeNet weights expect ``transform_input=True``."""
    return {"transform_input": True} if name in AUXILIARY_HEADS else {}


def input_size_options(name: str, crop: int) -> dict:
    """Options that build a fixed-size torchvision model for ``crop``-px inputs (a ViT's ``image_size``,
    a MaxViT's ``input_size``); other models take any size."""
    if name.startswith("vit_"):
        return {"image_size": crop}
    if name.startswith("maxvit"):
        return {"input_size": (crop, crop)}
    return {}


def weights_preprocessing(weights) -> ImageTransform:
    """The preprocessing of ``weights.transforms()`` as an ``ImageTransform`` (same resize, crop, mean, std,
    interpolation)."""
    return image_transform_from_preset(weights.transforms())


def describe_weights(weights) -> dict:
    """JSON-able facts about ``weights`` for meta.json: the enum member, its file and its metadata."""
    meta = weights.meta
    return {
        "weights": repr(weights),
        "url": weights.url,
        "num_params": meta.get("num_params"),
        "categories": len(meta.get("categories") or []),
        "recipe": meta.get("recipe"),
    }


def hub_file_warning(path: Path) -> str | None:
    """A warning when a hub-cache file's content does not match the hash prefix in its name (a partial
    or replaced download); None when it matches or the name carries no hash."""
    found = _HASH_IN_NAME.search(path.name)
    if not found:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest().startswith(found.group(1)):
        return None
    return (
        f"WEIGHTS FILE: {path} does not match the hash in its name ({found.group(1)}): it may be a partial download "
        "or another file; its tensors were loaded as they are"
    )
