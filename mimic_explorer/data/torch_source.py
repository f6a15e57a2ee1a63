"""A torch ``Dataset`` (or a ``DataLoader``'s, or a Hugging Face ``datasets.Dataset``) as a ``Source``.

Why an adapter and not a second pipeline: the Python API (``mimic_explorer.commands.python_api``) runs the command
line's drivers, which read a pool through ``Source`` — ids, labels or captions, class names up front,
``load(i)`` by position, bad samples reported — so a dataset held in memory gets the same runs,
resumes, thumbnails and app as a folder on disk.

What an item may be: ``(image, target)`` (a tuple or list, as torchvision's datasets give), or a dict
(a Hugging Face row: the image is the column whose feature is ``Image`` — else the first PIL value —,
the label a ``ClassLabel`` column or one named ``label``/``labels``/``target``/``fine_label``, a
caption a string column named ``caption``/``text``/``txt``, the id a column named
``sample_id``/``id``/``uid``/``key``/``__key__``; ``columns=`` names them instead). The image is a
PIL image, a uint8 array, or a tensor; the target an integer class (labelled images) or a string
(image-text pairs).

Why a tensor travels inside the picture: the ``Source`` contract hands out RGB pictures (thumbnails,
the app), and every pass turns a picture into the model's input with the run's transform. A dataset
that already yields the model's tensors (its own transforms applied) must reach the model exactly as
it gave them, not re-quantised to 8 bits and transformed again: ``load`` returns a picture made from
the tensor for a person to look at, carrying the tensor itself in ``picture.info``; ``ModelInputs``
is the run's transform and hands that tensor on. Pictures from other sources carry none and are
transformed as usual.

Opening reads every item once: the labels (or captions) are needed up front, and the pool's
fingerprint — which names the run, keys the feature cache and lets ``out=`` reuse a run — hashes
every item's content, so a changed dataset is never taken for the one a cached run scored. A dataset
whose items change from one read to the next (random augmentation) is therefore never the same run
twice: score on deterministic transforms.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimic_explorer.data.errors import BadSample, DataSourceError
from mimic_explorer.data.imageio import array_to_rgb, to_rgb
from mimic_explorer.data.source import Source

#: where a picture made from a dataset's tensor carries that tensor (``Image.info`` survives copies)
MODEL_INPUT = "mimic_explorer.model_input"
IMAGE_KEYS = ("image", "img", "jpg", "png", "pixel_values")
LABEL_KEYS = ("label", "labels", "target", "fine_label", "class", "cls")
CAPTION_KEYS = ("caption", "text", "txt", "sentence")
ID_KEYS = ("sample_id", "id", "uid", "key", "__key__")


def is_map_style(data: Any) -> bool:
    """Whether ``data`` reads items by position (``len`` and ``[i]``), as the runs need."""
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes))


def dataset_of(data: Any) -> tuple[Any, int | None]:
    """(the map-style dataset behind ``data``, the batch size its ``DataLoader`` used, if any).

    A ``DataLoader`` is read through its ``dataset`` by position: its sampler, shuffling and collate
    function are not used (a run cuts its own batches, in an order it can resume). Raises
    ``DataSourceError`` for data without positions (an ``IterableDataset``, a generator)."""
    from torch.utils.data import DataLoader, IterableDataset

    batch_size = None
    if isinstance(data, DataLoader):
        data, batch_size = data.dataset, data.batch_size
    if isinstance(data, IterableDataset) or not is_map_style(data):
        raise DataSourceError(
            f"{type(data).__name__} has no positions to read samples by (a run resumes by position and cuts its own "
            "batches); pass a map-style torch Dataset (len and [i]), a DataLoader over one, or a data SPEC"
        )
    return data, batch_size


def _feature_kind(feature: Any) -> str:
    return type(feature).__name__


def _resolve_columns(item: Mapping, features: Mapping | None, columns: Mapping[str, str]) -> dict[str, str | None]:
    """Which key of a dict item is the image, the label, the caption and the id (``columns`` first)."""
    found: dict[str, str | None] = {k: columns.get(k) for k in ("image", "label", "caption", "id")}
    keys = list(item)
    for role, key in found.items():
        if key is not None and key not in item:
            raise DataSourceError(f"columns names {role} {key!r}, which the items lack (columns: {', '.join(keys)})")
    by_feature = dict(features or {})
    if found["image"] is None:
        typed = [k for k in keys if _feature_kind(by_feature.get(k)) == "Image"]
        pictures = [k for k in keys if isinstance(item[k], Image.Image)]
        named = [k for k in keys if k.lower() in IMAGE_KEYS]
        found["image"] = (typed or pictures or named or [None])[0]
    if found["label"] is None and found["caption"] is None:
        typed = [k for k in keys if _feature_kind(by_feature.get(k)) == "ClassLabel"]
        named = [k for k in keys if k.lower() in LABEL_KEYS]
        found["label"] = (typed or named or [None])[0]
        if found["label"] is None:
            found["caption"] = next((k for k in keys if k.lower() in CAPTION_KEYS and isinstance(item[k], str)), None)
    if found["id"] is None:
        found["id"] = next((k for k in keys if k.lower() in ID_KEYS), None)
    if found["image"] is None or (found["label"] is None and found["caption"] is None):
        what = "an image" if found["image"] is None else "a label or a caption"
        raise DataSourceError(
            f"the dataset's items have no column that is {what} (columns: {', '.join(map(str, keys))}); "
            "name them with columns={'image': ..., 'label': ...} (or 'caption')"
        )
    return found


def _as_target(value: Any) -> int | str:
    if isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a target must be one class index or a caption, got a tensor of {value.numel()} values")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not float(value).is_integer():
        raise ValueError(f"a target must be a whole class index or a caption, got {value!r}")
    return int(value)


def picture_of(tensor: torch.Tensor) -> Image.Image:
    """A picture of a model input for a person to look at: (C, H, W) with 1, 3 or 4 channels or (H, W)
    as an image, anything else laid out as a grey square; floats stretched to the full grey range."""
    array = tensor.detach().cpu().float().numpy()
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)[:, :, :3] if array.shape[0] != 1 else array[0]
    elif array.ndim != 2:
        flat = array.reshape(-1)
        side = max(1, math.ceil(math.sqrt(flat.size)))
        array = np.pad(flat, (0, side * side - flat.size)).reshape(side, side)
    if tensor.dtype != torch.uint8:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return array_to_rgb(np.round(array).astype(np.uint8))


class TorchSource(Source):
    """``Source`` over a map-style dataset of ``(image, target)`` items or dict rows (module docstring).

    Parameters
    ----------
    dataset
        ``len(dataset)`` and ``dataset[i]``; a ``DataLoader`` is read through its ``dataset``.
    class_names
        The classes, in label order (default: ``dataset.classes``, a ``ClassLabel`` feature's names, else the label
        values as text).
    sample_ids
        One unique id per item (default: an id column, else the item's position, zero-padded).
    columns
        Dict items: which key is ``image``, ``label``, ``caption``, ``id``.
    name
        How ``errors.parquet`` and ``meta.json`` name the dataset (default: its class name).
    """

    kind = "torch"

    def __init__(
        self,
        dataset: Any,
        *,
        class_names: Sequence[str] | None = None,
        sample_ids: Sequence[str] | None = None,
        columns: Mapping[str, str] | None = None,
        name: str | None = None,
    ):
        self.dataset, _ = dataset_of(dataset)
        self.name = name or type(self.dataset).__name__
        self.columns = dict(columns or {})
        self._keys: dict[str, str | None] | None = None
        self.gives_tensors: bool | None = None
        count = len(self.dataset)
        if sample_ids is not None and len(sample_ids) != count:
            raise DataSourceError(f"{self.name}: {len(sample_ids)} sample ids for {count} items")
        width = len(str(max(count - 1, 0)))
        index, ids, targets, bad, digest = [], [], [], [], hashlib.sha256()
        for i in range(count):
            given_id = None if sample_ids is None else str(sample_ids[i])
            try:
                picture, tensor, target, item_id = self._item(i)
            except DataSourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - an item the dataset cannot give is one bad sample
                bad.append(BadSample(given_id or f"{i:0{width}d}", self._where(i), f"{type(exc).__name__}: {exc}"))
                continue
            sample_id = given_id or (str(item_id) if item_id is not None else f"{i:0{width}d}")
            index.append(i)
            ids.append(sample_id)
            targets.append(target)
            digest.update(f"{sample_id}\x1f{target}\x1f".encode())
            digest.update(_content(picture, tensor))
        if not ids:
            reasons = f" (the first: {bad[0].reason})" if bad else ""
            raise DataSourceError(f"{self.name}: the dataset has no usable items{reasons}")
        self._index = np.asarray(index, dtype=np.int64)
        self._content_digest_all = digest.hexdigest()
        kinds = {type(t) for t in targets}
        if len(kinds) > 1:
            raise DataSourceError(f"{self.name}: some targets are class indices and some are captions; use one kind")
        spec = f"python:{type(self.dataset).__module__}.{type(self.dataset).__qualname__}"
        if kinds == {str}:
            super().__init__(spec, ids, None, [], open_errors=bad, captions=targets)
            return
        labels = np.asarray(targets, dtype=np.int64)
        names = self._class_names(class_names, labels)
        super().__init__(spec, ids, labels, names, open_errors=bad)

    # --- reading items ---------------------------------------------------------------------
    def _where(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def _item(self, i: int) -> tuple[Image.Image | None, torch.Tensor | None, int | str, Any]:
        """(picture, tensor — one of them None —, target, the item's own id or None) of dataset item ``i``."""
        item = self.dataset[int(i)]
        item_id = None
        if isinstance(item, Mapping):
            if self._keys is None:
                self._keys = _resolve_columns(item, getattr(self.dataset, "features", None), self.columns)
            keys = self._keys
            image = item[keys["image"]]
            target = item[keys["label"]] if keys["label"] is not None else item[keys["caption"]]
            item_id = item[keys["id"]] if keys["id"] is not None else None
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            image, target = item[0], item[1]
        else:
            raise DataSourceError(
                f"{self.name}[{i}] is a {type(item).__name__}; items must be (image, target) pairs or dict rows"
            )
        picture, tensor = self._image(image, i)
        return picture, tensor, _as_target(target), item_id

    def _image(self, image: Any, i: int) -> tuple[Image.Image | None, torch.Tensor | None]:
        if isinstance(image, np.ndarray) and image.dtype != np.uint8:
            image = torch.from_numpy(image)
        if isinstance(image, torch.Tensor):
            picture, tensor = None, image
        elif isinstance(image, Image.Image):
            picture, tensor = to_rgb(image), None
        elif isinstance(image, np.ndarray):
            picture, tensor = array_to_rgb(image), None
        else:
            raise ValueError(f"an image must be a PIL image, a uint8 array or a tensor, got {type(image).__name__}")
        gives = tensor is not None
        if self.gives_tensors is None:
            self.gives_tensors = gives
        elif gives != self.gives_tensors:
            first = "tensors" if self.gives_tensors else "pictures"
            raise ValueError(f"item {i} is a {'tensor' if gives else 'picture'} where the first items are {first}")
        return picture, tensor

    def _class_names(self, given: Sequence[str] | None, labels: np.ndarray) -> list[str]:
        if given is not None:
            return [str(c) for c in given]
        classes = getattr(self.dataset, "classes", None)
        features = getattr(self.dataset, "features", None)
        if classes is None and isinstance(features, Mapping) and self._keys and self._keys["label"] is not None:
            classes = getattr(features.get(self._keys["label"]), "names", None)
        if classes is not None and len(classes) > int(labels.max()):
            return [str(c) for c in classes]
        return [str(c) for c in range(int(labels.max()) + 1)]

    # --- the Source contract -----------------------------------------------------------------
    def source_of(self, i: int) -> str:
        """``NAME[k]``: the dataset's name and the item's position in it."""
        return self._where(int(self._index[i]))

    def dataset_index(self, i: int | np.ndarray) -> int | np.ndarray:
        """The dataset position of pool position ``i`` (items the dataset could not give are not in the pool)."""
        return self._index[i]

    def _load(self, i: int) -> Image.Image:
        picture, tensor, _, _ = self._item(int(self._index[i]))
        if tensor is None:
            return picture
        shown = picture_of(tensor)
        shown.info[MODEL_INPUT] = tensor
        return shown

    def _sizes_now(self) -> np.ndarray:
        return np.full(len(self), -1, dtype=np.int64)

    def fingerprint(self, content: bool = False) -> str:
        """Ids, targets and class names as for every source, and every item's content, hashed when the dataset
        was opened (module docstring)."""
        base = super().fingerprint(content=False)
        return hashlib.sha256(f"{base}:{self._content_digest_all}".encode()).hexdigest()[:16]

    def model_inputs(self, transform: Callable | None = None) -> ModelInputs:
        """The run's transform for this pool: the dataset's own tensors when it gives tensors, else ``transform``."""
        if self.gives_tensors:
            return ModelInputs(None, {"inputs": f"the tensors {self.name} gives, unchanged"})
        return ModelInputs(transform)


def _content(picture: Image.Image | None, tensor: torch.Tensor | None) -> bytes:
    if tensor is not None:
        values = tensor.detach().cpu().contiguous()
        return hashlib.sha256(f"{values.dtype}{tuple(values.shape)}".encode() + values.numpy().tobytes()).digest()
    return hashlib.sha256(f"{picture.size}".encode() + picture.tobytes()).digest()


def _described(transform: Callable) -> dict:
    describe = getattr(transform, "describe", None)
    if callable(describe):
        return dict(describe())
    text = repr(transform)
    if " at 0x" in text:  # a function or an object without its own repr: its name, not where it lives in memory
        text = f"{getattr(transform, '__module__', '')}.{getattr(transform, '__qualname__', type(transform).__name__)}"
    return {"callable": text}


class ModelInputs:
    """Picture → model input for a run: the tensor a picture carries (``MODEL_INPUT``), else ``transform(picture)``.

    ``describe()`` is what ``meta.json`` records and the feature cache keys on: the transform's own
    ``describe()`` (an ``ImageTransform``), else its ``repr`` (a torchvision ``Compose`` lists its steps; a
    function is named by its module and name)."""

    def __init__(self, transform: Callable | None, description: dict | None = None):
        self.transform = transform
        self.description = description if description is not None else _described(transform)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        carried = getattr(image, "info", {}).get(MODEL_INPUT)
        if carried is not None:
            return carried
        if self.transform is None:
            raise ValueError("this picture carries no model input and no transform was given to make one")
        return self.transform(image)

    def describe(self) -> dict:
        """JSON-able: how pictures become inputs (module docstring)."""
        return dict(self.description)
