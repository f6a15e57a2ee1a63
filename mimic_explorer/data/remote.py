"""Remote WebDataset shards: ``http(s)://`` URLs, other fsspec URLs (``s3://``, ``gs://``, …) and ``pipe:COMMAND``
(the command's standard output is the shard, as in ``webdataset``), with brace expansion as for local patterns.

Why each shard is fetched whole into a local cache file, once, and then indexed like a local shard: every
reader of a pool needs random access. Training shuffles every epoch across shards, a killed run resumes from
its first missing chunk, the scorer's batches and the app's thumbnails name samples by position, and the shard
index (``data.wds``) is a list of byte offsets. A sequential stream gives none of this, and holding a shard in
memory would make memory grow with the shard. Streaming to a file keeps memory at one 1 MiB block per fetch
whatever the shard's size; the disk holds the pool once (``$MIMIC_EXPLORER_CACHE`` moves it to a large disk),
shared by every later run, which then opens without a network round trip.

A shard is complete only when every byte the server announced arrived (``Content-Length``, or the total of a
``Content-Range``), an fsspec file's size was read, or the command exited with status 0. It is written under a
temporary name and renamed into place only then, with a small ``.json`` beside it recording its source and
size, so a shard received in part is never taken for a whole one, by this process or any later one. A dropped
connection or a server error is retried (``$MIMIC_EXPLORER_FETCH_RETRIES`` attempts in all, default 3; an HTTP
retry resumes with a ``Range`` request when the server allows it); after the last attempt the error names the
shard, the cause and how many bytes arrived. A missing file (HTTP 404, no such key) is not retried. Concurrent
processes (torchrun ranks) fetch a shard once: the first holds a lock, the others wait and then reuse its file.

A fetched shard is reused as it is: published shards do not change. To fetch again, delete
``remote_shards/`` in the cache (``util.cache.remote_shard_dir``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.shards import expand_braces
from mimic_explorer.util.cache import remote_shard_dir

PIPE = "pipe:"
RETRIES_ENV = "MIMIC_EXPLORER_FETCH_RETRIES"
DEFAULT_ATTEMPTS = 3
#: seconds a socket may wait for the next bytes before the attempt counts as a dropped connection
TIMEOUT_S = 60.0
#: seconds before attempt k + 1 is ``BACKOFF_S * k`` (short: a dropped connection is usually over at once)
BACKOFF_S = 0.5
BLOCK = 1 << 20
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: fsspec filesystems that need a package of their own, and the extra that brings it
EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def is_remote(pattern: str) -> bool:
    """Whether a ``wds:`` pattern names remote shards (a URL other than ``file://``, or ``pipe:COMMAND``)."""
    if pattern.startswith(PIPE):
        return True
    match = _URL.match(pattern)
    return bool(match) and match.group(1).lower() != "file"


@dataclass(frozen=True)
class FetchedShard:
    """A remote shard: how the pattern names it (URL or ``pipe:COMMAND``) and its complete local copy."""

    name: str
    path: Path


class _Attempt(Exception):
    """One attempt failed: why, the bytes received so far and the bytes expected (None when unknown);
    ``final``: retrying cannot help (the file does not exist)."""

    def __init__(self, reason: str, received: int = 0, expected: int | None = None, final: bool = False):
        super().__init__(reason)
        self.reason, self.received, self.expected, self.final = reason, received, expected, final


def attempts() -> int:
    """``$MIMIC_EXPLORER_FETCH_RETRIES`` (attempts in all, at least 1), else ``DEFAULT_ATTEMPTS``."""
    raw = os.environ.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_ATTEMPTS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DataSourceError(f"{RETRIES_ENV}={raw!r} is not a whole number of attempts >= 1")
    return value


def remote_names(pattern: str) -> list[str]:
    """Every shard a remote pattern names, braces expanded (for ``pipe:`` in the command), in order, once each."""
    if pattern.startswith(PIPE):
        names = [PIPE + command for command in expand_braces(pattern[len(PIPE) :])]
    else:
        names = expand_braces(pattern)
    return list(dict.fromkeys(names))


def fetch_shards(pattern: str, spec: str, cache: Path | None = None) -> list[FetchedShard]:
    """Each shard a remote pattern names, fetched into the cache unless already there (module docstring).

    Raises ``DataSourceError`` naming the shard, the cause and the bytes received when one cannot be fetched."""
    cache = remote_shard_dir() if cache is None else Path(cache)
    tries = attempts()
    return [FetchedShard(name, fetch(name, spec, cache, tries)) for name in remote_names(pattern)]


def beside(name: str, file_name: str) -> str | None:
    """The URL of ``file_name`` in the folder of shard URL ``name`` (None for ``pipe:``, which has no folder)."""
    if name.startswith(PIPE):
        return None
    head, sep, _ = name.rstrip("/").rpartition("/")
    return f"{head}/{file_name}" if sep else None


def fetch_optional(name: str | None, spec: str, cache: Path | None = None) -> Path | None:
    """A small file published beside the shards (``classes.txt``, DataComp's ``.parquet``), or None when the server
    has no such file (remembered in the cache, so it is asked for once); any other failure is an error as for a
    shard."""
    if name is None:
        return None
    cache = remote_shard_dir() if cache is None else Path(cache)
    absent = _folder(cache, name) / ".absent"
    if absent.is_file():  # asked before: a pool of many shards asks once, not at every open
        return None
    try:
        return fetch(name, spec, cache, attempts())
    except _Missing:
        absent.parent.mkdir(parents=True, exist_ok=True)
        absent.touch()
        return None


class _Missing(DataSourceError):
    """The server says the file does not exist."""


def _folder(cache: Path, name: str) -> Path:
    """The cache folder of one remote file (named by the hash of its URL or command)."""
    return cache / hashlib.sha256(name.encode()).hexdigest()[:24]


def _local_name(name: str) -> str:
    if name.startswith(PIPE):
        return "pipe.tar"
    base = name.split("?", 1)[0].rstrip("/").rpartition("/")[2]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:100]
    return cleaned or "shard.tar"


