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
"""

from __future__ import annotations

import sys
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
