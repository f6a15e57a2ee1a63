"""Quick checks of what the fault suite found, each at the unit that now handles it: what a killed or
failed writer leaves behind is removed by the next writer, a run directory always says which run it
holds, a full disk is a one-line error. (The slow suite beside this file finds these by breaking whole
commands; these run in the quick loop.)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer.cli import main
from mimic_explorer.store import app_index
from mimic_explorer.store.app_index import open_index
from mimic_explorer.store.atomic import AtomicFile, remove_stale_temporaries, write_json
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.writer import RunWriter, SamplesWriter, read_error_parts, remove_stale_lock
from mimic_explorer.util.processes import process_alive
from tests.ui_helpers import synthetic_run


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    return child.pid


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_temporaries_of_a_dead_writer_are_removed_and_a_live_ones_kept(tmp_path, dead_pid):
    live = AtomicFile(tmp_path / "meta.json")  # this process: alive
    assert f".meta.json.{os.getpid()}." in os.path.basename(live.tmp)
    dead = tmp_path / f".meta.json.{dead_pid}.abcd1234.tmp"
    other = tmp_path / f".samples.parquet.{dead_pid}.abcd1234.tmp"
    for path in (dead, other, tmp_path / "meta.json"):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path, "meta.json") == [dead]
    assert other.exists() and os.path.exists(live.tmp) and (tmp_path / "meta.json").exists()
    assert sorted(remove_stale_temporaries(tmp_path)) == [other]  # of any file, the dead writer's only
    assert os.path.exists(live.tmp)
    assert remove_stale_temporaries(tmp_path, any_writer=True) == [tmp_path / os.path.basename(live.tmp)]


def test_a_run_writer_removes_a_killed_writers_temporaries_and_names_the_run_in_its_first_meta(tmp_path, dead_pid):
    layout = RunLayout(tmp_path / "r")
    (layout.scores_dir).mkdir(parents=True)
    leftovers = [layout.root / f".meta.json.{dead_pid}.x.tmp", layout.scores_dir / ".chunk-000001.parquet.1.y.tmp"]
    for path in [*leftovers, layout.errors, layout.state, layout.chunk_part(0)]:
        path.write_text("x")
    RunWriter(layout.root, kind="score", config={}, facts={"run_id": "score-1"}, fresh=True)
    assert json.loads(layout.meta.read_text())["run_id"] == "score-1"  # the first meta.json says which run
    assert not any(p.exists() for p in [*leftovers, layout.errors, layout.state, layout.chunk_part(0)])


def test_a_lock_is_never_left_without_its_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", full_disk)  # the pid cannot be written into the lock
    with pytest.raises(OSError):
        RunWriter(tmp_path / "r", kind="test", config={})
    assert not (tmp_path / "r" / ".lock").exists()
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", full_disk)  # the lock is taken, the first meta.json cannot be written
    with pytest.raises(OSError):
        RunWriter(tmp_path / "r", kind="test", config={})
    assert not (tmp_path / "r" / ".lock").exists()


def test_the_lock_of_a_writer_that_is_gone_is_removed_and_a_live_ones_kept(tmp_path, dead_pid):
    layout = RunLayout(tmp_path)
    layout.lock.write_text(str(os.getpid()))
    remove_stale_lock(layout)
    assert layout.lock.exists()
    layout.lock.write_text(str(dead_pid))
    remove_stale_lock(layout)
    assert not layout.lock.exists()


def test_samples_parquet_whose_last_write_fails_leaves_nothing(tmp_path, monkeypatch):
    writer = SamplesWriter(tmp_path / "samples.parquet", row_group_rows=4)
    writer.write(pd.DataFrame({"sample_id": ["a", "b"], "x": [1.0, 2.0]}))
    monkeypatch.setattr(writer, "_flush", full_disk)  # what close() writes last fails
    with pytest.raises(OSError):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_bad_samples_are_read_back_from_errors_parquet_once_their_parts_are_gone(tmp_path):
    layout = RunLayout(tmp_path)
    layout.scores_dir.mkdir()
    pd.DataFrame({"sample_id": ["a"], "path": ["a.jpg"], "reason": ["bad"]}).to_parquet(layout.error_part(0))
    pd.DataFrame({"sample_id": ["b"], "path": ["b.jpg"], "reason": ["worse"], "position": [3]}).to_parquet(
        layout.errors
    )
    assert read_error_parts(layout)["sample_id"].tolist() == ["a", "b"]


def test_a_full_disk_is_a_one_line_error_with_exit_status_2(tmp_path, monkeypatch, capsys):
    import mimic_explorer.commands.demo as demo

    monkeypatch.setattr(demo, "build_demo", full_disk)
    assert main(["demo", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No space left on device; free some space"), lines


def test_an_index_build_killed_after_its_swap_leaves_nothing_once_the_run_is_opened_again(tmp_path, monkeypatch):
    run = synthetic_run(tmp_path / "run", n=50, thumbnails=False)
    layout = RunLayout(run)
    open_index(run)
    aside = layout.index_old_dir("1-dead")  # what a build killed between its two renames leaves
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    app_index._OPEN.clear()
    open_index(run)
    assert not aside.exists() and layout.index_dir.is_dir()


def test_a_checkpoint_save_removes_a_killed_savers_temporary_and_its_own_on_failure(tmp_path, dead_pid, monkeypatch):
    from mimic_explorer.models import checkpoints

    stale = tmp_path / f".m.pt.tmp-{dead_pid}"
    stale.write_bytes(b"half")
    checkpoints.save_checkpoint({"w": torch.zeros(2)}, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]

    def half_then_full(obj, path):
        Path(path).write_bytes(b"half")
        full_disk()

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.zeros(2))


def test_a_shard_index_save_that_fails_leaves_no_temporary(tmp_path, monkeypatch):
    from mimic_explorer.data import wds

    monkeypatch.setattr(np, "savez", lambda handle, **arrays: (handle.write(b"half"), full_disk()))
    index = wds.ShardIndex.__new__(wds.ShardIndex)
    for name in wds.ShardIndex.__dataclass_fields__:
        setattr(index, name, np.zeros(1, dtype=np.int64))
    with pytest.raises(OSError):
        index.save(tmp_path / "index.npz")
    assert list(tmp_path.iterdir()) == []


def test_write_json_leaves_only_the_file(tmp_path):
    write_json(tmp_path / "a.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_run_whose_log_cannot_be_written_lets_go_of_its_lock_and_says_failed(tmp_path, monkeypatch):
    from mimic_explorer.commands import lifecycle
    from mimic_explorer.commands.demo import DemoConfig, build_demo

    monkeypatch.setattr(lifecycle, "tee_log", lambda *args: full_disk)  # run.log on a full disk
    with pytest.raises(OSError):
        build_demo(str(tmp_path / "run"), DemoConfig(epochs=1, reference_epochs=1), log=lambda text: None)
    assert not (tmp_path / "run" / ".lock").exists()
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "failed"
