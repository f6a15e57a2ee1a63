"""Datashader's kernels are compiled once per process, in the background, before a large scatter needs them."""

from __future__ import annotations

from mimic_explorer.ui import plots


def test_the_warm_up_runs_once_and_compiles_without_error(monkeypatch):
    monkeypatch.setattr(plots, "_warmed", False)
    failures = []
    monkeypatch.setattr(plots.threading, "excepthook", lambda args: failures.append(args.exc_value))
    thread = plots.warm_up_datashader(delay=0.0)
    assert thread is not None and thread.daemon
    assert plots.warm_up_datashader(delay=0.0) is None  # once per process
    thread.join(timeout=120)
    assert not thread.is_alive() and failures == []
