"""Finding runs in a folder, and the run picker that switches the explorer between them.

``find_runs`` is UI-free: a run is a folder with a ``meta.json``; a runs folder holds runs as direct
children (or grandchildren, e.g. ``runs/<project>/<run>``). Runs that are still running, failed or
from a newer format are listed too, with their status, so picking one explains why it cannot open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.store.paths import META
from mimic_explorer.store.reader import RunError


@dataclass
class RunEntry:
    path: Path
    run_id: str
    status: str
    created: str

    @property
    def label(self) -> str:
        status = "" if self.status == "complete" else f" [{self.status}]"
        when = f" · {self.created[:16].replace('T', ' ')}" if self.created else ""
        return f"{self.run_id}{status}{when}"


def is_run_dir(path: Path) -> bool:
    return (path / META).is_file()


def _entry(path: Path) -> RunEntry:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return RunEntry(path, path.name, "unreadable", "")
    return RunEntry(path, str(meta.get("run_id") or path.name), str(meta.get("status", "unknown")), str(meta.get("created", "")))


def find_runs(folder: str | Path, depth: int = 2) -> list[RunEntry]:
    """Runs under ``folder`` (not the folder itself), newest first."""
    folder = Path(folder)
    found: list[RunEntry] = []
    frontier = [folder]
    for _ in range(depth):
        next_frontier = []
        for parent in frontier:
            try:
                children = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                if is_run_dir(child):
                    found.append(_entry(child))
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found, key=lambda e: (e.created, e.run_id), reverse=True)


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
        self._select = pn.widgets.Select(label=f"Run ({len(self.entries)} in {self.folder.name or self.folder})",
                                         options=options, value=str(complete.path), sizing_mode="stretch_width")
        self._select.param.watch(lambda e: setattr(self, "value", Path(e.new)), "value")
        self.value = complete.path

    def __panel__(self):
        return self._select
