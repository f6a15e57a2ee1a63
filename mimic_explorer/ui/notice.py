"""The one notice line of the explorer: bad input, saves, restores, rules that keep nothing."""

from __future__ import annotations

import panel as pn
import param
from panel.viewable import Viewer

KINDS = ("info", "warning", "danger", "success")


class Notice(Viewer):
    """``show(text, kind)`` replaces the notice; an empty text hides it. ``message`` is the last text."""

    message = param.String(default="", doc="The last notice shown to the user.")
    kind = param.Selector(default="warning", objects=list(KINDS), doc="How the notice is coloured.")

    def __init__(self, **params):
        super().__init__(**params)
        self.alert = pn.pane.Alert(
            self.param.message,
            alert_type=self.param.kind,
            visible=self.param.message.rx().rx.bool(),
            sizing_mode="stretch_width",
        )

    def show(self, text: str, kind: str = "warning") -> None:
        """Show ``text`` as a notice of ``kind`` (``warning`` for an unknown kind)."""
        self.param.update(message=text, kind=kind if kind in KINDS else "warning")

    def __panel__(self):
        return self.alert
