"""2-D layouts of a run's embeddings and a user's own coordinates (``maps``): classes become regions,
the layout is kept in the run and made once, and a coordinates file is checked whole before anything
is kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.maps import layout2d
from mimic_explorer.maps.coords import coords_by_row
from mimic_explorer.maps.layout2d import MapError, layout
from mimic_explorer.maps.run_map import NoEmbeddings, current_map, embedding, ensure_map, import_coords
from mimic_explorer.store.layout import RunLayout
from tests.ui_helpers import synthetic_run


def _separation(coords: np.ndarray, groups: np.ndarray) -> float:
    """Between-group over within-group spread of the points (large: groups are regions)."""
    centres = np.stack([coords[groups == g].mean(axis=0) for g in np.unique(groups)])
    within = np.mean([coords[groups == g].std(axis=0).mean() for g in np.unique(groups)])
    return float(centres.std(axis=0).mean() / within)


def test_pca_lays_out_classes_as_regions_and_projects_rows_it_was_not_fitted_on(monkeypatch):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 3, 3000)
    vectors = (np.eye(3, 32)[groups] * 6 + rng.standard_normal((3000, 32))).astype(np.float16)
    vectors[7] = np.nan  # a sample the end-of-run pass did not reach
    monkeypatch.setattr(layout2d, "FIT_ROWS", 500)  # fitted on a sample, every row projected
    monkeypatch.setattr(layout2d, "CHUNK_ROWS", 1000)
    coords = layout(vectors, "pca")
    assert coords.shape == (3000, 2) and coords.dtype == np.float32
    assert np.isnan(coords[7]).all() and np.isfinite(np.delete(coords, 7, axis=0)).all()
    keep = np.arange(3000) != 7
    assert _separation(coords[keep], groups[keep]) > 2
    np.testing.assert_array_equal(layout(vectors, "pca"), coords)  # seeded: the same map again


def test_umap_is_refused_with_how_to_install_it_when_missing(monkeypatch):
    monkeypatch.setattr(layout2d, "umap_available", lambda: False)
    with pytest.raises(MapError, match=r"pip install 'mimic-explorer\[umap\]'"):
        layout(np.zeros((10, 4), dtype=np.float16), "umap")


@pytest.mark.slow  # umap-learn compiles its numba kernels on first use
def test_umap_lays_out_classes_as_regions():
    pytest.importorskip("umap")
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 3, 600)
    vectors = (np.eye(3, 16)[groups] * 6 + rng.standard_normal((600, 16))).astype(np.float16)
    coords = layout(vectors, "umap")
    assert np.isfinite(coords).all() and _separation(coords, groups) > 2


def test_a_run_map_is_made_once_kept_and_read_back(tmp_path):
    run = synthetic_run(tmp_path / "run", n=400, embeddings=16, thumbnails=False)
    run_layout = RunLayout(run)
    name, coords = ensure_map(run_layout, 400)
    assert name == "image-pca" and run_layout.map_names() == ["image-pca"]
    stamp = run_layout.map_coords(name).stat().st_mtime_ns
    again_name, again = ensure_map(run_layout, 400)
    assert again_name == name and run_layout.map_coords(name).stat().st_mtime_ns == stamp  # not made again
    np.testing.assert_array_equal(np.asarray(again), coords)
    truth = pd.read_parquet(run / "samples.parquet")["true_label"].to_numpy()
    assert _separation(np.asarray(coords), truth) > 1.5  # the classes are regions of the map


def test_a_run_without_embeddings_says_which_runs_have_them(tmp_path):
    synthetic_run(tmp_path / "with", n=50, embeddings=8, thumbnails=False)
    bare = synthetic_run(tmp_path / "bare", n=50, thumbnails=False)
    with pytest.raises(NoEmbeddings) as caught:
        embedding(RunLayout(bare), rows=50)
    message = str(caught.value)
    assert "\n" not in message and "no embeddings" in message and "train --reference" in message
    assert str(tmp_path / "with") in message
    with pytest.raises(NoEmbeddings, match="no text embeddings"):
        embedding(RunLayout(tmp_path / "with"), "text", 50)


def test_user_coordinates_become_the_map_and_bad_files_are_refused_whole(tmp_path):
    run = synthetic_run(tmp_path / "run", n=30, thumbnails=False)
    ids = pd.read_parquet(run / "samples.parquet")["sample_id"].to_numpy()
    good = pd.DataFrame({"sample_id": ids[::-1], "x": np.arange(30.0), "y": -np.arange(30.0)})
    path = tmp_path / "coords.parquet"
    good.to_parquet(path)
    coords = import_coords(RunLayout(run), ids, path)
    assert coords[0].tolist() == [29.0, -29.0]  # by the run's row order, not the file's
    assert current_map(RunLayout(run), 30)[0] == "coords"
    cases = {
        "appears more than once": pd.concat([good, good.iloc[:1]]),
        "have no coordinates": good.iloc[1:],
        "not in this run": pd.concat([good.iloc[1:], pd.DataFrame({"sample_id": ["x"], "x": [0.0], "y": [0.0]})]),
        "not finite": good.assign(x=np.where(np.arange(30) == 3, np.nan, good["x"])),
    }
    for expected, frame in cases.items():
        with pytest.raises(MapError, match=expected) as caught:
            coords_by_row(frame, ids)
        assert "\n" not in str(caught.value)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(MapError, match="cannot read"):
        import_coords(RunLayout(run), ids, tmp_path / "bad.parquet")
    np.testing.assert_array_equal(current_map(RunLayout(run), 30)[1], coords)  # the good map is untouched


def test_the_map_command_makes_a_layout_or_keeps_coordinates_and_says_what_is_wrong(tmp_path, capsys):
    from mimic_explorer.cli import main

    run = synthetic_run(tmp_path / "run", n=120, embeddings=8, thumbnails=False)
    assert main(["map", str(run), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    assert RunLayout(run).map_names() == ["image-pca"]
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,x,y\nsyn-0000000,1,2\nsyn-0000000,3,4\n")
    assert main(["map", str(run), "--coords", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad.csv: sample id 'syn-0000000' appears more than once") and "\n" not in err
    assert RunLayout(run).map_names() == ["image-pca"]  # nothing kept
    assert main(["map", str(run), "--source", "text"]) == 2
    assert "no text embeddings" in capsys.readouterr().err
    bare = synthetic_run(tmp_path / "bare", n=20, thumbnails=False)
    assert main(["map", str(bare)]) == 2
    assert "has no embeddings to map" in capsys.readouterr().err
