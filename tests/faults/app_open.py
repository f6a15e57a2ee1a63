"""Open a run as the app does, in a process of its own (the fault tests fork one per open)."""

from __future__ import annotations


def open_in_app(run_dir: str) -> int:
    """``ExplorerState`` on the run: builds the app index (``index/``) on the first open. Prints how the
    samples are read (``SampleColumns``: through the index; ``DataFrame``: the whole table, when no
    index could be built) and how many there are; the exit status is 0 when the run opened."""
    from mimic_explorer.store.reader import open_run
    from mimic_explorer.ui.state import ExplorerState

    state = ExplorerState(open_run(run_dir))
    print(type(state.samples).__name__, len(state.samples))
    return 0
