"""Finding runs in a folder (UI-free): used by ``mimic-explorer runs`` and the app's run picker.

A run is a folder with a ``meta.json``; a runs folder holds runs as direct children (or
grandchildren, e.g. ``runs/<project>/<run>``). Runs that are still running, failed or from a newer
format are listed too, with their status; a run whose ``meta.json`` cannot be read is listed as
``unreadable`` with the reason (``problem``), never dropped and never taken for the whole listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import FORMAT_VERSION, RunError, read_meta


@dataclass
class RunEntry:
    """One run directory as the app's run picker and ``mimic-explorer runs`` show it: where it is, its id, status and
    creation time, its ``meta.json``, and why it cannot be read (``problem``) when it cannot."""

    path: Path
    run_id: str
    status: str
    created: str
    meta: dict = field(default_factory=dict, repr=False)
    #: why the run's meta.json cannot be read (one line naming the file); empty for a readable run
    problem: str = ""

    @property
    def note(self) -> str:
        """What the listing should add after the path: the problem, or a newer format."""
        if self.problem:
            return self.problem
        version = self.meta.get("format_version", 0)
        if version > FORMAT_VERSION:
            return f"format {version}: written by a newer mimic_explorer, upgrade to open it"
        return ""

    @property
    def label(self) -> str:
        """The run as one line of a picker: its id, its status unless complete, and when it was created."""
        status = "" if self.status == "complete" else f" [{self.status}]"
        when = f" · {self.created[:16].replace('T', ' ')}" if self.created else ""
        return f"{self.run_id}{status}{when}"


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds a run (a ``meta.json``), readable or not."""
    return RunLayout(path).meta.is_file()


def _entry(path: Path) -> RunEntry:
    try:
        meta = read_meta(path)
    except RunError as exc:
        return RunEntry(path, path.name, "unreadable", "", problem=str(exc))
    return RunEntry(
        path,
        str(meta.get("run_id") or path.name),
        str(meta.get("status", "unknown")),
        str(meta.get("created", "")),
        meta,
    )


def find_runs(folder: str | Path, depth: int = 2) -> list[RunEntry]:
    """Runs under ``folder`` (not the folder itself), newest first; unreadable ones last."""
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
    return sorted(found, key=lambda e: (not e.problem, e.created, e.run_id), reverse=True)
