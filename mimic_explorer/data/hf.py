"""``hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL&caption=COL&id=COL]`` — a Hugging Face ``datasets`` dataset.

Why: most image datasets live on the Hugging Face Hub or were saved with ``datasets`` (CIFAR, Food-101,
ImageNet-1k, DataComp's metadata, LAION subsets); a pool should not have to be written out as files first.
What ``PATH_OR_NAME`` may be, in the order it is tried:

- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (``load_from_disk``, memory-mapped);
- a ``.parquet`` file or a glob of them (``Dataset.from_parquet``) or an ``.arrow`` file (``Dataset.from_file``);
- any other folder (``load_dataset(FOLDER)``: parquet, csv or image folders as ``datasets`` reads them);
- a Hub name such as ``cifar10`` or ``user/name``, for users with network access (``load_dataset``; never in the
  tests). Arrow copies that ``datasets`` makes go to the package's cache (``util.cache.hf_cache_dir``).

``:SPLIT`` picks a split of a dataset that has several; without it ``train`` is used, or the only split.

Columns: the image is the column whose feature is ``Image`` (or a binary column, or a struct with ``bytes``,
named with ``?image=``); the label a ``ClassLabel`` column (its names become the class names) or a column
named ``label``, or the one ``?label=`` names (a ``ClassLabel``, integers, or class names as text); without a
label, a caption from a string column named ``caption``, ``text``, ``txt`` or ``sentence`` (or the one
``?caption=`` names; a list of strings gives the first as the caption and all of them to ``all_captions``),
which makes an image-text pool; the id from ``?id=``, else a ``sample_id`` or ``uid`` column, else the row
index. Images are read undecoded (``Image(decode=False)``) and decoded by ``imageio.decode_image``, so an
undecodable one is a bad sample like a broken file; a row without an image, a label or a usable caption is a
bad sample found when the pool opens (``open_errors``). A named column that does not exist, an unknown split,
no image column, or ids that are missing or repeated are one-line errors naming what exists.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from mimic_explorer.data.captions import decode_caption
from mimic_explorer.data.errors import BadSample, BadSampleError, DataSourceError
from mimic_explorer.data.imageio import MAX_FILE_BYTES_ENV, max_file_bytes, read_file
from mimic_explorer.data.labels import implied_classes_message, too_many_implied
from mimic_explorer.data.source import Source, _preview
from mimic_explorer.util.cache import hf_cache_dir

#: the column roles ``?KEY=COLUMN`` may name
ROLES = ("image", "label", "caption", "id")
#: columns taken as the id, the label and the caption when the SPEC names none
ID_COLUMNS = ("sample_id", "uid")
LABEL_COLUMNS = ("label",)
CAPTION_COLUMNS = ("caption", "text", "txt", "sentence")
#: the split used when a dataset has several and the SPEC names none
DEFAULT_SPLIT = "train"
INSTALL_HINT = "pip install 'mimic-explorer[hf]'"
#: a Hub dataset name (``name`` or ``owner/name``): anything else that does not exist is a missing local path
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_FILE_SUFFIXES = (".parquet", ".pq", ".arrow")


@dataclass
class HfTarget:
    """What an ``hf:`` SPEC names: where the dataset is, which split, and the columns it names for each role."""

    location: str
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """``location[:split]``: how messages and the ``source`` column name the dataset."""
        return self.location + (f":{self.split}" if self.split else "")


def parse_hf_spec(rest: str, spec: str) -> HfTarget:
    """The ``PATH_OR_NAME[:SPLIT][?role=COLUMN&...]`` part of an ``hf:`` SPEC; ``DataSourceError`` for an
    unknown role or an empty name."""
    location, _, query = rest.partition("?")
    columns: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True) if query else []:
        if key not in ROLES:
            raise DataSourceError(f"{spec}: unknown column role {key!r}; use {', '.join(f'{r}=COLUMN' for r in ROLES)}")
        if not value:
            raise DataSourceError(f"{spec}: {key}= names no column")
        columns[key] = value
    split = None
    if not os.path.exists(os.path.expanduser(location)) and ":" in location:
        head, _, tail = location.rpartition(":")
        if head and tail and "/" not in tail:
            location, split = head, tail
    if not location:
        raise DataSourceError(f"{spec}: names no dataset; use hf:FOLDER, hf:FILE.parquet or hf:NAME[:SPLIT]")
    return HfTarget(location, split, columns)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataSourceError(f"hf: data needs the datasets library ({INSTALL_HINT})") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets):
    """``datasets``' progress bars off while a pool opens (the run prints its own progress)."""
    was_off = datasets.utils.logging.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _pick_split(found, target: HfTarget, spec: str):
    """The split the SPEC names (or ``train``, or the only one) of a ``DatasetDict``; a plain ``Dataset`` as is."""
    datasets = _datasets()
    if isinstance(found, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise DataSourceError(f"{spec}: a streaming (iterable) dataset has no random access; load it without streaming")
    if not isinstance(found, datasets.DatasetDict):
        if target.split:
            raise DataSourceError(f"{spec}: {target.location} holds one dataset without splits; drop :{target.split}")
        return found
    names = list(found.keys())
    split = target.split
    if split is None:
        if DEFAULT_SPLIT in found:
            split = DEFAULT_SPLIT
        elif len(names) == 1:
            split = names[0]
        else:
            raise DataSourceError(f"{spec}: the dataset has splits {', '.join(names)}; name one as hf:PATH:SPLIT")
    if split not in found:
        raise DataSourceError(f"{spec}: no split {split!r}; the dataset has {', '.join(names) or 'no splits'}")
    return found[split]


def load_hf_dataset(target: HfTarget, spec: str):
    """The ``datasets.Dataset`` an ``hf:`` SPEC names (module docstring), or ``DataSourceError`` saying why not."""
    datasets = _datasets()
    path = Path(target.location).expanduser()
    cache = str(hf_cache_dir())
    files = sorted(glob.glob(str(path))) if glob.has_magic(str(path)) else []
    try:
        with _quiet(datasets):
            if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
                found = datasets.load_from_disk(str(path))
            elif path.is_dir():
                found = datasets.load_dataset(str(path), cache_dir=cache)
            elif path.is_file() or files:
                files = files or [str(path)]
                suffixes = {Path(f).suffix.lower() for f in files}
                if suffixes <= {".parquet", ".pq"}:
                    found = datasets.Dataset.from_parquet(files, cache_dir=cache)
                elif suffixes == {".arrow"} and len(files) == 1:
                    found = datasets.Dataset.from_file(files[0])
                else:
                    raise DataSourceError(
                        f"{spec}: a file must be .parquet (one or a glob) or one .arrow file, got "
                        f"{', '.join(sorted(suffixes))}"
                    )
            elif glob.has_magic(str(path)):
                raise DataSourceError(f"{spec}: no file matches {path}")
            elif path.suffix.lower() in _FILE_SUFFIXES or not _HUB_NAME.fullmatch(target.location):
                raise DataSourceError(f"{spec}: {path} does not exist")
            else:
                found = datasets.load_dataset(target.location, split=target.split, cache_dir=cache)
    except DataSourceError:
        raise
    except ValueError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "split" in text.lower():
            raise DataSourceError(f"{spec}: {text}") from None
        raise DataSourceError(f"{spec}: cannot load {target.location}: {text}") from None
    except Exception as exc:  # noqa: BLE001 - any loader failure (a damaged folder, no network) is one line
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise DataSourceError(f"{spec}: cannot load {target.location} ({type(exc).__name__}: {text})") from None
    return _pick_split(found, target, spec)


def _kind_of(feature) -> str:
    """A feature as messages name it: ``Image``, ``ClassLabel``, ``Value(int64)``, ``List``…"""
    dtype = getattr(feature, "dtype", None)
    name = type(feature).__name__
    return f"{name}({dtype})" if name == "Value" else name


def _columns_text(features) -> str:
    return ", ".join(f"{name} ({_kind_of(f)})" for name, f in features.items()) or "no columns"


def _is_string(feature) -> bool:
    return type(feature).__name__ == "Value" and feature.dtype in ("string", "large_string")


def _is_integer(feature) -> bool:
    return type(feature).__name__ == "Value" and "int" in str(feature.dtype)


def _is_text(feature) -> bool:
    """A caption column: text, or a list of texts."""
    return _is_string(feature) or _string_list(feature)


def _string_list(feature) -> bool:
    """A list of strings (several captions per image)."""
    inner = getattr(feature, "feature", None)
    return type(feature).__name__ in ("List", "Sequence", "LargeList") and inner is not None and _is_string(inner)


class HfSource(Source):
    """``hf:…``: rows of a ``datasets.Dataset`` as a pool (see the module): labelled when it has a label column, else
    image-text pairs from a caption column. Raises ``DataSourceError`` naming the columns it has when one is missing.
    """

    kind = "hf"

    def __init__(self, rest: str, spec: str | None = None):
        spec = spec or f"hf:{rest}"
        try:
            self.max_bytes = max_file_bytes()
        except DataSourceError as exc:
            raise DataSourceError(f"{spec}: {exc}") from None
        self.target = parse_hf_spec(rest, spec)
        dataset = load_hf_dataset(self.target, spec)
        features = dataset.features
        named = self.target.columns
        for role, column in named.items():
            if column not in features:
                raise DataSourceError(f"{spec}: no column {column!r} ({role}=); columns: {_columns_text(features)}")
        if "label" in named and "caption" in named:
            raise DataSourceError(
                f"{spec}: name a label or a caption column, not both (a pool is labelled images or image-text pairs)"
            )
        self.image_column = self._image_column(features, spec)
        self.id_column = named.get("id") or next((c for c in ID_COLUMNS if c in features), None)
        self.label_column = None if "caption" in named else self._label_column(features, spec)
        self.caption_column = None
        if self.label_column is None:
            textual = [c for c in CAPTION_COLUMNS if c in features and _is_text(features[c])]
            self.caption_column = named.get("caption") or next(iter(textual), None)
        if self.label_column is None and self.caption_column is None:
            raise DataSourceError(
                f"{spec}: no label column (a ClassLabel or one named label) and no caption column "
                f"({'/'.join(CAPTION_COLUMNS)}); name one with ?label=COLUMN or ?caption=COLUMN; columns: "
                f"{_columns_text(features)}"
            )
        arrow = dataset.with_format("arrow")
        rows = len(dataset)
        if rows == 0:
            raise DataSourceError(f"{spec}: the dataset has no rows")
        ids = self._ids(arrow, rows, spec)
        bad: dict[int, str] = {}
        present = self._image_present(arrow)
        for k in np.flatnonzero(~present):
            bad.setdefault(int(k), "no image in this row")
        self._image_sizes = self._byte_sizes(arrow)
        if self.label_column is not None:
            labels, class_names = self._labels(arrow, features, ids, spec, bad)
            captions = None
            self._all_captions = None
        else:
            labels, class_names = None, []
            captions, self._all_captions = self._captions(arrow, features, spec, bad)
        good = np.asarray([k not in bad for k in range(rows)], dtype=bool)
        open_errors = [BadSample(ids[k], f"{self.target.display}#{k}", bad[k]) for k in sorted(bad)]
        if not good.any():
            raise DataSourceError(f"{spec}: no row is usable ({_preview(b.reason for b in open_errors)})")
        self.rows = np.flatnonzero(good)
        images = dataset.select_columns([self.image_column])
        if type(features[self.image_column]).__name__ == "Image":
            images = images.cast_column(self.image_column, _datasets().Image(decode=False))
        self._images = images
        super().__init__(
            spec,
            ids[good],
            None if labels is None else labels[good],
            class_names,
            open_errors=open_errors,
            captions=None if captions is None else captions[good],
        )

    # --- opening ---------------------------------------------------------------------------------
    def _image_column(self, features, spec: str) -> str:
        named = self.target.columns.get("image")
        if named is not None:
            feature = features[named]
            kind = type(feature).__name__
            binary = kind == "Value" and feature.dtype in ("binary", "large_binary")
            struct = isinstance(feature, dict) and "bytes" in feature
            if kind != "Image" and not binary and not struct:
                raise DataSourceError(
                    f"{spec}: image={named} is a {_kind_of(feature)} column; an image column is an Image feature, "
                    "binary, or a struct with bytes"
                )
            return named
        found = [name for name, f in features.items() if type(f).__name__ == "Image"]
        if len(found) == 1:
            return found[0]
        if found:
            raise DataSourceError(f"{spec}: several Image columns ({', '.join(found)}); name one with ?image=COLUMN")
        raise DataSourceError(
            f"{spec}: no image column (no Image feature); name one with ?image=COLUMN; "
            f"columns: {_columns_text(features)}"
        )

    def _label_column(self, features, spec: str) -> str | None:
        named = self.target.columns.get("label")
        if named is not None:
            return named
        class_labels = [name for name, f in features.items() if type(f).__name__ == "ClassLabel"]
        if len(class_labels) == 1:
            return class_labels[0]
        if class_labels:
            if "label" in class_labels:
                return "label"
            raise DataSourceError(
                f"{spec}: several ClassLabel columns ({', '.join(class_labels)}); name one with ?label=COLUMN"
            )
        return next((c for c in LABEL_COLUMNS if c in features), None)

    def _ids(self, arrow, rows: int, spec: str) -> np.ndarray:
        if self.id_column is None:
            return np.asarray([str(k) for k in range(rows)], dtype=object)
        values = arrow[self.id_column].to_pylist()
        empty = [k for k, v in enumerate(values) if v is None or not str(v).strip()]
        if empty:
            raise DataSourceError(
                f"{spec}: id column {self.id_column!r} is empty in {len(empty)} row(s) (first: row {empty[0]}); every "
                "sample needs an id"
            )
        return np.asarray([str(v).strip() for v in values], dtype=object)

    def _image_present(self, arrow) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        column = arrow[self.image_column]
        present = pc.invert(pc.is_null(column))
        if pa.types.is_struct(column.type):
            names = {column.type.field(k).name for k in range(column.type.num_fields)}
            inner = [
                pc.invert(pc.is_null(pc.struct_field(column, name))) for name in ("bytes", "path") if name in names
            ]
            if inner:
                any_inner = inner[0] if len(inner) == 1 else pc.or_(inner[0], inner[1])
                present = pc.and_(present, pc.fill_null(any_inner, False))
        return np.asarray(present.to_numpy(zero_copy_only=False), dtype=bool)

    def _byte_sizes(self, arrow) -> np.ndarray:
        """Each row's encoded image size in bytes (-1 when the image is a path or missing), from the Arrow
        offsets alone (no image is read)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = arrow[self.image_column]
        if pa.types.is_struct(column.type):
            names = [column.type.field(k).name for k in range(column.type.num_fields)]
            if "bytes" not in names:
                return np.full(len(column), -1, dtype=np.int64)
            column = pc.struct_field(column, "bytes")
        sizes = pc.fill_null(pc.binary_length(column), -1)
        return np.asarray(sizes.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _labels(self, arrow, features, ids: np.ndarray, spec: str, bad: dict[int, str]):
        """(labels, class names): a ClassLabel's values and names; integers with classes ``0..max``; text as
        sorted class names. A missing label (null, or ClassLabel's -1) is a bad sample."""
        column = self.label_column
        feature = features[column]
        values = arrow[column].to_pylist()
        for k, v in enumerate(values):
            unset = not isinstance(v, str) and v == -1 and type(feature).__name__ == "ClassLabel"
            if v is None or unset or (isinstance(v, str) and not v.strip()):
                bad.setdefault(k, f"no label ({column} is empty)")
        usable = [k for k in range(len(values)) if k not in bad]
        if type(feature).__name__ == "ClassLabel":
            names = list(feature.names)
            labels = np.asarray([-1 if v is None else int(v) for v in values], dtype=np.int64)
            outside = [k for k in usable if not 0 <= labels[k] < len(names)]
            if outside:
                k = outside[0]
                raise DataSourceError(
                    f"{spec}: {column} {labels[k]} in row {k} (sample {ids[k]!r}) is outside its ClassLabel's "
                    f"{len(names)} names ({len(outside)} row(s))"
                )
            return labels, names
        if _is_integer(feature):
            labels = np.asarray([-1 if v is None else int(v) for v in values], dtype=np.int64)
            if any(labels[k] < 0 for k in usable):
                k = next(k for k in usable if labels[k] < 0)
                raise DataSourceError(f"{spec}: {column} {labels[k]} in row {k} (sample {ids[k]!r}) is negative")
            top_k = max(usable, key=lambda k: labels[k]) if usable else 0
            top = int(labels[top_k]) if usable else 0
            if too_many_implied(top, len(usable)):
                raise DataSourceError(
                    f"{spec}: "
                    + implied_classes_message(
                        str(top), f"in row {top_k} (sample {ids[top_k]!r})", top, len(usable), "as a ClassLabel feature"
                    )
                )
            return labels, [str(c) for c in range(top + 1)]
        if _is_string(feature):
            texts = [None if v is None else str(v).strip() for v in values]
            names = sorted({texts[k] for k in usable})
            lookup = {name: c for c, name in enumerate(names)}
            return np.asarray([lookup.get(t, -1) for t in texts], dtype=np.int64), names
        raise DataSourceError(
            f"{spec}: label column {column!r} is a {_kind_of(feature)}; a label is a ClassLabel, an integer or a "
            "class name"
        )

    def _captions(self, arrow, features, spec: str, bad: dict[int, str]):
        """(captions, every caption of each row or None): a string column, or the first usable text of a list."""
        column = self.caption_column
        feature = features[column]
        values = arrow[column].to_pylist()
        listed = _string_list(feature)
        if not listed and not _is_string(feature):
            raise DataSourceError(
                f"{spec}: caption column {column!r} is a {_kind_of(feature)}; a caption is text or a list of texts"
            )
        captions: list[str] = []
        every: list[list[str]] | None = [] if listed else None
        for k, value in enumerate(values):
            texts = [decode_caption(v) for v in (value or [])] if listed else [decode_caption(value)]
            usable = [text for text, _ in texts if text is not None]
            if not usable:
                reason = texts[0][1] if texts else "no caption"
                bad.setdefault(k, reason)
            captions.append(usable[0] if usable else "")
            if every is not None:
                every.append(list(dict.fromkeys(usable)))
        return np.asarray(captions, dtype=object), every

    # --- random access ---------------------------------------------------------------------------
    def source_of(self, i: int) -> str:
        """``LOCATION[:SPLIT]#ROW``: the dataset and the row of sample ``i``."""
        return f"{self.target.display}#{int(self.rows[int(i)])}"

    def read_bytes(self, i: int) -> bytes:
        """The row's encoded image: its bytes, or the file its ``path`` names (read as image files are, under the
        size cap); a missing or oversized image is a bad sample."""
        row = int(self.rows[int(i)])
        size = int(self._image_sizes[row])
        if size > self.max_bytes:
            raise BadSampleError(
                BadSample(
                    self.sample_ids[i],
                    self.source_of(i),
                    f"image too large ({size:,} bytes; the cap is {self.max_bytes:,}, set {MAX_FILE_BYTES_ENV} to "
                    "change it)",
                )
            )
        value = self._images[row][self.image_column]
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                return read_file(path, self.sample_ids[i], self.max_bytes)
            value = data
        if value is None:
            raise BadSampleError(BadSample(self.sample_ids[i], self.source_of(i), "no image in this row"))
        return bytes(value)

    def _sizes_now(self) -> np.ndarray:
        return self._image_sizes[self.rows]

    def all_captions(self, i: int) -> list[str]:
        """The pair's caption, then the other texts of its caption list (when the caption column is a list)."""
        own = super().all_captions(i)
        if not own or self._all_captions is None:
            return own
        return own + [t for t in self._all_captions[int(self.rows[int(i)])] if t not in own]

    def describe(self) -> dict:
        """``Source.describe`` with where the dataset is and which column played each role."""
        return {
            **super().describe(),
            "hf": {
                "location": self.target.location,
                "split": self.target.split,
                "columns": {
                    "image": self.image_column,
                    "label": self.label_column,
                    "caption": self.caption_column,
                    "id": self.id_column,
                },
            },
        }
