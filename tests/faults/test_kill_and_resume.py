"""kill -9 and a full disk at seeded points of every command, then the same command again: the result
equals an uninterrupted run (tests/faults/harness.py says what "equals" and "lost" mean).

For each command an uninterrupted run is made once, with every file it commits and every write it
makes recorded (``killer.RECORD``); the fault points are drawn from that record with a fixed seed
(``MIMIC_EXPLORER_FAULT_SEED`` draws others). Each point is one test: the command is killed there
(or its disk fills up from there on), then run again in the same place with the same cache.

A full disk must fail the command with a one-line error (exit 2; the app, which cannot build its
index, opens the run from the whole table instead) and leave nothing half-written: every file under
its final name is whole, no temporary file, no lock, the run not marked complete, a previous
keep-list and its spec as they were.
"""

from __future__ import annotations

import pytest

from tests.faults.commands import COMMANDS, SAVED, AppIndexCommand

pytestmark = pytest.mark.slow


def _cases(kind: str) -> list:
    return [
        pytest.param(name, i, id=f"{name}-{i}")
        for name, command in COMMANDS.items()
        for i in range(command.kills if kind == "kill" else command.fulls)
    ]


@pytest.mark.parametrize("name,number", _cases("kill"))
def test_a_killed_command_run_again_gives_the_uninterrupted_result(
    name, number, baselines, zygote, workspace, tally, tmp_path
):
    command, baseline = COMMANDS[name], baselines(name)
    point = baseline.recording.kill_points(name, command.kills)[number]
    with tally.trial(name, "kill"):
        command.prepare(workspace, baseline.folder, tmp_path)
        killed = command.run(zygote, workspace, tmp_path, point.env())
        assert killed.rc == -9, f"{point}: not killed (exit {killed.rc}): {killed.stderr[-2000:]}"
        again = command.run(zygote, workspace, tmp_path)
        assert again.rc == 0, f"after {point}: exit {again.rc}:\n{again.stderr[-3000:]}"
        command.assert_same(baseline.folder, tmp_path)


@pytest.mark.parametrize("name,number", _cases("enospc"))
def test_a_full_disk_fails_in_one_line_and_the_command_run_again_gives_the_uninterrupted_result(
    name, number, baselines, zygote, workspace, tally, tmp_path
):
    command, baseline = COMMANDS[name], baselines(name)
    point = baseline.recording.full_disk_points(name, command.fulls)[number]
    with tally.trial(name, "enospc"):
        command.prepare(workspace, baseline.folder, tmp_path)
        failed = command.run(zygote, workspace, tmp_path, point.env())
        if failed.rc == 0 and not isinstance(command, AppIndexCommand):
            command.assert_same(baseline.folder, tmp_path)  # the failed write was one whose failure cannot matter
        else:
            command.assert_failed_cleanly(failed, tmp_path)
        again = command.run(zygote, workspace, tmp_path)
        assert again.rc == 0, f"after {point}: exit {again.rc}:\n{again.stderr[-3000:]}"
        command.assert_same(baseline.folder, tmp_path)


#: kill points named by the file committed (kind, file, which commit of it): where a kill once lost a run
NAMED_KILLS = [
    # after the last epoch's state: the resumed run skips the first pass, whose bad samples must survive
    ("train labelled, fine-tune", "after", "state.pt", -1),
    ("train labelled, fine-tune", "before", SAVED[0], -1),  # the saved model written, not yet in place
    ("train labelled, fine-tune", "before", SAVED[1], -1),  # ... and its sidecar
    ("train labelled, fine-tune", "after", "meta.json", -1),  # marked complete, its lock not yet gone
    # errors.parquet written and the error parts dropped, the run not yet marked complete
    ("train labelled, fine-tune", "before", "meta.json", -1),
    ("score labelled, all params", "before", "meta.json", -1),
    ("score pairs", "after", "meta.json", 0),  # the first meta.json: it must say which run the directory holds
    ("score pairs", "before", ".npz", 0),  # the shard's index written into the cache, not yet in place
    ("export", "after", "keep.csv.spec.json", 0),  # the new spec beside the previous keep-list
    ("app index rebuild (stale)", "after", "index", 0),  # the new index in place, the stale one set aside
]


@pytest.mark.parametrize(
    "name,kind,file,occurrence", [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}") for case in NAMED_KILLS]
)
def test_a_command_killed_where_a_kill_once_lost_a_run_gives_the_uninterrupted_result(
    name, kind, file, occurrence, baselines, zygote, workspace, tally, tmp_path
):
    command, baseline = COMMANDS[name], baselines(name)
    point = baseline.recording.named_point(kind, file, occurrence)
    with tally.trial(name, "kill"):
        command.prepare(workspace, baseline.folder, tmp_path)
        killed = command.run(zygote, workspace, tmp_path, point.env())
        assert killed.rc == -9, f"{point}: not killed (exit {killed.rc}): {killed.stderr[-2000:]}"
        again = command.run(zygote, workspace, tmp_path)
        assert again.rc == 0, f"after {point}: exit {again.rc}:\n{again.stderr[-3000:]}"
        command.assert_same(baseline.folder, tmp_path)
