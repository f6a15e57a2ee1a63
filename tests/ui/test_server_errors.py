"""A message from the browser that fails on the server is answered with one line, never a traceback.

Through Bokeh's own ``ProtocolHandler`` and ``ServerSession``: a PATCH-DOC moves a slider whose
Python callback raises (as an app callback would), the handler answers with an ``ERROR`` reply, and
the reply as it would go over the websocket carries a one-line reason while the server log keeps the
traceback. ``tests/e2e/test_serve_signals.py`` does the same over a real websocket to the served app.
"""

from __future__ import annotations

import asyncio
import json
import logging

from bokeh.document import Document
from bokeh.models import Slider
from bokeh.protocol import Protocol
from bokeh.server.connection import ServerConnection
from bokeh.server.protocol_handler import ProtocolHandler
from bokeh.server.session import ServerSession

from mimic_explorer.ui.server_errors import MAX_REASON, install_terse_error_replies, one_line_reason


def _patch_reply(value: int) -> tuple[object, Slider]:
    """Send a PATCH-DOC that sets the slider's value; return the handler's reply."""
    document = Document()
    slider = Slider(start=0, end=10, value=1)

    def refuse(attr, old, new):
        if new == 7:
            raise ValueError(f"the value {new} is not allowed\nsecond line of the message")

    slider.on_change("value", refuse)
    document.add_root(slider)

    async def go():
        session = ServerSession("session-1", document)
        protocol = Protocol()
        connection = ServerConnection(protocol, None, None, session)
        patch = {"events": [{"kind": "ModelChanged", "model": {"id": slider.id}, "attr": "value", "new": value}]}
        message = protocol.assemble(json.dumps({"msgid": "m-1", "msgtype": "PATCH-DOC"}), "{}", json.dumps(patch))
        return await ProtocolHandler().handle(message, connection)

    return asyncio.run(go()), slider


def test_a_raising_callback_is_answered_with_one_line_and_the_log_keeps_the_traceback(caplog):
    install_terse_error_replies()
    install_terse_error_replies()  # once per session: a second call must not wrap twice
    with caplog.at_level(logging.ERROR, logger="bokeh.server.protocol_handler"):
        reply, _ = _patch_reply(7)
    assert reply.msgtype == "ERROR" and reply.header["reqid"] == "m-1"
    wire = reply.header_json + reply.metadata_json + reply.content_json
    assert "Traceback" not in wire and ".py" not in wire
    assert reply.content["traceback"] is None
    text = reply.content["text"]
    assert "\n" not in text
    assert text == "ValueError: the value 7 is not allowed (details in the server log)"
    logged = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "") for r in caplog.records
    )
    assert "Traceback" in logged and "second line of the message" in logged


def test_a_patch_that_succeeds_is_answered_ok():
    install_terse_error_replies()
    reply, slider = _patch_reply(3)
    assert reply.msgtype == "OK" and slider.value == 3


def test_the_reason_is_one_bounded_line():
    assert one_line_reason(KeyError("x")) == "KeyError: 'x' (details in the server log)"
    assert one_line_reason(RuntimeError()) == "RuntimeError (details in the server log)"
    long = one_line_reason(ValueError("y" * 1000))
    assert "\n" not in long and len(long) <= MAX_REASON + len(" (details in the server log)")
    assert (
        one_line_reason(None, "UnknownReferenceError('a')\nmore")
        == "UnknownReferenceError('a') (details in the server log)"
    )


def test_a_tab_closed_mid_write_is_one_log_line_and_other_errors_keep_their_traceback(caplog):
    """Tornado's write future fails with ``WebSocketClosedError`` when the browser has gone; nobody awaits
    it, so asyncio reports it when the task is collected. The server says so in one line; any other
    unretrieved exception still reaches the loop's own handler with its traceback."""
    import gc

    from tornado.websocket import WebSocketClosedError

    from mimic_explorer.ui.server_errors import DISCONNECT_LINE, install_quiet_disconnects

    async def closed():
        raise WebSocketClosedError()

    async def broken():
        raise ValueError("a real bug")

    loop = asyncio.new_event_loop()
    seen: list[dict] = []
    loop.set_exception_handler(lambda loop, context: seen.append(context))
    try:
        install_quiet_disconnects(loop)
        install_quiet_disconnects(loop)  # idempotent: the previous handler is not wrapped twice
        with caplog.at_level(logging.INFO, logger="mimic_explorer.serve"):
            for make in (closed, broken):
                task = loop.create_task(make())
                loop.run_until_complete(asyncio.sleep(0.01))
                assert task.done()
                del task
                gc.collect()
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records if r.name == "mimic_explorer.serve"] == [DISCONNECT_LINE]
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)
