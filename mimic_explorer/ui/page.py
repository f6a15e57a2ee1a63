"""The served page: pick what to open from the command-line arguments, handle every failure in-page."""

from __future__ import annotations

from pathlib import Path

import panel as pn

from mimic_explorer.store.paths import demo_run_dir
from mimic_explorer.store.reader import RunError, open_run, read_meta
from mimic_explorer.ui.explorer import Explorer
from mimic_explorer.ui.loader import DemoBuild

TITLE = "mimic_explorer"


def _error_page(message: str) -> pn.viewable.Viewable:
    return pn.pane.Alert(f"**Cannot open the run.** {message}", alert_type="danger", sizing_mode="stretch_width")


def explorer_or_error(path: Path) -> pn.viewable.Viewable:
    try:
        return Explorer(path)
    except RunError as exc:
        return _error_page(str(exc))


def _demo_is_ready(path: Path) -> bool:
    try:
        return read_meta(path).get("status") == "complete"
    except RunError:
        return False


def demo_page() -> pn.viewable.Viewable:
    """The cached demo run, building it first (with a progress indicator) when it is not there yet."""
    path = demo_run_dir()
    if _demo_is_ready(path):
        return explorer_or_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build = DemoBuild.shared(path)
    status = pn.pane.Markdown("Building the demo run (digits, 30 % label noise) — first launch only…")
    spinner = pn.indicators.LoadingSpinner(value=True, size=40, name="building demo")
    detail = pn.pane.Str(build.last_line)
    body = pn.Column(pn.Row(spinner, status), detail, sizing_mode="stretch_width")

    def poll() -> None:
        detail.object = build.last_line
        if not build.done:
            return
        callback.stop()
        if build.returncode == 0 and _demo_is_ready(path):
            body[:] = [explorer_or_error(path)]
        else:
            body[:] = [_error_page(f"building the demo failed:\n\n```\n{build.error}\n```")]

    callback = pn.state.add_periodic_callback(poll, period=500)
    return body


def build_page(args: list[str]) -> pn.viewable.Viewable:
    """``args`` are ``panel serve … --args`` arguments: a run directory, or nothing for the demo."""
    if not args:
        return demo_page()
    return explorer_or_error(Path(args[0]).expanduser())


def serve_page(args: list[str]) -> pn.template.BaseTemplate:
    template = pn.template.FastListTemplate(title=TITLE, main=[build_page(args)], theme_toggle=False)
    return template