def fetch(name: str, spec: str, cache: Path, tries: int) -> Path:
    """The complete local copy of one remote file, fetched now unless a complete one is already cached."""
    folder = _folder(cache, name)
    target = folder / _local_name(name)
    if _complete(target, name):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / "fetching.lock"):
        if _complete(target, name):  # another process fetched it while this one waited
            return target
        return _fetch_locked(name, spec, target, tries)


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _complete(target: Path, name: str) -> bool:
    """A cached copy with its record, of the size recorded: the rename after a verified fetch made both."""
    try:
        record = json.loads(_sidecar(target).read_text())
        return record.get("source") == name and target.stat().st_size == record.get("bytes")
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_locked(name: str, spec: str, target: Path, tries: int) -> Path:
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    last: _Attempt | None = None
    try:
        for attempt in range(1, tries + 1):
            try:
                received = _transfer(name, tmp, resume=last is not None)
                break
            except _Attempt as exc:
                last = exc
                if exc.final:
                    raise _Missing(f"{spec}: cannot fetch {name}: {exc.reason}") from None
                if attempt < tries:
                    time.sleep(BACKOFF_S * attempt)
        else:
            expected = f" of {last.expected:,}" if last.expected is not None else ""
            raise DataSourceError(
                f"{spec}: cannot fetch shard {name}: {last.reason}; {last.received:,}{expected} bytes received, "
                f"after {tries} attempt(s) (set {RETRIES_ENV} to try more often)"
            )
        os.replace(tmp, target)
        _sidecar(target).write_text(json.dumps({"source": name, "bytes": received, "fetched": time.time()}))
        return target
    finally:
        tmp.unlink(missing_ok=True)


