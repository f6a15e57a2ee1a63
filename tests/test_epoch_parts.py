"""Score part files of a training run: names carry their epochs, and resuming drops what a kill left
past the last saved state."""

from __future__ import annotations

from pathlib import Path

from mimic_explorer.pipeline.epoch_parts import drop_parts_after, part_epochs


def test_part_names_give_first_and_last_epoch():
    assert part_epochs(Path("epoch-0007.parquet")) == (7, 7)
    assert part_epochs(Path("epoch-0003-0011.parquet")) == (3, 11)
    assert part_epochs(Path("epoch-0005-rank002.parquet")) == (5, 5)
    assert part_epochs(Path("epoch-0000-0019-rank010.parquet")) == (0, 19)


def test_parts_reaching_past_the_saved_epoch_are_dropped(tmp_path):
    scores = tmp_path / "scores"
    scores.mkdir()
    names = ["epoch-0000-0004.parquet", "epoch-0005-0009.parquet", "epoch-0003-rank001.parquet",
             "epoch-0006-rank000.parquet", "epoch-0002-0007-rank001.parquet", "chunk-000001.parquet"]
    for name in names:
        (scores / name).write_bytes(b"")
    drop_parts_after(tmp_path, 4)
    assert sorted(p.name for p in scores.iterdir()) == ["chunk-000001.parquet", "epoch-0000-0004.parquet",
                                                         "epoch-0003-rank001.parquet"]
