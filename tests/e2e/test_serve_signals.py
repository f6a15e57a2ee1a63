"""The served app as real processes: ``mimic-explorer serve`` stops its server on a signal, the app
refuses browsers on other machines, and a failing websocket message gets a one-line reply.

- SIGTERM or SIGINT to ``python -m mimic_explorer serve RUN --port P`` (once ``/app`` answers 200):
  the command exits promptly with 128 + the signal, nothing listens on P, and no process it started
  survives (psutil). SIGKILL to it: the server still goes (the kernel's parent-death signal). The
  first-launch demo build (a grandchild) goes with the server.
- A bare ``panel serve mimic_explorer/app.py`` listens on every interface: a session opened through
  this machine's non-loopback address gets the refusal page (Tornado lets a same-origin websocket
  through whatever Bokeh's origin allowlist says), so does a loopback request naming another host
  (a rebound domain), one through 127.0.0.1 gets the explorer, and a cross-origin websocket is refused.
- A PATCH-DOC the server cannot apply, sent over a real websocket, is answered by an ``ERROR`` with
  one line and no traceback; the server log has the traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from tests.ui_helpers import ROOT, synthetic_run

pytestmark = pytest.mark.slow

REFUSAL = "only browsers on its own machine"
START_TIMEOUT = 180  # a cold panel import on a busy machine
STOP_TIMEOUT = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _listening(port: int) -> list[str]:
    """The loopback addresses on which something accepts connections on ``port``."""
    found = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            try:
                s.connect((host, port))
                found.append(host)
            except OSError:  # refused, or no IPv6 on this machine
                pass
    return found


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _started(command: list[str], log_path: Path, env: dict | None = None, ready: str | None = None):
    """Start ``command``, wait until ``ready`` (a URL) answers 200, yield the process; whatever is
    left of it and its descendants afterwards (also when a test fails, e.g. an orphaned server) is
    killed: the ones seen once it was ready, and its own process group."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    seen: list[psutil.Process] = []
    try:
        if ready:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers(ready):
                if proc.poll() is not None:
                    raise AssertionError(f"{command[3:5]} exited early:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not answer {ready}:\n{log_path.read_text()}")
                time.sleep(0.5)
            seen = psutil.Process(proc.pid).children(recursive=True)
        yield proc
    finally:
        with suppress(psutil.NoSuchProcess):
            seen += psutil.Process(proc.pid).children(recursive=True)
        for process in seen:
            with suppress(psutil.NoSuchProcess):
                process.kill()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


def _serve(run: Path | None, port: int) -> list[str]:
    return [sys.executable, "-m", "mimic_explorer", "serve", *([str(run)] if run else []), "--port", str(port)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("serve") / "run", n=200)


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop_and_check(proc: subprocess.Popen, port: int, signum: int, descendants: list[psutil.Process]) -> None:
    os.kill(proc.pid, signum)
    status = proc.wait(timeout=STOP_TIMEOUT)
    if signum != signal.SIGKILL:
        assert status == 128 + signum
    _gone, alive = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT)
    alive = [p for p in alive if _still_running(p)]  # an exited process init has not reaped yet runs nothing
    assert alive == [], [p.cmdline() for p in alive]
    assert _listening(port) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_the_server_and_frees_its_port(run, tmp_path, signum):
    port = _free_port()
    with _started(_serve(run, port), tmp_path / "serve.log", ready=f"http://127.0.0.1:{port}/app") as proc:
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert any("panel" in p.cmdline() for p in descendants)
        assert _listening(port)
        _stop_and_check(proc, port, signum, descendants)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_serve_does_not_leave_its_server_behind(run, tmp_path):
    port = _free_port()
    with _started(_serve(run, port), tmp_path / "serve.log", ready=f"http://127.0.0.1:{port}/app") as proc:
        descendants = psutil.Process(proc.pid).children(recursive=True)
        _stop_and_check(proc, port, signal.SIGKILL, descendants)


def test_the_first_launch_demo_build_stops_with_the_server(tmp_path):
    """No RUN and an empty cache: opening the page starts the demo build, a grandchild of serve."""
    port = _free_port()
    cache = tmp_path / "cache"
    with _started(
        _serve(None, port),
        tmp_path / "serve.log",
        env={"MIMIC_EXPLORER_CACHE": str(cache)},
        ready=f"http://127.0.0.1:{port}/app",
    ) as proc:

        def build_started():
            found = [p for p in psutil.Process(proc.pid).children(recursive=True) if "demo" in p.cmdline()]
            return found or None

        build = _wait_for(build_started, 60, "the demo build to start")
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert build[0] in descendants and len(descendants) >= 2
        _stop_and_check(proc, port, signal.SIGTERM, descendants)
    meta = cache / "runs" / "demo-v1" / "meta.json"
    assert not meta.exists() or json.loads(meta.read_text())["status"] != "complete"