def _transfer(name: str, tmp: Path, resume: bool) -> int:
    """One attempt: fill ``tmp`` with the whole file and return its size, or raise ``_Attempt``."""
    if name.startswith(PIPE):
        return _from_command(name[len(PIPE) :], tmp)
    scheme = _URL.match(name).group(1).lower()
    if scheme in ("http", "https"):
        return _from_http(name, tmp, resume)
    return _from_fsspec(name, scheme, tmp)


def _copy(source, handle, received: int, expected: int | None) -> int:
    """Blocks of ``source`` into ``handle`` until the end; a dropped connection raises ``_Attempt``."""
    while True:
        try:
            block = source.read(BLOCK)
        except (OSError, EOFError, ValueError) as exc:  # a reset connection, a timeout
            raise _Attempt(f"the connection dropped ({type(exc).__name__}: {exc})", received, expected) from None
        except Exception as exc:  # noqa: BLE001 - http.client's IncompleteRead, fsspec's errors: one failed attempt
            raise _Attempt(f"the transfer failed ({type(exc).__name__}: {exc})", received, expected) from None
        if not block:
            return received
        handle.write(block)
        received += len(block)


def _from_http(url: str, tmp: Path, resume: bool) -> int:
    have = tmp.stat().st_size if resume and tmp.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise _Attempt(f"HTTP {exc.code} {exc.reason}", final=True) from None
        if exc.code == 416 and have:  # the range starts at the end: begin again
            tmp.unlink(missing_ok=True)
            raise _Attempt(f"HTTP {exc.code} {exc.reason}", have) from None
        raise _Attempt(f"HTTP {exc.code} {exc.reason}", have) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Attempt(f"cannot connect ({reason})", have) from None
    with response:
        partial = response.status == 206
        length = response.headers.get("Content-Length")
        expected = None
        total = re.search(r"/(\d+)$", response.headers.get("Content-Range", "") or "")
        if partial and total:
            expected = int(total.group(1))
        elif length is not None:
            expected = int(length) + (have if partial else 0)
        start = have if partial else 0
        with open(tmp, "r+b" if partial and tmp.exists() else "wb") as handle:
            handle.seek(start)
            handle.truncate()
            received = _copy(response, handle, start, expected)
    if expected is not None and received != expected:
        raise _Attempt("the connection closed before the end of the file", received, expected)
    return received


def _from_fsspec(url: str, scheme: str, tmp: Path) -> int:
    try:
        import fsspec
    except ImportError:
        raise _Attempt(f"{scheme}:// URLs need fsspec (pip install 'mimic-explorer[remote]')", final=True) from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        package, extra = EXTRAS.get(scheme, (f"an fsspec filesystem for {scheme}://", None))
        hint = f"pip install 'mimic-explorer[{extra}]'" if extra else f"install {package}"
        raise _Attempt(f"{scheme}:// URLs need {package} ({hint}): {exc}", final=True) from None
    try:
        expected = fs.size(path)
        source = fs.open(path, "rb", block_size=BLOCK)
    except FileNotFoundError:
        raise _Attempt("no such file", final=True) from None
    except Exception as exc:  # noqa: BLE001 - any filesystem failure is one failed attempt
        raise _Attempt(f"cannot open it ({type(exc).__name__}: {exc})") from None
    with source, open(tmp, "wb") as handle:
        received = _copy(source, handle, 0, expected)
    if expected is not None and received != expected:
        raise _Attempt("the file ended early", received, expected)
    return received


def _from_command(command: str, tmp: Path) -> int:
    """``pipe:COMMAND``: the command's standard output, complete when it exits with status 0 (a shell runs the
    command the user wrote, as ``webdataset`` does)."""
    with tempfile.TemporaryFile() as errors, open(tmp, "wb") as handle:
        process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=errors)
        try:
            received = _copy(process.stdout, handle, 0, None)
        finally:
            process.stdout.close()
            status = process.wait()
        if status != 0:
            errors.seek(0)
            said = errors.read()[-300:].decode("utf-8", "replace").strip().replace("\n", " ")
            raise _Attempt(f"the command exited with status {status}" + (f" ({said})" if said else ""), received)
    return received
