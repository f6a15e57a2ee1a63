"""The run picker that switches the explorer between the runs of a folder (``store.listing`` finds them).

Runs that are still running, failed or from a newer format are listed too, with their status, so
picking one explains why it cannot open.
"""

from __future__ import annotations

from pathlib import Path

import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.store.listing import find_runs
from mimic_explorer.store.reader import RunError


class RunPicker(Viewer):
    """A select of the runs in a folder; ``value`` is the chosen run directory."""

    value = param.ClassSelector(class_=Path, default=None, allow_None=True)

    def __init__(self, folder: str | Path, **params):
        super().__init__(**params)
        self.folder = Path(folder)
        self.entries = find_runs(self.folder)
        if not self.entries:
            raise RunError(f"{self.folder} is neither a run directory nor a folder of runs (no meta.json found)")
        options = {e.label: str(e.path) for e in self.entries}
        complete = next((e for e in self.entries if e.status == "complete"), self.entries[0])
        self._select = pn.widgets.Select(
            label=f"Run ({len(self.entries)} in {self.folder.name or self.folder})",
            options=options,
            value=str(complete.path),
            sizing_mode="stretch_width",
        )
        self._select.param.watch(lambda e: setattr(self, "value", Path(e.new)), "value")
        self.value = complete.path

    def __panel__(self):
        return self._select
