"""Load weights safely and partially, and say exactly what was loaded.

Why: an init or reference checkpoint decides whether mimic scores mean anything (model and reference
must share a feature basis: docs/ARCHITECTURE.md), so silently half-loading one is worse than
failing. Rules:

- ``torch.load(weights_only=True)``: a pickled whole ``nn.Module`` (arbitrary code on load) is refused
  unless the caller passes ``trust_pickle=True``; ``.safetensors`` files are read without pickle at all;
- the state dict may be wrapped (``{"state_dict": …}``, ``{"model": …}``) or prefixed (``module.`` from
  DDP, ``_orig_mod.`` from ``torch.compile``);
- when the classifier head's shape differs (a 1000-class backbone for a 10-class pool) the head is
  skipped and keeps its initialisation: the backbone is loaded, the report says so;
- any other tensor that is missing, extra or of another shape is an error naming the first one
  (``strict=False`` turns missing/extra into report entries; a shape mismatch outside the head is
  always an error).
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mimic_explorer.models.heads import find_head
from mimic_explorer.util.processes import process_alive

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params")
_PREFIXES = ("module.", "_orig_mod.")
#: weight files a Hugging Face-style model folder may hold, in order of preference
FOLDER_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit the architecture."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: tensors loaded, skipped (with reason), missing and unexpected."""

    path: str
    head: str | None
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def head_loaded(self) -> bool:
        """True when the classifier head came from the checkpoint too (not kept at its init)."""
        return self.head is not None and not any(n.startswith(f"{self.head}.") for n, _ in self.skipped)

    def summary(self) -> str:
        """One line for the run log: how many tensors were loaded, which were skipped and why, which are missing or
        unused."""
        parts = [f"loaded {len(self.loaded)} tensor(s) from {self.path}"]
        if self.skipped:
            parts.append("skipped " + "; ".join(f"{n} ({why})" for n, why in self.skipped))
        if self.missing:
            parts.append(
                f"{len(self.missing)} model tensor(s) not in the checkpoint kept their init: "
                f"{', '.join(self.missing[:5])}"
            )
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint tensor(s) unused: {', '.join(self.unexpected[:5])}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """The report as JSON values, for ``meta.json``."""
        out = asdict(self)
        out["skipped"] = [{"name": n, "reason": r} for n, r in self.skipped]
        return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, with the ``safetensors`` package when installed (it comes with the
    ``timm`` extra), else with the built-in reader below: both read tensors, never pickled code."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        return _read_safetensors_builtin(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid .safetensors file ({exc})") from exc


