"""The commands the fault tests break, each as what a trial needs: how to set up its folder, run it
(with a fault, or without), and check that it gave the uninterrupted result or failed cleanly."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.faults.harness import (
    Recording,
    Result,
    Zygote,
    assert_clean,
    assert_same_run,
    assert_whole_or_absent,
    files_of,
    record_env,
    temporaries,
)
from tests.faults.workspace import Workspace

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
        return zygote.cli(
            [*self.argv(space, folder), "--out", folder / "run"],
            env={"MIMIC_EXPLORER_CACHE": folder / "cache", **(env or {})},
        )

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

    RULES = ("--rule", "clip_score_ref:top=60%", "--rule", "mimic_score:drop=20%")

    def __init__(self, name: str, kills: int, fulls: int):
        self.name, self.kills, self.fulls = name, kills, fulls

    def source(self, space: Workspace) -> Path:
        return space.root / "setup" / "pairs_model"

    def prepare(self, space: Workspace, baseline: Path | None, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        previous = space.root / "previous-export"
        if not previous.exists():
            previous.mkdir()
            made = space.zygote.cli(
                ["export", self.source(space), "--quantile", "0.5", "--format", "csv", "--out", previous / "keep.csv"]
            )
            assert made.rc == 0, made.stderr
        self.previous = {name: (previous / name).read_bytes() for name in ("keep.csv", "keep.csv.spec.json")}
        for name in self.previous:
            shutil.copy2(previous / name, folder / name)

    def run(self, zygote: Zygote, space: Workspace, folder: Path, env: dict | None = None) -> Result:
        return zygote.cli(
            ["export", self.source(space), *self.RULES, "--format", "csv", "--out", folder / "keep.csv"], env=env
        )

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
        # the first open builds the index: one that ``export`` built in the shared run is not copied
        fresh = None if self.stale else shutil.ignore_patterns("index", ".index*")
        shutil.copytree(self.source(space), folder / "run", copy_function=shutil.copy2, ignore=fresh)

    def run(self, zygote: Zygote, space: Workspace, folder: Path, env: dict | None = None) -> Result:
        return zygote.call("tests.faults.app_open:open_in_app", [folder / "run"], env=env)

    def assert_same(self, baseline: Path, folder: Path) -> None:
        run, expected = folder / "run", baseline / "run"
        assert not (run / ".lock").exists()
        assert_clean(run)
        assert files_of(run) == files_of(expected), sorted(files_of(run) ^ files_of(expected))
        for name in sorted(files_of(expected / "index")):
            assert (run / "index" / name).read_bytes() == (expected / "index" / name).read_bytes(), (
                f"index/{name} differs"
            )

    def assert_failed_cleanly(self, result: Result, folder: Path) -> None:
        """A full disk while the index is built: the app still opens the run (from the whole table), and
        nothing of the failed build is left."""
        assert result.rc == 0, result.stderr[-3000:]
        assert result.stdout.split()[0] in ("DataFrame", "SampleColumns"), result.stdout
        assert not temporaries(folder / "run"), f"left behind: {temporaries(folder / 'run')}"


def _labelled_train(space: Workspace, *extra) -> list[str]:
    return [
        "train",
        *space.labelled,
        "--epochs",
        "3",
        "--checkpoint-every",
        "0",
        "--init",
        space.file("base.pt"),
        "--label-noise",
        "0.3",
        *extra,
    ]


def _pairs_train(space: Workspace, *extra) -> list[str]:
    return [
        "train",
        *space.paired,
        "--epochs",
        "3",
        "--checkpoint-every",
        "0",
        "--reference",
        space.file("P.pt"),
        "--caption-noise",
        "0.3",
        *extra,
    ]


COMMANDS = {
    c.name: c
    for c in [
        RunCommand(
            "train labelled, linear probe",
            lambda s, f: _labelled_train(s, "--linear-probe", "--reference", s.file("probe_ref.pt")),
            kills=4,
            fulls=2,
        ),
        RunCommand(
            "train labelled, fine-tune",
            lambda s, f: _labelled_train(s, "--reference", s.file("ft_ref.pt"), "--save-model", f / SAVED[0]),
            kills=4,
            fulls=2,
        ),
        RunCommand("train pairs, frozen towers", lambda s, f: _pairs_train(s, "--frozen-towers"), kills=4, fulls=2),
        RunCommand(
            "train pairs, both towers", lambda s, f: _pairs_train(s, "--mimic-layer", "image"), kills=4, fulls=2
        ),
        RunCommand(
            "score labelled, all params",
            lambda s, f: [
                "score",
                *s.labelled,
                "--model",
                s.file("base.pt"),
                "--reference",
                s.file("ft_ref.pt"),
                "--params",
                "all",
                "--method",
                "cos",
                "--label-noise",
                "0.3",
                "--chunk-size",
                "8",
            ],
            kills=4,
            fulls=2,
        ),
        RunCommand(
            "score labelled, linear probe",
            lambda s, f: [
                "score",
                *s.labelled,
                "--model",
                s.file("base.pt"),
                "--reference",
                s.file("probe_ref.pt"),
                "--linear-probe",
                "--label-noise",
                "0.3",
                "--chunk-size",
                "8",
            ],
            kills=3,
            fulls=1,
        ),
        RunCommand(
            "score pairs",
            lambda s, f: [
                "score",
                *s.paired,
                "--model",
                s.file("M.pt"),
                "--reference",
                s.file("P.pt"),
                "--caption-noise",
                "0.3",
                "--chunk-size",
                "8",
            ],
            kills=4,
            fulls=2,
        ),
        ExportCommand("export", kills=4, fulls=2),
        AppIndexCommand("app index build", kills=3, fulls=1, stale=False),
        AppIndexCommand("app index rebuild (stale)", kills=3, fulls=1, stale=True),
        RunCommand("demo", lambda s, f: ["demo", "--epochs", "3", "--seed", "0", "--quiet"], kills=3, fulls=1),
    ]
}


@dataclass
class Baseline:
    """An uninterrupted run of a command (``folder``) and what it committed and wrote."""

    folder: Path
    recording: Recording


def make_baseline(command, space: Workspace, zygote: Zygote, folder: Path) -> Baseline:
    """An uninterrupted run of ``command`` in ``folder``, recording what it committed and wrote."""
    command.prepare(space, None, folder)
    record = folder.with_name(folder.name + ".record")
    result = command.run(zygote, space, folder, record_env(record))
    assert result.rc == 0, f"{command.name}: {result.stderr[-3000:]}"
    return Baseline(folder, Recording.read(record))