# --- websocket helpers: the Bokeh protocol spoken directly, as the browser's BokehJS does ----------


async def _session(host: str, port: int, token: str, origin: str | None, host_header: str | None = None):
    from bokeh.protocol import Protocol
    from bokeh.protocol.receiver import Receiver
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    headers = {"Origin": origin} if origin else {}
    if host_header:
        headers["Host"] = host_header
    ws = await websocket_connect(
        HTTPRequest(f"ws://{host}:{port}/app/ws", headers=headers), subprotocols=["bokeh", token]
    )
    receiver = Receiver(Protocol())

    async def receive():
        while True:
            fragment = await asyncio.wait_for(ws.read_message(), 60)
            assert fragment is not None, "the server closed the websocket"
            message = await receiver.consume(fragment)
            if message is not None:
                return message

    async def request(msgid: str, msgtype: str, content: dict):
        for part in ({"msgid": msgid, "msgtype": msgtype}, {}, content):
            await ws.write_message(json.dumps(part))
        while True:
            reply = await receive()
            if reply.header.get("reqid") == msgid:
                return reply

    assert (await receive()).msgtype == "ACK"
    return ws, request


def _page_token(host: str, port: int, host_header: str | None = None) -> str:
    """Open the page as a browser would; the session token the page carries for its websocket."""
    headers = {"Host": host_header} if host_header else {}
    with urllib.request.urlopen(
        urllib.request.Request(f"http://{host}:{port}/app", headers=headers), timeout=60
    ) as response:
        html = response.read().decode()
    return re.search(r'"token":\s*"([^"]+)"', html).group(1)


def _document_text(host: str, port: int, host_header: str | None = None) -> str:
    """What the session's document says, pulled over the websocket the way the page's BokehJS does
    (same origin as the page, as a browser sends it)."""

    async def pull():
        origin = f"http://{host_header or f'{host}:{port}'}"
        ws, request = await _session(host, port, _page_token(host, port, host_header), origin, host_header)
        reply = await request("pull-1", "PULL-DOC-REQ", {})
        ws.close()
        return json.dumps(reply.content)

    return asyncio.run(pull())


def _other_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (what another machine would connect to)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_a_bare_panel_serve_listens_everywhere_but_serves_only_local_browsers(run, tmp_path):
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "panel",
        "serve",
        str(ROOT / "mimic_explorer" / "app.py"),
        "--port",
        str(port),
        "--args",
        str(run),
    ]  # the README's command without --address
    env = {k: v for k, v in os.environ.items() if k != "MIMIC_EXPLORER_ALLOW_REMOTE"}
    with _started(command, tmp_path / "bare.log", env=env, ready=f"http://127.0.0.1:{port}/app") as proc:
        assert _answers(f"http://{other}:{port}/app")  # it does listen beyond loopback
        local = _document_text("127.0.0.1", port)
        assert REFUSAL not in local and "synthetic-200" in local
        # a browser elsewhere: Tornado lets its same-origin websocket through, the page refuses it
        remote = _document_text(other, port)
        assert REFUSAL in remote and "synthetic-200" not in remote
        # a local browser on a page whose domain was rebound to 127.0.0.1: refused by its Host
        rebound = _document_text("127.0.0.1", port, host_header=f"rebound.example:{port}")
        assert REFUSAL in rebound and "synthetic-200" not in rebound

        async def cross_origin():
            from tornado.httpclient import HTTPClientError

            with pytest.raises(HTTPClientError) as refused:
                await _session("127.0.0.1", port, _page_token("127.0.0.1", port), origin="http://elsewhere.example")
            return refused.value.code

        assert asyncio.run(cross_origin()) == 403  # Bokeh's websocket origin allowlist
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)


def test_a_failing_websocket_message_gets_one_line_and_the_log_the_traceback(run, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    with _started(_serve(run, port), log, ready=f"http://127.0.0.1:{port}/app") as proc:

        async def bad_patch():
            ws, request = await _session(
                "127.0.0.1", port, _page_token("127.0.0.1", port), origin=f"http://localhost:{port}"
            )
            event = {"kind": "ModelChanged", "model": {"id": "no-such-model"}, "attr": "value", "new": 1}
            reply = await request("bad-1", "PATCH-DOC", {"events": [event]})
            ws.close()
            return reply

        reply = asyncio.run(bad_patch())
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=STOP_TIMEOUT)
    assert reply.msgtype == "ERROR"
    wire = reply.header_json + reply.metadata_json + reply.content_json
    assert "Traceback" not in wire and "site-packages" not in wire
    assert reply.content["traceback"] is None and "\n" not in reply.content["text"]
    assert reply.content["text"].startswith("UnknownReferenceError: ")
    assert "Traceback" in log.read_text()  # the server keeps it
