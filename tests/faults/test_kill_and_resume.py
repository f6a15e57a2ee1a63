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

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from tests.faults.conftest import Workspace
from tests.faults.harness import (Recording, Result, Zygote, assert_clean, assert_same_run, assert_whole_or_absent,
                                  files_of, record_env, temporaries)

pytestmark = pytest.mark.slow

FULL_DISK = "No space left on device"
#: the model a run saves (--save-model) and its sidecar, beside the run
SAVED = ("model.pt", "model.pt.meta.json")


def assert_one_line_error(result: Result, code: int = 2) -> None:
    """The command failed with exit ``code`` and its last words are one ``error:`` line naming a full disk."""
    lines = result.error_lines()
    assert result.rc == code, f"exit {result.rc}, {code} expected:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines and lines[-1].startswith("error: ") and FULL_DISK in lines[-1], result.stderr[-3000:]


class RunCommand:
    """A command that makes a run directory (``train``, ``score``, ``demo``): ``FOLDER/run``, with its
    own feature and shard-index cache ``FOLDER/cache``."""

    def __init__(self, name: str, argv: Callable[[Workspace, Path], list[str]], kills: int, fulls: int):
        self.name, self.argv, self.kills, self.fulls = name, argv, kills, fulls

    def prepare(self, space: Workspace, baseline: Path | None, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

    def run(self, zygote: Zygote, space: Workspace, folder: Path, env: dict | None = None) -> Result:
        return zygote.cli([*self.argv(space, folder), "--out", folder / "run"], env={"MIMIC_EXPLORER_CACHE": folder / "cache", **(env or {})})

    def assert_same(self, baseline: Path, folder: Path) -> None:
        assert_same_run(baseline / "run", folder / "run")
        assert {p.name for p in folder.iterdir()} <= {"run", "cache", *SAVED}, sorted(p.name for p in folder.iterdir())
        if (folder / "cache").exists():
            assert not temporaries(folder / "cache"), f"left in the cache: {temporaries(folder / 'cache')}"
        if (baseline / SAVED[0]).exists():  # the saved model and its sidecar
            saved, expected = (torch.load(f / SAVED[0], weights_only=True) for f in (folder, baseline))
            assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
            assert json.loads((folder / SAVED[1]).read_text()) == json.loads((baseline / SAVED[1]).read_text())

    def assert_failed_cleanly(self, result: Result, folder: Path) -> None:
        assert_one_line_error(result)
        run = folder / "run"
        if run.exists():
            assert not temporaries(run), f"left behind: {temporaries(run)}"
            assert_whole_or_absent(run)
            if (run / "meta.json").exists():
                assert json.loads((run / "meta.json").read_text())["status"] != "complete"


class ExportCommand:
    """``export`` of a finished Grad-Mimic run over a previous export of another filter (the pair
    ``keep.csv`` + ``keep.csv.spec.json`` it replaces)."""

    RULES = ["--rule", "clip_score_ref:top=60%", "--rule", "mimic_score:drop=20%"]

    def __init__(self, name: str, kills: int, fulls: int):
        self.name, self.kills, self.fulls = name, kills, fulls

    def source(self, space: Workspace) -> Path:
        return space.root / "setup" / "pairs_model"

    def prepare(self, space: Workspace, baseline: Path | None, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        previous = space.root / "previous-export"
        if not previous.exists():
            previous.mkdir()
            made = space.zygote.cli(["export", self.source(space), "--quantile", "0.5", "--format", "csv",
                                     "--out", previous / "keep.csv"])
            assert made.rc == 0, made.stderr
        self.previous = {name: (previous / name).read_bytes() for name in ("keep.csv", "keep.csv.spec.json")}
        for name in self.previous:
            shutil.copy2(previous / name, folder / name)

    def run(self, zygote: Zygote, space: Workspace, folder: Path, env: dict | None = None) -> Result:
        return zygote.cli(["export", self.source(space), *self.RULES, "--format", "csv", "--out", folder / "keep.csv"],
                          env=env)

    def assert_same(self, baseline: Path, folder: Path) -> None:
        assert files_of(folder) == {"keep.csv", "keep.csv.spec.json"}, sorted(files_of(folder))
        assert (folder / "keep.csv").read_bytes() == (baseline / "keep.csv").read_bytes()
        spec, expected = (json.loads((f / "keep.csv.spec.json").read_text()) for f in (folder, baseline))
        spec.pop("created"), expected.pop("created")
        assert spec == expected

    def assert_failed_cleanly(self, result: Result, folder: Path) -> None:
        assert_one_line_error(result)
        assert files_of(folder) == {"keep.csv", "keep.csv.spec.json"}, sorted(files_of(folder))
        for name, data in self.previous.items():
            assert (folder / name).read_bytes() == data, f"{name} changed: the previous pair must stay as it was"


class AppIndexCommand:
    """Opening a finished run in the app, which builds its index (``index/``) — the first time, or
    again when ``samples.parquet`` changed since (``stale``: a copy whose index was built before
    ``samples.parquet`` was touched)."""

    def __init__(self, name: str, kills: int, fulls: int, stale: bool):
        self.name, self.kills, self.fulls, self.stale = name, kills, fulls, stale

    def source(self, space: Workspace) -> Path:
        original = space.root / "setup" / "pairs_model"
        if not self.stale:
            return original
        stale = space.root / "stale-index-run"
        if not stale.exists():
            shutil.copytree(original, stale, copy_function=shutil.copy2)
            opened = space.zygote.call("tests.faults.app_open:open_in_app", [stale])
            assert opened.rc == 0 and (stale / "index").is_dir(), opened.stderr
            samples = stale / "samples.parquet"
            os.utime(samples, ns=(samples.stat().st_atime_ns, samples.stat().st_mtime_ns + 10**9))
        return stale

    def prepare(self, space: Workspace, baseline: Path | None, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.source(space), folder / "run", copy_function=shutil.copy2)

    def run(self, zygote: Zygote, space: Workspace, folder: Path, env: dict | None = None) -> Result:
        return zygote.call("tests.faults.app_open:open_in_app", [folder / "run"], env=env)

    def assert_same(self, baseline: Path, folder: Path) -> None:
        run, expected = folder / "run", baseline / "run"
        assert not (run / ".lock").exists()
        assert_clean(run)
        assert files_of(run) == files_of(expected), sorted(files_of(run) ^ files_of(expected))
        for name in sorted(files_of(expected / "index")):
            assert (run / "index" / name).read_bytes() == (expected / "index" / name).read_bytes(), f"index/{name} differs"

    def assert_failed_cleanly(self, result: Result, folder: Path) -> None:
        """A full disk while the index is built: the app still opens the run (from the whole table), and
        nothing of the failed build is left."""
        assert result.rc == 0, result.stderr[-3000:]
        assert result.stdout.split()[0] in ("DataFrame", "SampleColumns"), result.stdout
        assert not temporaries(folder / "run"), f"left behind: {temporaries(folder / 'run')}"


def _labelled_train(space: Workspace, *extra) -> list[str]:
    return ["train", *space.labelled, "--epochs", "3", "--checkpoint-every", "0", "--init", space.file("base.pt"),
            "--label-noise", "0.3", *extra]


def _pairs_train(space: Workspace, *extra) -> list[str]:
    return ["train", *space.paired, "--epochs", "3", "--checkpoint-every", "0", "--reference", space.file("P.pt"),
            "--caption-noise", "0.3", *extra]


COMMANDS = {c.name: c for c in [
    RunCommand("train labelled, linear probe",
               lambda s, f: _labelled_train(s, "--linear-probe", "--reference", s.file("probe_ref.pt")), kills=4, fulls=2),
    RunCommand("train labelled, fine-tune",
               lambda s, f: _labelled_train(s, "--reference", s.file("ft_ref.pt"), "--save-model", f / SAVED[0]), kills=4, fulls=2),
    RunCommand("train pairs, frozen towers", lambda s, f: _pairs_train(s, "--frozen-towers"), kills=4, fulls=2),
    RunCommand("train pairs, both towers", lambda s, f: _pairs_train(s, "--mimic-layer", "image"), kills=4, fulls=2),
    RunCommand("score labelled, all params",
               lambda s, f: ["score", *s.labelled, "--model", s.file("base.pt"), "--reference", s.file("ft_ref.pt"),
                          "--params", "all", "--method", "cos", "--label-noise", "0.3", "--chunk-size", "8"], kills=4, fulls=2),
    RunCommand("score labelled, linear probe",
               lambda s, f: ["score", *s.labelled, "--model", s.file("base.pt"), "--reference", s.file("probe_ref.pt"),
                          "--linear-probe", "--label-noise", "0.3", "--chunk-size", "8"], kills=3, fulls=1),
    RunCommand("score pairs",
               lambda s, f: ["score", *s.paired, "--model", s.file("M.pt"), "--reference", s.file("P.pt"),
                          "--caption-noise", "0.3", "--chunk-size", "8"], kills=4, fulls=2),
    ExportCommand("export", kills=4, fulls=2),
    AppIndexCommand("app index build", kills=3, fulls=1, stale=False),
    AppIndexCommand("app index rebuild (stale)", kills=3, fulls=1, stale=True),
    RunCommand("demo", lambda s, f: ["demo", "--epochs", "3", "--seed", "0", "--quiet"], kills=3, fulls=2),
]}


@dataclass
class Baseline:
    """An uninterrupted run of a command (``folder``) and what it committed and wrote."""

    folder: Path
    recording: Recording


@pytest.fixture(scope="module")
def baselines(tmp_path_factory, zygote, workspace):
    made: dict[str, Baseline] = {}
    root = tmp_path_factory.mktemp("baselines")

    def get(name: str) -> Baseline:
        if name not in made:
            command = COMMANDS[name]
            folder = root / str(len(made))
            command.prepare(workspace, None, folder)
            result = command.run(zygote, workspace, folder, record_env(root / f"{len(made)}.record"))
            assert result.rc == 0, f"{name}: {result.stderr[-3000:]}"
            made[name] = Baseline(folder, Recording.read(root / f"{len(made)}.record"))
        return made[name]

    return get


def _cases(kind: str) -> list:
    return [pytest.param(name, i, id=f"{name}-{i}") for name, command in COMMANDS.items()
            for i in range(command.kills if kind == "kill" else command.fulls)]


@pytest.mark.parametrize("name,number", _cases("kill"))
def test_a_killed_command_run_again_gives_the_uninterrupted_result(name, number, baselines, zygote, workspace, tally,
                                                                    tmp_path):
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
        name, number, baselines, zygote, workspace, tally, tmp_path):
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
    ("score pairs", "after", "meta.json", 0),  # the first meta.json: it must say which run the directory holds
    ("export", "after", "keep.csv.spec.json", 0),  # the new spec beside the previous keep-list
    ("app index rebuild (stale)", "after", "index", 0),  # the new index in place, the stale one set aside
]


@pytest.mark.parametrize("name,kind,file,occurrence", [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}")
                                                        for case in NAMED_KILLS])
def test_a_command_killed_where_a_kill_once_lost_a_run_gives_the_uninterrupted_result(
        name, kind, file, occurrence, baselines, zygote, workspace, tally, tmp_path):
    command, baseline = COMMANDS[name], baselines(name)
    point = baseline.recording.named_point(kind, file, occurrence)
    with tally.trial(name, "kill"):
        command.prepare(workspace, baseline.folder, tmp_path)
        killed = command.run(zygote, workspace, tmp_path, point.env())
        assert killed.rc == -9, f"{point}: not killed (exit {killed.rc}): {killed.stderr[-2000:]}"
        again = command.run(zygote, workspace, tmp_path)
        assert again.rc == 0, f"after {point}: exit {again.rc}:\n{again.stderr[-3000:]}"
        command.assert_same(baseline.folder, tmp_path)
