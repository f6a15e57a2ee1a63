"""The committed fixture pools in the forms the other sources read — a ``datasets`` folder or parquet file, shards
served over loopback HTTP — so that each form can be checked against the local files it was made from.

``ShardServer`` serves a folder on 127.0.0.1 from a thread, with ``Range`` requests, a count of the requests it
answered, and two ways to fail: ``drop`` names files whose transfer it cuts half-way (the connection is closed
after half the announced bytes) either on every request or only on the first one."""

from __future__ import annotations

import http.server
import re
import tarfile
import threading
from pathlib import Path

from tests.data.test_sources import CLASSES, FIXTURE, fixture_items

FLICKR_MINI = Path(__file__).resolve().parent / "fixtures" / "flickr_mini" / "pairs.tar"


def cifar_dataset(with_ids: bool = True):
    """The 30 cifar_mini images as a ``datasets.Dataset``: ``img`` (Image), ``label`` (ClassLabel with the
    CIFAR-10 names) and, with ``with_ids``, ``key`` (the file's stem, which ``?id=key`` makes the id)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value

    items = fixture_items()
    rows = {
        "img": [{"bytes": data, "path": None} for _, _, data in items],
        "label": [label for _, label, _ in items],
    }
    features = {"img": Image(), "label": ClassLabel(names=CLASSES)}
    if with_ids:
        rows["key"] = [key for key, _, _ in items]
        features["key"] = Value("string")
    return Dataset.from_dict(rows, features=Features(features))


def flickr_members() -> list[dict]:
    """The 24 flickr_mini pairs: uid, image bytes, caption and every caption, in shard order."""
    import json

    found: dict[str, dict] = {}
    with tarfile.open(FLICKR_MINI) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            entry = found.setdefault(key, {})
            if ext == "jpg":
                entry["jpg"] = data
            elif ext == "txt":
                entry["caption"] = data.decode().strip()
            elif ext == "json":
                meta = json.loads(data)
                entry["uid"], entry["all_captions"] = meta["uid"], meta["all_captions"]
    return list(found.values())


def flickr_dataset():
    """The flickr_mini pairs as a ``datasets.Dataset``: ``image`` (Image), ``caption``, ``uid``."""
    from datasets import Dataset, Features, Image, Value

    pairs = flickr_members()
    return Dataset.from_dict(
        {
            "image": [{"bytes": p["jpg"], "path": None} for p in pairs],
            "caption": [p["caption"] for p in pairs],
            "uid": [p["uid"] for p in pairs],
        },
        features=Features({"image": Image(), "caption": Value("string"), "uid": Value("string")}),
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ShardServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        owner = self.server
        name = self.path.lstrip("/")
        owner.requests.append((name, self.headers.get("Range")))
        path = owner.root / name
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and owner.ranges:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        drops = owner.drop.get(name)
        if drops == "always" or (drops == "once" and sum(n == name for n, _ in owner.requests) == 1):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class ShardServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server of ``root`` in a daemon thread (``with ShardServer(root) as server: server.url``)."""

    daemon_threads = True

    def __init__(self, root: Path, ranges: bool = True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.ranges = ranges
        self.requests: list[tuple[str, str | None]] = []
        self.drop: dict[str, str] = {}  # file name -> "always" | "once"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ShardServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


__all__ = ["CLASSES", "FIXTURE", "FLICKR_MINI", "ShardServer", "cifar_dataset", "flickr_dataset", "flickr_members"]
