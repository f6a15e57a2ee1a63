"""The served page: pick what to open from the command-line arguments, handle every failure in-page.

``panel serve mimic_explorer/app.py --args TARGET``: TARGET is a run directory (the explorer), a
folder of runs (a run picker plus the explorer), or nothing (the cached demo run, built on first
launch with a progress bar). Anything that cannot be opened becomes a message in the page — never a
traceback — and the server log gets one line.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from pathlib import Path

import panel as pn
from panel.viewable import Viewer

from mimic_explorer.store.listing import is_run_dir
from mimic_explorer.store.reader import RunError, read_meta
from mimic_explorer.ui.explorer import Explorer
from mimic_explorer.ui.loader import DemoBuild
from mimic_explorer.ui.runs import RunPicker
from mimic_explorer.util.cache import demo_run_dir

TITLE = "mimic_explorer"
log = logging.getLogger("mimic_explorer.app")


def _error_alert(message: str) -> pn.pane.Alert:
    return pn.pane.Alert(f"**Cannot open the run.** {message}", alert_type="danger", sizing_mode="stretch_width")


def _open_explorer(path: Path) -> Explorer | pn.pane.Alert:
    """An Explorer on ``path``, or an alert saying why not (missing, incomplete, newer format, corrupt)."""
    try:
        return Explorer(path)
    except RunError as exc:
        log.warning("cannot open %s: %s", path, exc)
        return _error_alert(str(exc))
    except Exception as exc:  # noqa: BLE001 - a corrupt parquet file or similar: said in the page, not as a traceback
        log.warning("cannot open %s: %s: %s", path, type(exc).__name__, exc)
        return _error_alert(f"{path} could not be read ({type(exc).__name__}: {exc}).")


class ExplorerPage(Viewer):
    """``sidebar`` and ``main`` columns whose contents follow the opened run (or its error)."""

    def __init__(self, **params):
        super().__init__(**params)
        self.sidebar = pn.Column(sizing_mode="stretch_width")
        self.main = pn.Column(sizing_mode="stretch_width")
        self.explorer: Explorer | None = None
        self._picker: RunPicker | None = None

    def show(self, target) -> None:
        """Fill the page from a run directory, a runs folder, or a ready-made viewable (alert, progress)."""
        if isinstance(target, (str, Path)):
            target = Path(target).expanduser()
            if target.is_dir() and not is_run_dir(target):
                return self._show_folder(target)
            target = _open_explorer(target)
        self._place(target)

    def _show_folder(self, folder: Path) -> None:
        try:
            self._picker = RunPicker(folder)
        except RunError as exc:
            return self._place(_error_alert(str(exc)))
        self._picker.param.watch(lambda e: self._place(_open_explorer(e.new)), "value")
        self._place(_open_explorer(self._picker.value))

    def _place(self, content) -> None:
        picker = [self._picker] if self._picker is not None else []
        if isinstance(content, Explorer):
            self.explorer = content
            self.sidebar[:] = [*picker, content.controls]
            self.main[:] = [content.main]
        else:
            self.explorer = None
            self.sidebar[:] = picker
            self.main[:] = [content]

    def __panel__(self):
        return pn.Row(pn.Column(self.sidebar, width=340), self.main, sizing_mode="stretch_width")


def _demo_is_ready(path: Path) -> bool:
    try:
        return read_meta(path).get("status") == "complete"
    except RunError:
        return False


_PERCENT = re.compile(r"^(?P<stage>[^:|]+):\s*(?P<pct>\d+)%")


def _demo_progress(page: ExplorerPage) -> None:
    """Open the cached demo run, building it first (progress bar and stage) on the very first launch."""
    path = demo_run_dir()
    if _demo_is_ready(path):
        return page.show(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return page.show(_error_alert(f"cannot create the cache folder {path.parent}: {exc.strerror or exc}"))
    build = DemoBuild.shared(path)
    status = pn.pane.Markdown(
        "### Building the demo run\nscikit-learn digits, 30 % label noise, a reference "
        "trained on clean labels, Grad-Mimic and Stage 2 — first launch only, about a minute "
        "at most; later launches open at once.",
        sizing_mode="stretch_width",
    )
    spinner = pn.indicators.LoadingSpinner(value=True, size=36, name="building demo", color="primary")
    bar = pn.indicators.Progress(
        value=-1, max=100, sizing_mode="stretch_width", bar_color="primary", css_classes=["demo-progress"]
    )
    detail = pn.pane.Str(build.last_line, sizing_mode="stretch_width")

    def poll() -> None:
        line = build.last_line
        detail.object = line
        match = _PERCENT.match(line)
        if match:
            bar.value = int(match["pct"])
        if not build.done:
            return
        callback.stop()
        if build.returncode == 0 and _demo_is_ready(path):
            page.show(path)
        else:
            page.show(_error_alert(f"building the demo failed:\n\n```\n{build.error}\n```"))

    page.show(pn.Column(pn.Row(spinner, status), bar, detail, sizing_mode="stretch_width"))
    callback = pn.state.add_periodic_callback(poll, period=400)


def build_page(args: list[str]) -> ExplorerPage:
    """``args`` are ``panel serve … --args`` arguments: a run, a runs folder, or nothing for the demo."""
    page = ExplorerPage()
    if not args:
        _demo_progress(page)
    else:
        page.show(Path(args[0]))
    return page


LOCAL_CLIENTS = {"127.0.0.1", "::1", "localhost"}


def _is_loopback(name: str) -> bool:
    """``localhost``, 127.0.0.0/8, ``::1`` (also IPv4-mapped, ``::ffff:127.0.0.1``)."""
    if name in LOCAL_CLIENTS:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:5006`` → ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def client_is_local() -> bool:
    """Whether this session's browser runs on this machine and asked for this machine by a loopback
    name. ``mimic-explorer serve`` binds to localhost; a bare ``panel serve`` binds to every interface,
    so the page itself refuses remote clients unless ``MIMIC_EXPLORER_ALLOW_REMOTE=1`` says sharing is
    intended. The ``Host`` check matters too: Tornado lets a websocket whose origin equals the
    ``Host`` header through without Bokeh's origin allowlist, so a page that rebinds its own domain
    name to 127.0.0.1 would otherwise reach the app from a local browser."""
    if os.environ.get("MIMIC_EXPLORER_ALLOW_REMOTE") == "1":
        return True
    context = getattr(pn.state.curdoc, "session_context", None)
    request = getattr(context, "request", None) if context is not None else None
    if request is None:
        return True  # not served (a notebook, a test building the page): nobody to refuse
    remote = getattr(request, "remote_ip", None)
    host = getattr(request, "host", None)
    if remote is not None and not _is_loopback(remote):
        return False
    return host is None or _is_loopback(_host_name(host))


def serve_page(args: list[str]) -> pn.template.BaseTemplate:
    """The served page for ``args`` (the ``--args`` of ``panel serve``): the explorer of a run, a picker, the demo being
    built, or a refusal for a browser on another machine."""
    if not client_is_local():
        page = ExplorerPage()
        page.show(
            pn.pane.Alert(
                "This explorer serves only browsers on its own machine. To share it, start it "
                "with `--address` and set `MIMIC_EXPLORER_ALLOW_REMOTE=1`.",
                alert_type="danger",
            )
        )
    else:
        page = build_page(args)
    return pn.template.FastListTemplate(
        title=TITLE,
        sidebar=[page.sidebar],
        main=[page.main],
        sidebar_width=340,
        theme_toggle=False,
        accent="#0969da",
        header_background="#24292f",
        main_layout=None,
    )
