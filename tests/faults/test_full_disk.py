"""A real full disk: each command writes onto a small tmpfs (its run, its cache, its saved model) that
fills up at a seeded size, then the disk is made larger and the same command run again.

The injected full disk of test_kill_and_resume.py fails the writes the package makes itself; here the
disk is really full, so a write inside pyarrow, numpy or torch fails too, wherever it falls. The
outcome must be the same: a one-line error (exit 2; the app opens the run from the whole table),
nothing half-written, and the rerun gives the uninterrupted result. Mounting needs root: where it is
not allowed the tests skip.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.faults.commands import COMMANDS, AppIndexCommand
from tests.faults.harness import SEED

pytestmark = pytest.mark.slow

#: commands put on a full disk, and how many seeded sizes each
CASES = {
    "train labelled, linear probe": 1,
    "train labelled, fine-tune": 2,
    "train pairs, frozen towers": 1,
    "train pairs, both towers": 1,
    "score labelled, all params": 1,
    "score labelled, linear probe": 1,
    "score pairs": 1,
    "export": 2,
    "app index build": 1,
    "app index rebuild (stale)": 1,
    "demo": 1,
}
ROOMY_KB = 65536


def _mount(folder: Path, size_kb: int, remount: bool = False) -> subprocess.CompletedProcess:
    options = f"remount,size={size_kb}k" if remount else f"size={size_kb}k"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)


@pytest.fixture
def disk(tmp_path):
    """A tmpfs mounted at ``tmp_path / 'disk'`` (roomy), unmounted afterwards; skips where mounting fails."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None or _mount(folder, ROOMY_KB).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _used_kb(folder: Path) -> int:
    return -(-shutil.disk_usage(folder).used // 1024)


def _footprint_kb(folder: Path) -> int:
    return -(-sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024)


@pytest.mark.parametrize("name,number", [pytest.param(n, i, id=f"{n}-{i}") for n, k in CASES.items() for i in range(k)])
def test_a_command_on_a_full_disk_fails_in_one_line_and_run_again_on_a_larger_one_gives_the_uninterrupted_result(
    name, number, disk, baselines, zygote, workspace, tally
):
    command, baseline = COMMANDS[name], baselines(name)
    command.prepare(workspace, baseline.folder, disk)  # what the command finds there before it starts
    # what the command writes: every file of its uninterrupted run, or the index an app's open adds
    written = baseline.folder / "run" / "index" if isinstance(command, AppIndexCommand) else baseline.folder
    footprint = _footprint_kb(written) + 4 * len(list(written.rglob("*")))  # a tmpfs page at least per file
    room = random.Random(zlib.crc32(f"{SEED}-{name}-tmpfs".encode())).sample(range(4, 2 * footprint), CASES[name])[
        number
    ]
    with tally.trial(name, "tmpfs"):
        assert _mount(disk, _used_kb(disk) + room, remount=True).returncode == 0
        failed = command.run(zygote, workspace, disk)
        print(f"{name}: {room} KB free -> exit {failed.rc}")
        if failed.rc == 0 and not isinstance(command, AppIndexCommand):
            command.assert_same(baseline.folder, disk)  # it fitted
        else:
            command.assert_failed_cleanly(failed, disk)
        assert _mount(disk, ROOMY_KB, remount=True).returncode == 0
        again = command.run(zygote, workspace, disk)
        assert again.rc == 0, f"with {room} KB free, then room: exit {again.rc}:\n{again.stderr[-3000:]}"
        command.assert_same(baseline.folder, disk)
