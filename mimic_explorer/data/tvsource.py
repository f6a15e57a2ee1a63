"""``torchvision:NAME[/SPLIT]:ROOT`` — a torchvision dataset already on disk, never downloaded.

Why: many users have CIFAR/MNIST/ImageFolder trees from earlier work; we open them with
``download=False`` and turn torchvision's "not found" into a message that says where the files must be.
``SPLIT`` picks ``train=False`` for ``test`` on datasets with a ``train`` flag, or is passed as
``split=`` to datasets that take one; the default is the training split.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.imageio import array_to_rgb, check_file, max_file_bytes, to_rgb
from mimic_explorer.data.source import Source


def _dataset_classes() -> dict[str, type]:
    import torchvision.datasets as tvd
    from torch.utils.data import Dataset

    return {
        name: obj
        for name, obj in vars(tvd).items()
        if inspect.isclass(obj) and issubclass(obj, Dataset) and not name.startswith("_")
    }


def _resolve_dataset_class(name: str, spec: str) -> type:
    classes = _dataset_classes()
    lowered = {k.lower(): k for k in classes}
    if name.lower() not in lowered:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(classes))}"
        raise DataSourceError(f"{spec}: torchvision has no dataset named {name!r}{hint}")
    return classes[lowered[name.lower()]]


def _labels_of(dataset) -> np.ndarray | None:
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            try:
                array = np.asarray(values.tolist() if hasattr(values, "tolist") else list(values), dtype=np.int64)
            except (TypeError, ValueError):
                continue
            if array.ndim == 1 and len(array) == len(dataset):
                return array
    samples = getattr(dataset, "samples", None) or getattr(dataset, "_samples", None)
    if samples is not None and len(samples) == len(dataset):
        try:
            return np.asarray([int(s[1]) for s in samples], dtype=np.int64)
        except (TypeError, ValueError, IndexError):
            return None
    return None


def _paths_of(dataset) -> list[str] | None:
    samples = getattr(dataset, "samples", None) or getattr(dataset, "_samples", None)
    if samples is not None and len(samples) == len(dataset):
        try:
            return [str(s[0]) for s in samples]
        except (TypeError, IndexError):
            return None
    files = getattr(dataset, "_image_files", None)
    if files is not None and len(files) == len(dataset):
        return [str(f) for f in files]
    return None


class TorchvisionSource(Source):
    """``torchvision:NAME[/SPLIT]:ROOT``: a torchvision dataset already on disk, opened with ``download=False`` (see the
    module). Raises ``DataSourceError`` saying where the files must be."""

    kind = "torchvision"

    def __init__(self, name: str, root: str | os.PathLike, split: str | None = None, spec: str | None = None):
        spec = spec or f"torchvision:{name}{'/' + split if split else ''}:{root}"
        root = Path(root).expanduser()
        if not root.exists():
            raise DataSourceError(f"{spec}: root folder {root} does not exist (downloads are disabled)")
        cls = _resolve_dataset_class(name, spec)
        params = inspect.signature(cls).parameters
        if "root" not in params:
            raise DataSourceError(f"{spec}: torchvision.datasets.{cls.__name__} does not read files from a root folder")
        kwargs: dict = {}
        if "download" in params:
            kwargs["download"] = False
        if "train" in params:
            kwargs["train"] = (split or "train") not in ("test", "val", "valid", "validation")
        elif "split" in params:
            kwargs["split"] = split or "train"
        elif split:
            raise DataSourceError(f"{spec}: torchvision.datasets.{cls.__name__} takes no split")
        try:
            self.dataset = cls(str(root.resolve()), **kwargs)
        except ImportError as exc:
            raise DataSourceError(
                f"{spec}: torchvision.datasets.{cls.__name__} needs a package that is missing: {exc}"
            ) from exc
        except Exception as exc:  # torchvision raises RuntimeError/FileNotFoundError/…
            raise DataSourceError(
                f"{spec}: torchvision.datasets.{cls.__name__} is not on disk under {root} "
                f"(downloads are disabled; place the dataset's files there first). torchvision said: {exc}"
            ) from exc
        self.name, self.split, self.root = cls.__name__, split or "train", root.resolve()
        if len(self.dataset) == 0:
            raise DataSourceError(f"{spec}: the dataset under {root} is empty")
        labels = _labels_of(self.dataset)
        if labels is None:  # last resort: ask every item (decodes images; slow but correct)
            labels = np.asarray([int(self.dataset[i][1]) for i in range(len(self.dataset))], dtype=np.int64)
        classes = getattr(self.dataset, "classes", None)
        if classes is None or len(classes) <= int(labels.max()):
            classes = [str(c) for c in range(int(labels.max()) + 1)]
        self._paths = _paths_of(self.dataset)
        if self._paths is not None and all(p.startswith(str(self.root) + os.sep) for p in self._paths[:1000]):
            prefix = len(str(self.root)) + 1
            ids = [p[prefix:].replace(os.sep, "/") for p in self._paths]
        else:
            width = len(str(len(self.dataset) - 1))
            ids = [f"{self.name.lower()}-{self.split}-{i:0{width}d}" for i in range(len(self.dataset))]
        self.max_bytes = max_file_bytes()
        self._check_paths = bool(self._paths) and os.path.exists(self._paths[0])  # real files, not other records
        super().__init__(spec, ids, labels, [str(c) for c in classes])

    def source_of(self, i: int) -> str:
        """The image file's path when the dataset keeps files, else ``torchvision:NAME/SPLIT:ROOT#i``."""
        if self._paths is not None:
            return self._paths[i]
        return f"torchvision:{self.name}/{self.split}:{self.root}#{i}"

    def _load(self, i: int) -> Image.Image:
        if self._check_paths:  # torchvision opens the file itself: refuse a FIFO, device or huge file first
            check_file(self._paths[i], self.sample_ids[i], self.max_bytes)
        image = self.dataset[i][0]
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if hasattr(image, "numpy"):  # a tensor (C, H, W)
            array = image.numpy()
            if array.ndim == 3 and array.shape[0] in (1, 3, 4):
                array = np.moveaxis(array, 0, -1)
            if array.dtype != np.uint8:
                array = np.round(array * 255.0) if array.max() <= 1.0 else array
            return array_to_rgb(array)
        return array_to_rgb(np.asarray(image))

    def _sizes_now(self) -> np.ndarray:
        if self._paths is not None:
            sizes = []
            for path in self._paths:
                try:
                    sizes.append(os.stat(path).st_size)
                except OSError:
                    sizes.append(-1)
            return np.asarray(sizes, dtype=np.int64)
        data = getattr(self.dataset, "data", None)
        if data is not None and hasattr(data, "shape") and len(data) == len(self):
            return np.full(len(self), int(np.prod(data.shape[1:])), dtype=np.int64)
        return super()._sizes_now()
