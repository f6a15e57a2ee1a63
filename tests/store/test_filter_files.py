"""A keep-list and its spec are one change: written in full to temporary names, then the spec renamed and
the keep-list last. A full disk or a read-only folder leaves the previous pair as it was and no
temporary file; a pair torn between the two renames (or put together by hand) is said by its reader."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters.rules import FilterRule, apply_rule
from mimic_explorer.filters.spec import SpecError
from mimic_explorer.store import atomic, filter_files
from mimic_explorer.store.filter_files import (
    ExportError,
    export,
    file_facts,
    latest_saved_rule,
    pair_problem,
    read_spec_file,
    save_to_run,
)
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.sample_columns import indexed_samples
from tests.ui_helpers import synthetic_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "specs"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return open_run(synthetic_run(tmp_path_factory.mktemp("pairs") / "run", n=300, thumbnails=False))


@pytest.fixture(params=["frame", "index"])
def samples(request, run):
    """The run's samples in memory, and through the app index (the keep-list is then streamed)."""
    return run.samples if request.param == "frame" else indexed_samples(run)


def _pair(folder: Path, name: str = "keep.csv") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_export_records_its_keep_list_in_the_spec(run, samples, tmp_path):
    result, spec, out, spec_path = export(samples, run.meta, FilterRule("quantile", 0.4), "csv", tmp_path / "keep.csv")
    written = json.loads(spec_path.read_text())
    assert written == spec and written["keep_list"] == file_facts(out) and written["kept"] == result.kept
    assert len(pd.read_csv(out)) == result.kept and pair_problem(out, written) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv", "keep.csv.spec.json"]


def _full_disk_after(written: int, path_at: int):
    """A writer that puts ``written`` bytes into its file (argument ``path_at``), then finds the disk full."""

    def write(*args):
        Path(args[path_at]).write_bytes(b"x" * written)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.mark.parametrize("failing, path_at", [("_write_spec_file", 0), ("write_keep_list_into", -1)])
def test_a_full_disk_at_either_write_leaves_the_previous_pair_and_no_temporary_file(
    run, samples, tmp_path, monkeypatch, failing, path_at
):
    export(samples, run.meta, FilterRule("quantile", 0.3), "csv", tmp_path / "keep.csv")
    before = _pair(tmp_path)
    monkeypatch.setattr(filter_files, failing, _full_disk_after(100, path_at))
    with pytest.raises(
        ExportError, match=r"cannot write .*keep\.csv(\.spec\.json)?: No space left on device; nothing was replaced"
    ):
        export(samples, run.meta, FilterRule("quantile", 0.9), "csv", tmp_path / "keep.csv")
    assert _pair(tmp_path) == before  # same names, same bytes: no temporary file either
    spec = json.loads((tmp_path / "keep.csv.spec.json").read_text())
    assert pair_problem(tmp_path / "keep.csv", spec) is None


