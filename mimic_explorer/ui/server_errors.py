"""Error replies over the app's websocket say one line; the traceback stays in the server log.

Why: when a message from the browser fails on the server (a patch that cannot be applied, an app
callback that raises while the patch is applied), Bokeh's ``ProtocolHandler.handle`` logs the error
with its traceback and answers with ``ServerConnection.error(message, repr(exc))``, which builds an
``ERROR`` message inside the ``except`` block; ``bokeh.protocol.messages.error.create`` then attaches
``sys.exc_info()``'s full traceback (file paths, source lines, local state in messages) to the reply
sent to the browser. Bokeh has no setting for this, and ``ServerConnection.error`` is the one place
every ``ERROR`` reply is made, so the served app (``app.py``) wraps that method: the reply keeps its
request id and gets a one-line reason without a traceback. Bokeh's own log line (with the traceback)
is untouched, so nothing is lost for whoever runs the server.

A browser tab that closes while the server is still writing to it is no error at all, yet Tornado's
write future then fails with ``WebSocketClosedError`` that nobody awaits, and asyncio's default handler
prints "Task exception was never retrieved" with two chained tracebacks into the server log, where a
person reading it looks for a bug. ``install_quiet_disconnects`` says that in one line instead and
leaves every other unretrieved exception to asyncio's default handler.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from typing import Any

from bokeh.server.connection import ServerConnection

#: longest reason sent to the browser (an exception message can be long; the log has it whole)
MAX_REASON = 200
_MARK = "_mimic_explorer_terse"


def one_line_reason(error: BaseException | None, fallback: str = "") -> str:
    """``Type: first line of the message``, at most ``MAX_REASON`` characters, and where to look."""
    if error is None:
        head = (fallback.strip().splitlines() or ["the server could not handle the message"])[0]
    else:
        lines = str(error).strip().splitlines()
        head = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if len(head) > MAX_REASON:
        head = head[: MAX_REASON - 1] + "…"
    return f"{head} (details in the server log)"


def install_terse_error_replies() -> None:
    """Make every ``ERROR`` reply of this process's Bokeh server one line without a traceback.

    Idempotent: ``app.py`` runs once per session and calls it each time."""
    original = ServerConnection.error
    if getattr(original, _MARK, False):
        return

    def error(self: ServerConnection, message: Any, text: str):
        reply = original(self, message, text)
        terse = {"text": one_line_reason(sys.exc_info()[1], text), "traceback": None}
        return type(reply)(reply.header, reply.metadata, terse)

    setattr(error, _MARK, True)
    error.__wrapped__ = original  # type: ignore[attr-defined]
    error.__doc__ = original.__doc__
    ServerConnection.error = error  # type: ignore[method-assign]


#: the log line for a browser that went away while the server wrote to it
DISCONNECT_LINE = "a browser tab closed while the server was still sending to it (nothing lost)"
_QUIETED: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def is_disconnect(error: BaseException | None) -> bool:
    """Whether ``error`` only says the websocket's peer has gone (Tornado's closed-stream errors)."""
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    return isinstance(error, (WebSocketClosedError, StreamClosedError))


def install_quiet_disconnects(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Log a closed tab as one line on ``loop`` (default: the server's running loop); hand every other
    exception to the handler the loop had. Idempotent per loop."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            from tornado.ioloop import IOLoop

            loop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
    if loop in _QUIETED:
        return
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if is_disconnect(context.get("exception")):
            logging.getLogger("mimic_explorer.serve").info(DISCONNECT_LINE)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    _QUIETED.add(loop)
