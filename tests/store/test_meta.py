"""``meta.json``: one typed schema for every run, written whole, read tolerantly from older runs, and
refused in one line (naming the file, the field and the value) when a known field has the wrong kind
or the format version is not one."""

from __future__ import annotations

import json

import pytest

from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.listing import find_runs
from mimic_explorer.store.meta import (
    FORMAT_VERSION,
    RunError,
    RunMeta,
    check_format,
    read_checkpoint_sidecar,
    read_meta,
    read_run_meta,
    write_checkpoint_sidecar,
)
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.writer import RunWriter


def test_a_new_run_writes_every_field_of_the_schema(tmp_path):
    writer = RunWriter(tmp_path / "r", kind="train", config={"epochs": 2})
    writer.meta.set(run_id="train-abc", same_init=False, world_size=2)
    writer.warn("careful")
    writer.complete(summary={"samples": 3})
    raw = json.loads(RunLayout(tmp_path / "r").meta.read_text())
    assert set(raw) == {f for f in RunMeta.__dataclass_fields__ if f != "extra"}
    assert raw["status"] == "complete" and raw["kind"] == "train" and raw["format_version"] == FORMAT_VERSION
    assert raw["same_init"] is False and raw["world_size"] == 2 and raw["warnings"] == ["careful"]
    assert read_run_meta(tmp_path / "r") == writer.meta


def test_setting_an_unknown_field_is_an_error_not_a_new_key():
    with pytest.raises(TypeError, match="no field"):
        RunMeta().set(samefinit=True)


def test_an_older_meta_reads_with_defaults_and_keeps_what_it_does_not_know(tmp_path):
    layout = RunLayout(tmp_path)
    layout.meta.write_text(
        json.dumps(
            {
                "status": "complete",
                "run_id": "train-old",
                "warnings": None,
                "noise": None,
                "format_version": None,
                "custom": {"kept": 1},
            }
        )
    )
    meta = read_run_meta(tmp_path)
    assert meta.format_version == 0 and meta.kind == "unknown" and meta.same_init is None
    assert meta.warnings == [] and meta.noise == {} and meta.extra == {"custom": {"kept": 1}}
    as_dict = read_meta(tmp_path)
    assert as_dict["custom"] == {"kept": 1} and as_dict["run_id"] == "train-old" and as_dict["summary"] == {}
    assert RunMeta.from_dict(as_dict) == meta


def test_a_meta_without_a_status_is_not_taken_for_a_running_one():
    assert RunMeta.from_dict({}).status == "unknown"


def test_checkpoint_sidecars_round_trip_and_a_broken_one_reads_as_unknown(tmp_path):
    checkpoint = tmp_path / "model.pt"
    assert read_checkpoint_sidecar(checkpoint) == {}
    path = write_checkpoint_sidecar(checkpoint, {"init_fingerprint": "abc"})
    assert read_checkpoint_sidecar(checkpoint) == {"init_fingerprint": "abc"}
    path.write_text("{not json")
    assert read_checkpoint_sidecar(checkpoint) == {}


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("summary", [1], "'summary' should be an object, not a list ([1])"),
        ("class_names", "cat,dog", "'class_names' should be a list, not a string (\"cat,dog\")"),
        ("world_size", True, "'world_size' should be an integer, not true or false (true)"),
        ("run_id", 5, "'run_id' should be a string, not an integer (5)"),
        ("reference", [], "'reference' should be an object, not a list ([])"),
        ("same_init", "yes", "'same_init' should be true or false, not a string (\"yes\")"),
    ],
)
def test_a_known_field_of_the_wrong_kind_is_one_line_naming_the_file_and_field(tmp_path, field, value, words):
    layout = RunLayout(tmp_path)
    layout.meta.write_text(json.dumps({"status": "complete", field: value}))
    with pytest.raises(RunError) as raised:
        read_run_meta(tmp_path)
    assert str(raised.value) == f"{layout.meta} cannot be read: {words}"


@pytest.mark.parametrize("version", ["9", "1", -1, True, 1.0, [1]])
def test_a_format_version_that_is_not_a_version_is_refused_naming_it(tmp_path, version):
    layout = RunLayout(tmp_path)
    layout.meta.write_text(json.dumps({"status": "complete", "format_version": version}))
    with pytest.raises(RunError) as raised:
        read_run_meta(tmp_path)
    message = str(raised.value)
    assert message.startswith(
        f"{layout.meta} cannot be read: format_version {json.dumps(version)} is not a format version"
    )
    assert "\n" not in message


def test_a_newer_format_reads_for_listing_but_does_not_open(tmp_path):
    layout = RunLayout(tmp_path)
    layout.meta.write_text(json.dumps({"status": "complete", "run_id": "future", "format_version": FORMAT_VERSION + 8}))
    meta = read_run_meta(tmp_path)
    assert meta.format_version == FORMAT_VERSION + 8 and meta.run_id == "future"
    with pytest.raises(RunError, match=f"^{layout.meta} is format {FORMAT_VERSION + 8}, written by a newer"):
        check_format(meta, tmp_path)
    with pytest.raises(RunError, match="written by a newer mimic_explorer"):
        open_run(tmp_path)
    check_format(RunMeta(), tmp_path)  # this package's own format opens


def test_find_runs_lists_an_unreadable_run_last_with_its_reason(tmp_path):
    writer = RunWriter(tmp_path / "good", kind="train", config={})
    writer.meta.set(run_id="train-good")
    writer.complete()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{not json")
    entries = find_runs(tmp_path)
    assert [e.run_id for e in entries] == ["train-good", "bad"]
    assert entries[0].problem == "" and entries[0].note == ""
    assert entries[1].status == "unreadable" and entries[1].problem.startswith(
        f"{tmp_path / 'bad' / 'meta.json'} cannot be read: "
    )
    assert "[unreadable]" in entries[1].label
