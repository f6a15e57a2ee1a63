"""torch's intra-op threads: the cores this process may use (affinity, cgroup quota) shared among the
torchrun processes on this machine, unless ``--threads`` or ``MIMIC_EXPLORER_THREADS`` says otherwise;
a run sets them for itself and gives the caller's count back."""

from __future__ import annotations

import os

import pytest
import torch

from mimic_explorer.util.threads import (
    THREADS_VARIABLE,
    cgroup_cpu_limit,
    choose_threads,
    default_threads,
    free_cores,
    run_threads,
    usable_cores,
)

AFFINITY = len(os.sched_getaffinity(0))


def _cgroup_v2(tmp_path, text: str):
    (tmp_path / "cpu.max").write_text(text + "\n")
    return tmp_path


def _cgroup_v1(tmp_path, quota: str, period: str = "100000"):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return tmp_path


def test_a_cgroup_quota_is_read_in_cores_from_either_cgroup_version(tmp_path):
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "a", "150000 100000")) == 1.5
    assert cgroup_cpu_limit(_cgroup_v2(tmp_path / "b", "max 100000")) is None
    assert cgroup_cpu_limit(_cgroup_v1(tmp_path / "c", "300000")) == 3.0
    assert cgroup_cpu_limit(_cgroup_v1(tmp_path / "d", "-1")) is None
    assert cgroup_cpu_limit(tmp_path / "nothing-here") is None


@pytest.fixture
def tmp_path(tmp_path):
    for name in "abcd":
        (tmp_path / name).mkdir()
    return tmp_path


def test_the_quota_caps_the_affinity_rounded_down_and_never_below_one(tmp_path):
    assert usable_cores(tmp_path / "a") == AFFINITY  # no quota: the affinity mask
    assert usable_cores(_cgroup_v2(tmp_path / "b", "150000 100000")) == min(AFFINITY, 1)
    assert usable_cores(_cgroup_v2(tmp_path / "c", "50000 100000")) == 1
    assert usable_cores(_cgroup_v2(tmp_path / "d", f"{64 * 100000} 100000")) == AFFINITY  # a large quota: the mask


def test_the_free_cores_are_shared_among_the_torchrun_processes_on_this_machine(tmp_path):
    root, idle = tmp_path / "a", {"load": 0.0, "machine_cores": AFFINITY}
    assert default_threads({}, root, **idle) == AFFINITY
    assert default_threads({"LOCAL_WORLD_SIZE": "2"}, root, **idle) == max(1, AFFINITY // 2)
    assert default_threads({"LOCAL_WORLD_SIZE": str(AFFINITY * 4)}, root, **idle) == 1


def test_cores_the_machines_other_work_keeps_busy_are_left_to_it(tmp_path):
    root = tmp_path / "a"
    whole = AFFINITY  # this process may use every core of the machine
    assert free_cores(root, load=0.4, machine_cores=whole) == AFFINITY
    assert free_cores(root, load=1.0, machine_cores=whole) == max(1, AFFINITY - 1)
    assert free_cores(root, load=AFFINITY * 3.0, machine_cores=whole) == 1  # never below one
    # inside a smaller cpuset the machine's load says nothing about this process's share
    assert free_cores(root, load=AFFINITY * 3.0, machine_cores=whole * 8) == AFFINITY


def test_threads_given_beat_the_variable_which_beats_omp_which_beats_the_default():
    both = {THREADS_VARIABLE: "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(2, both) == (2, "--threads")
    assert choose_threads(None, both) == (3, THREADS_VARIABLE)
    assert choose_threads(None, {"OMP_NUM_THREADS": "5"}) == (None, "OMP_NUM_THREADS")  # torch already honours it
    count, who = choose_threads(None, {})  # the machine's load is read now: the count may move with it
    assert who == "the free cores this process may use" and 1 <= count <= AFFINITY


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_count_is_one_line_naming_where_it_came_from(value):
    with pytest.raises(ValueError, match=f"{THREADS_VARIABLE} must be a whole number of threads >= 1, got '{value}'"):
        choose_threads(None, {THREADS_VARIABLE: value})
    with pytest.raises(ValueError, match="--threads must be a whole number of threads >= 1"):
        choose_threads(0, {})


def test_a_run_sets_its_threads_and_gives_the_callers_back(monkeypatch):
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    with run_threads(wanted) as during:
        assert during == wanted == torch.get_num_threads()
    assert torch.get_num_threads() == before
    monkeypatch.setenv(THREADS_VARIABLE, str(wanted))
    with run_threads() as during:
        assert during == wanted
    assert torch.get_num_threads() == before