def test_a_read_only_folder_is_one_line_and_writes_nothing(run, tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(
        atomic.tempfile, "mkstemp", refused
    )  # root may write anywhere: refuse as a read-only folder does
    with pytest.raises(ExportError, match=r"cannot write .*keep\.npy: Permission denied; nothing was replaced"):
        export(run.samples, run.meta, FilterRule("ensemble"), "npy", tmp_path / "keep.npy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_truly_read_only_folder_is_one_line(run, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ExportError, match="Permission denied"):
            export(run.samples, run.meta, FilterRule("ensemble"), "csv", folder / "keep.csv")
    finally:
        folder.chmod(0o755)


def test_a_folder_as_the_keep_list_or_its_spec_is_refused_before_any_work(run, tmp_path):
    (tmp_path / "keep.csv").mkdir()
    with pytest.raises(ExportError, match=r"keep\.csv: it is a folder"):
        export(run.samples, run.meta, FilterRule("ensemble"), "csv", tmp_path / "keep.csv")
    (tmp_path / "b.csv.spec.json").mkdir()
    with pytest.raises(ExportError, match=r"b\.csv\.spec\.json: it is a folder"):
        export(run.samples, run.meta, FilterRule("ensemble"), "csv", tmp_path / "b.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv.spec.json", "keep.csv"]


def test_a_pair_torn_between_the_renames_is_said_by_the_writer_and_the_reader(run, tmp_path, monkeypatch):
    export(run.samples, run.meta, FilterRule("quantile", 0.3), "csv", tmp_path / "keep.csv")
    old_keep_list = (tmp_path / "keep.csv").read_bytes()
    renames = []
    real_replace = os.replace

    def crash_on_second(src, dst):
        renames.append(Path(dst).name)
        if len(renames) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_second)
    with pytest.raises(ExportError, match=r"spec keep\.csv\.spec\.json was replaced but the keep-list was not"):
        export(run.samples, run.meta, FilterRule("quantile", 0.8), "csv", tmp_path / "keep.csv")
    assert renames == ["keep.csv.spec.json", "keep.csv"]  # the spec first, the keep-list last
    assert (tmp_path / "keep.csv").read_bytes() == old_keep_list
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv", "keep.csv.spec.json"]
    problem = pair_problem(tmp_path / "keep.csv", read_spec_file(tmp_path / "keep.csv.spec.json"))
    assert problem and "keep.csv is not the keep-list its spec describes" in problem and "different exports" in problem


def test_a_spec_written_before_keep_list_hashes_is_checked_by_count(tmp_path):
    shutil.copy(FIXTURES / "threshold.csv", tmp_path / "keep.csv")
    spec = json.loads((FIXTURES / "threshold.csv.spec.json").read_text())
    assert pair_problem(tmp_path / "keep.csv", spec) is None
    lines = (tmp_path / "keep.csv").read_text().splitlines(keepends=True)
    (tmp_path / "keep.csv").write_text("".join(lines[:-3]))
    assert pair_problem(tmp_path / "keep.csv", spec) == (
        f"keep.csv lists {spec['kept'] - 3} samples but its spec records kept "
        f"{spec['kept']}: they come from different exports"
    )
    mask = np.zeros(300, dtype=bool)
    np.save(tmp_path / "keep.npy", mask)
    assert "keep_mask_sha256 differs" in pair_problem(tmp_path / "keep.npy", {**spec, "format": "npy"})
    assert pair_problem(tmp_path / "gone.csv", spec) == "its keep-list gone.csv is missing"


def test_a_spec_file_is_read_only_when_it_is_a_small_regular_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")  # opening it would wait for a writer forever
    with pytest.raises(SpecError, match="cannot read it: not a regular file"):
        read_spec_file(tmp_path / "fifo.json")
    with pytest.raises(SpecError, match="cannot read it: not a regular file"):
        read_spec_file(tmp_path)
    with pytest.raises(SpecError, match="cannot read it: No such file"):
        read_spec_file(tmp_path / "missing.json")
    with open(tmp_path / "huge.json", "wb") as fh:
        fh.truncate(64 * 2**20)  # sparse: no disk used, refused by its size before it is read
    with pytest.raises(SpecError, match=r"67,108,864 bytes is too large for a filter spec"):
        read_spec_file(tmp_path / "huge.json")


def test_the_latest_saved_filter_is_verified_and_its_keep_list_checked(run, tmp_path):
    run_dir = shutil.copytree(run.path, tmp_path / "run")
    rule = FilterRule("threshold", 0.5, class_overrides={3: 0.7})
    _, spec, out, spec_path = save_to_run(run_dir, run.samples, run.meta, rule, "parquet")
    saved = latest_saved_rule(run_dir, run.meta)
    assert saved.rule == rule and saved.spec_path == spec_path and saved.keep_list_problem is None
    out.write_bytes(out.read_bytes()[:-10])
    assert "not the keep-list its spec describes" in latest_saved_rule(run_dir, run.meta).keep_list_problem
    spec["rule"]["value"] = 0.1
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(
        SpecError,
        match=rf"saved filter {spec_path.name}: the spec was edited after it was written "
        r"\(the rule's threshold is 0.1 but the hashed spec says 0.5\)",
    ):
        latest_saved_rule(run_dir, run.meta)


def test_apply_and_export_agree_on_the_index_and_in_memory(run, tmp_path):
    rule = FilterRule("keep_count", 120, "reference_loss")
    a = export(run.samples, run.meta, rule, "parquet", tmp_path / "a.parquet")
    b = export(indexed_samples(run), run.meta, rule, "parquet", tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(a[2]), pd.read_parquet(b[2]))
    assert a[1]["spec_hash"] == b[1]["spec_hash"] and a[0].kept == apply_rule(run.samples, rule).kept == 120
