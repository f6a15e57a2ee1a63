"""Remote ``wds:`` shards: served over loopback HTTP or written by ``pipe:COMMAND``, a pool is the local pool
sample for sample (ids, labels, captions, bytes), fetched once and reused; a connection that drops mid-shard is
retried (resumed with a Range request), and one that always drops is reported naming the shard and the bytes
received: a partly received shard is never a pool."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from mimic_explorer.data import remote
from mimic_explorer.data.errors import DataSourceError
from mimic_explorer.data.specs import open_source
from tests.data.test_sources import fixture_items, write_pool_shards
from tests.source_helpers import FLICKR_MINI, ShardServer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


@pytest.fixture
def served(tmp_path):
    """Two CIFAR shards with classes.txt and the Flickr pairs shard, in one folder served over loopback HTTP."""
    folder = tmp_path / "www"
    write_pool_shards(folder, fixture_items(), shards=2)
    (folder / "pairs.tar").write_bytes(FLICKR_MINI.read_bytes())
    with ShardServer(folder) as server:
        yield folder, server


def same_pool(a, b) -> None:
    assert a.sample_ids.tolist() == b.sample_ids.tolist() and a.class_names == b.class_names
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.captions is None) == (b.captions is None)
    if a.captions is not None:
        assert a.captions.tolist() == b.captions.tolist()
    assert a.fingerprint() == b.fingerprint()
    for i in range(len(a)):
        assert a.read_bytes(i) == b.read_bytes(i)


def test_http_shards_are_the_local_shards_fetched_once(served, tmp_path):
    folder, server = served
    local = open_source(f"wds:{folder}/pool-{{00..01}}.tar")
    spec = f"wds:{server.url}/pool-{{00..01}}.tar"
    fetched = open_source(spec)
    same_pool(fetched, local)
    assert fetched.class_names[0] == "airplane"  # classes.txt fetched from beside the shards
    assert fetched.source_of(0) == f"{server.url}/pool-00.tar:{fetched.sample_ids[0]}.jpg"
    asked = len(server.requests)
    assert {name for name, _ in server.requests} >= {"pool-00.tar", "pool-01.tar", "classes.txt"}
    again = open_source(spec)  # the verified copies are reused: no request, the same pool
    same_pool(again, local)
    assert len(server.requests) == asked  # nothing asked again, classes.txt included
    pairs = open_source(f"wds:{server.url}/pairs.tar")
    same_pool(pairs, open_source(f"wds:{FLICKR_MINI}"))


def test_pipe_command_output_is_the_shard(tmp_path):
    folder = tmp_path / "local"
    write_pool_shards(folder, fixture_items(), shards=2)
    local = open_source(f"wds:{folder}/pool-{{00..01}}.tar", class_names=None)
    piped = open_source(f"wds:pipe:cat {shlex.quote(str(folder))}/pool-{{00..01}}.tar", class_names=local.class_names)
    same_pool(piped, local)
    assert piped.shards == [f"pipe:cat {folder}/pool-00.tar", f"pipe:cat {folder}/pool-01.tar"]
    pairs = open_source(f"wds:pipe:cat {FLICKR_MINI}")
    same_pool(pairs, open_source(f"wds:{FLICKR_MINI}"))


def test_a_connection_dropped_once_is_resumed(served):
    folder, server = served
    server.drop["pool-01.tar"] = "once"
    fetched = open_source(f"wds:{server.url}/pool-{{00..01}}.tar")
    same_pool(fetched, open_source(f"wds:{folder}/pool-{{00..01}}.tar"))
    tries = [rng for name, rng in server.requests if name == "pool-01.tar"]
    half = (folder / "pool-01.tar").stat().st_size // 2
    assert tries == [None, f"bytes={half}-"]  # the second attempt asked for the rest only


def test_a_server_that_always_drops_is_retried_then_reported(served, tmp_path, monkeypatch):
    folder, server = served
    server.drop["pool-01.tar"] = "always"
    monkeypatch.setenv(remote.RETRIES_ENV, "3")
    size = (folder / "pool-01.tar").stat().st_size
    with pytest.raises(DataSourceError) as info:
        open_source(f"wds:{server.url}/pool-{{00..01}}.tar")
    text = str(info.value)
    assert "\n" not in text and f"cannot fetch shard {server.url}/pool-01.tar" in text
    assert f"of {size:,} bytes received, after 3 attempt(s)" in text
    assert sum(name == "pool-01.tar" for name, _ in server.requests) == 3
    cache = tmp_path / "cache" / "remote_shards"
    complete = sorted(p.name for p in cache.rglob("*.tar"))
    assert complete == ["pool-00.tar"]  # the whole shard only; nothing of the cut one is kept as a shard
    assert not list(cache.rglob(".*part*"))
    # without Range support every attempt starts again, and is still reported
    with ShardServer(folder, ranges=False) as plain:
        plain.drop["pool-01.tar"] = "always"
        with pytest.raises(DataSourceError, match="after 3 attempt"):
            open_source(f"wds:{plain.url}/pool-01.tar")


def test_missing_unreachable_and_failing_commands_are_one_line(served, tmp_path):
    _, server = served
    messages = []
    for spec in (
        f"wds:{server.url}/absent.tar",
        "wds:http://127.0.0.1:9/pool.tar",
        "wds:pipe:exit 3",
        f"wds:pipe:cat {tmp_path}/absent.tar",
    ):
        with pytest.raises(DataSourceError) as info:
            open_source(spec)
        messages.append(str(info.value))
    assert all("\n" not in m for m in messages)
    assert "HTTP 404" in messages[0] and "cannot connect" in messages[1]
    assert "the command exited with status 3" in messages[2]
    assert "status 1" in messages[3] and "No such file" in messages[3]


def test_remote_patterns_expand_braces_without_touching_the_network():
    assert remote.is_remote("https://h/a.tar") and remote.is_remote("s3://b/k.tar") and remote.is_remote("pipe:x")
    assert not remote.is_remote("/data/a-{00..01}.tar") and not remote.is_remote("file:///data/a.tar")
    assert remote.remote_names("s3://b/shard-{000..002}.tar") == [f"s3://b/shard-00{k}.tar" for k in range(3)]
    assert remote.remote_names("pipe:aws s3 cp s3://b/{a,b}.tar -") == [
        "pipe:aws s3 cp s3://b/a.tar -",
        "pipe:aws s3 cp s3://b/b.tar -",
    ]
    assert remote.beside("https://h/x/p-00.tar", "classes.txt") == "https://h/x/classes.txt"
    assert remote.beside("pipe:cat a.tar", "classes.txt") is None


def test_fsspec_urls_are_fetched_through_their_filesystem(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    folder = tmp_path / "local"
    write_pool_shards(folder, fixture_items(), shards=2)
    memory = fsspec.filesystem("memory")
    for name in ("pool-00.tar", "pool-01.tar", "classes.txt"):
        memory.pipe(f"/bucket/{name}", (folder / name).read_bytes())
    try:
        fetched = open_source("wds:memory://bucket/pool-{00..01}.tar")
        same_pool(fetched, open_source(f"wds:{folder}/pool-{{00..01}}.tar"))
        assert fetched.class_names[0] == "airplane"
        with pytest.raises(DataSourceError, match="cannot fetch memory://bucket/pool-02.tar: no such file"):
            open_source("wds:memory://bucket/pool-02.tar")
    finally:
        memory.rm("/bucket", recursive=True)
