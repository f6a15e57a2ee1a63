"""RunLayout names every run file and score part, and is what lists and drops parts."""

from __future__ import annotations

import pytest

from mimic_explorer.store.layout import RunLayout


def test_part_names_parse_back_and_list_in_order(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.score_parts() == [] and layout.epoch_parts() == []  # no scores/ folder yet
    layout.scores_dir.mkdir()
    parts = [layout.epoch_part(0), layout.epoch_part(1, 3), layout.epoch_part(4, 4, rank=2), layout.chunk_part(12, rank=0)]
    for part in parts + [layout.error_part(1)]:
        part.write_bytes(b"")
    assert [p.name for p in parts] == ["epoch-0000.parquet", "epoch-0001-0003.parquet", "epoch-0004-rank002.parquet",
                                       "chunk-000012-rank000.parquet"]
    assert [RunLayout.part_epochs(p) for p in parts[:3]] == [(0, 0), (1, 3), (4, 4)]
    with pytest.raises(ValueError, match="not an epoch part"):
        RunLayout.part_epochs(parts[3])
    assert layout.score_parts() == sorted(parts) and layout.error_parts() == [layout.error_part(1)]
    layout.drop_epoch_parts_after(2)  # 1-3 holds epoch 3: dropped with 4
    assert [p.name for p in layout.epoch_parts()] == ["epoch-0000.parquet"]
    layout.scores_file.write_bytes(b"")
    assert layout.score_parts() == [layout.scores_file]  # a legacy single file wins
    layout.clear_score_parts()
    assert layout.epoch_parts() == layout.chunk_parts() == layout.error_parts() == []  # a fresh run inherits no part


def test_files_sit_where_the_run_directory_contract_says(tmp_path):
    layout = RunLayout(str(tmp_path))
    assert layout.root == tmp_path and layout == RunLayout(tmp_path)
    names = {name: getattr(layout, name).relative_to(tmp_path).as_posix() for name in
             ("meta", "samples", "errors", "scores_dir", "scores_file", "thumbs_dir", "thumbs_blob", "thumbs_index",
              "filters_dir", "lock", "state", "log", "index_dir")}
    assert names == {"meta": "meta.json", "samples": "samples.parquet", "errors": "errors.parquet", "scores_dir": "scores",
                     "scores_file": "scores.parquet", "thumbs_dir": "thumbs", "thumbs_blob": "thumbs/thumbs.bin",
                     "thumbs_index": "thumbs/index.parquet", "filters_dir": "filters", "lock": ".lock",
                     "state": "state.pt", "log": "run.log", "index_dir": "index"}
