"""Entry for ``panel serve mimic_explorer/app.py [--args RUN]`` (no argument: the demo run)."""

import sys

import panel as pn

from mimic_explorer.ui.page import serve_page
from mimic_explorer.ui.server_errors import install_quiet_disconnects, install_terse_error_replies

install_terse_error_replies()  # the browser gets one-line error replies; tracebacks stay in the server log
install_quiet_disconnects()  # a tab closed mid-write is one log line, not two tracebacks
pn.extension("tabulator", sizing_mode="stretch_width")
serve_page(sys.argv[1:]).servable(title="mimic_explorer")
