"""The run-directory contract (``store/layout.RunLayout``): every file where the contract puts it; part
names carry their epochs, chunks and ranks; resuming drops what a kill left past the last saved state;
a fresh run clears every part; no other package module spells a run file's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.meta import FORMAT_VERSION
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.writer import RunWriter
from mimic_explorer.util.cache import demo_run_dir

PACKAGE = Path(__file__).resolve().parents[2] / "mimic_explorer"


def test_part_names_give_first_and_last_epoch():
    assert RunLayout.part_epochs(Path("epoch-0007.parquet")) == (7, 7)
    assert RunLayout.part_epochs(Path("epoch-0003-0011.parquet")) == (3, 11)
    assert RunLayout.part_epochs(Path("epoch-0005-rank002.parquet")) == (5, 5)
    assert RunLayout.part_epochs(Path("epoch-0000-0019-rank010.parquet")) == (0, 19)


def test_parts_are_named_by_epoch_chunk_and_rank(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.epoch_part(7).name == "epoch-0007.parquet"
    assert layout.epoch_part(3, 3).name == "epoch-0003.parquet"
    assert layout.epoch_part(3, 11, rank=2).name == "epoch-0003-0011-rank002.parquet"
    assert layout.chunk_part(12).name == "chunk-000012.parquet"
    assert layout.chunk_part(12, rank=1).name == "chunk-000012-rank001.parquet"
    for part in (layout.epoch_part(0), layout.chunk_part(0), layout.error_part(0)):
        assert part.parent == layout.scores_dir
    for epoch in (0, 5, 19):
        assert RunLayout.part_epochs(layout.epoch_part(epoch)) == (epoch, epoch)
    assert RunLayout.part_epochs(layout.epoch_part(4, 9, rank=3)) == (4, 9)


def _touch(layout: RunLayout, names: list[str]) -> None:
    layout.scores_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (layout.scores_dir / name).write_bytes(b"")


def test_parts_reaching_past_the_saved_epoch_are_dropped(tmp_path):
    layout = RunLayout(tmp_path)
    _touch(
        layout,
        [
            "epoch-0000-0004.parquet",
            "epoch-0005-0009.parquet",
            "epoch-0003-rank001.parquet",
            "epoch-0006-rank000.parquet",
            "epoch-0002-0007-rank001.parquet",
            "chunk-000001.parquet",
        ],
    )
    layout.drop_epoch_parts_after(4)
    assert sorted(p.name for p in layout.scores_dir.iterdir()) == [
        "chunk-000001.parquet",
        "epoch-0000-0004.parquet",
        "epoch-0003-rank001.parquet",
    ]


def test_listing_tells_epoch_chunk_and_error_parts_apart(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.score_parts() == layout.epoch_parts() == layout.chunk_parts() == layout.error_parts() == []
    _touch(
        layout,
        [
            "epoch-0001.parquet",
            "epoch-0000.parquet",
            "chunk-000000-rank001.parquet",
            layout.error_part(1).name,
            "notes.txt",
        ],
    )
    assert [p.name for p in layout.epoch_parts()] == ["epoch-0000.parquet", "epoch-0001.parquet"]
    assert [p.name for p in layout.chunk_parts()] == ["chunk-000000-rank001.parquet"]
    assert layout.error_parts() == [layout.error_part(1)]
    assert [p.name for p in layout.score_parts()] == [
        "chunk-000000-rank001.parquet",
        "epoch-0000.parquet",
        "epoch-0001.parquet",
    ]
    layout.scores_file.write_bytes(b"")  # an older run's single file wins over any part
    assert layout.score_parts() == [layout.scores_file]


def test_clearing_removes_every_part_and_nothing_else(tmp_path):
    layout = RunLayout(tmp_path)
    _touch(layout, ["epoch-0000.parquet", "chunk-000003-rank000.parquet", layout.error_part(0).name, "notes.txt"])
    layout.clear_score_parts()
    assert [p.name for p in layout.scores_dir.iterdir()] == ["notes.txt"]


def test_files_sit_where_the_run_directory_contract_says(tmp_path):
    layout = RunLayout(str(tmp_path))
    assert layout.root == tmp_path and layout == RunLayout(tmp_path)
    names = {
        name: getattr(layout, name).relative_to(tmp_path).as_posix()
        for name in (
            "meta",
            "samples",
            "errors",
            "scores_dir",
            "scores_file",
            "thumbs_dir",
            "thumbs_blob",
            "thumbs_index",
            "filters_dir",
            "lock",
            "state",
            "log",
            "index_dir",
            "reference_probs",
            "embeddings_dir",
            "maps_dir",
            "reviews",
            "reviews_lock",
        )
    }
    assert names == {
        "meta": "meta.json",
        "samples": "samples.parquet",
        "errors": "errors.parquet",
        "scores_dir": "scores",
        "scores_file": "scores.parquet",
        "thumbs_dir": "thumbs",
        "thumbs_blob": "thumbs/thumbs.bin",
        "thumbs_index": "thumbs/index.parquet",
        "filters_dir": "filters",
        "lock": ".lock",
        "state": "state.pt",
        "log": "run.log",
        "index_dir": "index",
        "reference_probs": "reference_probs.npy",
        "embeddings_dir": "embeddings",
        "maps_dir": "maps",
        "reviews": "reviews.parquet",
        "reviews_lock": ".reviews.lock",
    }
    assert layout.embedding("text").relative_to(tmp_path).as_posix() == "embeddings/text.npy"
    assert layout.map_coords("image-pca").relative_to(tmp_path).as_posix() == "maps/image-pca.npy"
    assert layout.map_info("coords").relative_to(tmp_path).as_posix() == "maps/coords.json"
    assert layout.neighbour_index("image").relative_to(tmp_path).as_posix() == "neighbours/image.hnsw"


def test_a_run_written_through_the_layout_reads_back(tmp_path):
    writer = RunWriter(tmp_path / "r", kind="test", config={})
    layout = writer.layout
    writer.write_scores(layout.epoch_part(0), pd.DataFrame({"sample_id": ["a", "b"], "epoch": [0, 0]}))
    writer.write_scores(layout.epoch_part(1), pd.DataFrame({"sample_id": ["a", "b"], "epoch": [1, 1]}))
    writer.write_samples(pd.DataFrame({"sample_id": ["a", "b"]}))
    writer.complete(run_id="r")
    run = open_run(layout.root)
    assert sorted(run.scores["epoch"].tolist()) == [0, 0, 1, 1]
    assert layout.meta.is_file() and layout.samples.is_file() and not layout.lock.exists()


def test_the_demo_run_folder_names_the_format_it_was_written_in():
    assert demo_run_dir().name == f"demo-v{FORMAT_VERSION}"


#: run files and part-name prefixes only store/layout.py may spell in code
RUN_FILE_NAMES = (
    "meta.json",
    "samples.parquet",
    "scores.parquet",
    "errors.parquet",
    "index.parquet",
    "thumbs.bin",
    "state.pt",
    "run.log",
    ".lock",
    "reference_probs.npy",
    "reviews.parquet",
    ".reviews.lock",
)
PART_PREFIXES = ("epoch-", "chunk-", ".errors-rank")


def _names_a_run_file(text: str) -> bool:
    """A string constant (or f-string piece) that is a run file's name or a part's name, not prose."""
    if any(ch.isspace() for ch in text):
        return False
    name = text.rsplit("/", 1)[-1]
    return name in RUN_FILE_NAMES or name.startswith(PART_PREFIXES)


def _code_strings(tree: ast.AST):
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_only_the_layout_spells_run_file_names():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "store" / "layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "index.parquet" in text:  # not even in prose: the thumbnail index is the layout's alone
            offenders.append(f"{path.relative_to(PACKAGE)}: index.parquet")
        for line, value in _code_strings(ast.parse(text)):
            if _names_a_run_file(value):
                offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {value!r}")
    assert offenders == []
