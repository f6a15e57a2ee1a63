"""``meta.json``: one typed schema for every run, written whole, read tolerantly from older runs."""

from __future__ import annotations

import json

import pytest

from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import (FORMAT_VERSION, RunMeta, read_checkpoint_sidecar, read_meta, read_run_meta,
                                       write_checkpoint_sidecar)
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
    layout.meta.write_text(json.dumps({"status": "complete", "run_id": "train-old", "warnings": None, "noise": None,
                                       "format_version": None, "custom": {"kept": 1}}))
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