def _read_safetensors_builtin(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file: 8-byte header length, JSON header, raw little-endian tensor bytes."""
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except Exception as exc:
        raise CheckpointError(f"{path} is not a valid .safetensors file ({exc})") from exc
    body = memoryview(data)[8 + length :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype) if end > start else torch.zeros(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"])
    return out


def _extract_state(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module) or (isinstance(inner, Mapping) and inner):
                try:
                    return _extract_state(inner, path)
                except CheckpointError:
                    continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 4:  # a state dict with a few extra entries (epoch, …)
            return tensors
        raise CheckpointError(
            f"{path} holds a dict with keys {', '.join(map(str, list(obj)[:8]))} but no state dict of tensors"
        )
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or nn.Module")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def folder_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a Hugging Face-style model folder (``model.safetensors`` + ``config.json``)."""
    folder = Path(folder)
    for name in FOLDER_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    held = sorted(p.name for p in folder.iterdir())
    sharded = (
        " (sharded weights, model.safetensors.index.json, are not supported: merge them into one file)"
        if ("model.safetensors.index.json" in held)
        else ""
    )
    raise CheckpointError(
        f"{folder} is a folder without {' or '.join(FOLDER_WEIGHT_FILES)}{sharded}; a model folder holds "
        f"model.safetensors and config.json. It holds: {', '.join(held[:10]) or 'nothing'}"
    )


def is_pickle_refusal(exc: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed because the file holds pickled Python objects
    (code that would run on loading), rather than because it is damaged."""
    return "Unsupported global" in str(exc)  # a reference to code; damaged bytes say "Unsupported operand"


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict (CPU tensors), read without running pickled code unless trusted.
    A folder is read as a Hugging Face-style model folder (its ``model.safetensors``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        path = folder_weights(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if path.suffix == ".safetensors":
        return _strip_prefixes(_read_safetensors(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        text = str(exc)
        unsafe = isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text or "weights_only" in text
        if not unsafe:
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint: {type(exc).__name__}: "
                f"{text.splitlines()[0] if text else ''}"
            ) from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{path} contains pickled Python objects (for example a whole nn.Module saved with "
                "torch.save(model)); loading it could run arbitrary code, so it is refused. Re-save it as "
                "torch.save(model.state_dict(), path), or pass trust_pickle=True (CLI: --trust-checkpoint) "
                "if you trust where the file came from."
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(f"{path} could not be unpickled: {type(exc2).__name__}: {exc2}") from exc2
    except Exception as exc:  # zip errors, EOF, garbage
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(exc).__name__}: {exc}") from exc
    return _strip_prefixes(_extract_state(obj, path))


def _head_name(model: nn.Module, head: str | None) -> str | None:
    if head is not None:
        return head
    try:
        return find_head(model)[0]
    except ValueError:
        return None


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    trust_pickle: bool = False,
    *,
    head: str | None = None,
    strict: bool = True,
    ignore: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``path`` into ``model`` in place and return a ``LoadReport``.

    ``head`` is the classifier's module name (found automatically: the last ``nn.Linear``). Its
    tensors are skipped, keeping their init, when absent from the checkpoint or of another shape.
    ``ignore`` lists module prefixes whose checkpoint tensors are set aside on purpose (reported as
    skipped), e.g. the auxiliary heads of torchvision's Inception weights, which scoring never uses.
    Raises ``CheckpointError`` naming the first tensor that does not fit.
    """
    state = read_state_dict(path, trust_pickle=trust_pickle)
    head = _head_name(model, head)
    head_prefix = f"{head}." if head else None
    report = LoadReport(str(path), head)
    for prefix in ignore:
        for name in [k for k in state if k.startswith(f"{prefix}.")]:
            del state[name]
            report.skipped.append((name, f"{prefix} is not part of this model; ignored"))
    target = model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for name, tensor in target.items():
        in_head = head_prefix is not None and name.startswith(head_prefix)
        if name not in state:
            if in_head:
                report.skipped.append((name, "not in the checkpoint; head kept at its initial values"))
            elif name.endswith("num_batches_tracked"):
                report.missing.append(name)
            else:
                report.missing.append(name)
                problems.append(f"{name} {tuple(tensor.shape)} is missing from the checkpoint")
            continue
        source = state[name]
        if tuple(source.shape) != tuple(tensor.shape):
            if in_head:
                report.skipped.append(
                    (
                        name,
                        (
                            f"head shape differs: checkpoint {tuple(source.shape)} vs model {tuple(tensor.shape)}; "
                            "kept at its initial values"
                        ),
                    )
                )
                continue
            raise CheckpointError(
                f"checkpoint {path} does not fit {type(model).__name__}: first mismatched tensor {name}: "
                f"checkpoint {tuple(source.shape)} vs model {tuple(tensor.shape)}"
            )
        chosen[name] = source
        report.loaded.append(name)
    report.unexpected = [k for k in state if k not in target]
    if strict:
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not fit {type(model).__name__}: first mismatched tensor {problems[0]} "
                f"({len(problems)} model tensor(s) missing, {len(report.unexpected)} checkpoint tensor(s) unused; "
                "is it for another architecture? strict=False loads what matches)"
            )
        if report.unexpected:
            first = report.unexpected[0]
            raise CheckpointError(
                f"checkpoint {path} does not fit {type(model).__name__}: first mismatched tensor {first} "
                f"{tuple(state[first].shape)} has no counterpart in the model ({len(report.unexpected)} unused "
                "tensor(s) in all)"
            )
    if not chosen:
        raise CheckpointError(
            f"checkpoint {path} shares no tensor with {type(model).__name__}; is it for another architecture?"
        )
    model.load_state_dict(chosen, strict=False)
    return report


def save_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save a state dict (never a pickled module) atomically: temp file, then rename. A path ending in
    ``.safetensors`` is written in that format (needs the ``safetensors`` package: the ``timm`` extra)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    state = {k: v.detach().cpu() for k, v in state.items()}
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise CheckpointError(
                    f'writing {path} needs the safetensors package: pip install -e ".[timm]" (or save to a .pt path)'
                ) from None
            save_file({k: v.contiguous().clone() for k, v in state.items()}, str(tmp))  # clone: no shared storage
        else:
            torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` that a writer killed while saving left (its process gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
