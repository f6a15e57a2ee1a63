"""The end-of-run vector signals (class probabilities, embeddings) become run arrays whose row r is
samples.parquet's row r, however Stage 2 cuts the pool into ranges and wherever the bad samples sit;
a failure part-way leaves none of them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.commands.finalize import PoolView, Stage2Options, finish_samples
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.run_arrays import RowArrayWriter, read_row_array, write_row_array
from mimic_explorer.store.writer import SamplesWriter

SIZE = 1000
BAD = np.array([3, 200, 513, 999])


def _pool(fail_at: int | None = None) -> PoolView:
    def base(positions: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": [f"s{p}" for p in positions], "label": positions % 10})

    def signals(positions: np.ndarray) -> dict:
        if fail_at is not None and len(positions) and positions[0] >= fail_at:
            raise RuntimeError("the model pass died")
        index = positions[::-1]  # in another order than asked: the rows must follow ``index``
        probs = np.zeros((len(index), 10), dtype=np.float32)
        probs[np.arange(len(index)), (index + 1) % 10] = 1.0
        return {
            "index": index,
            "reference_loss": index.astype(np.float64),
            "ref_pred": (index + 1) % 10,
            "ref_prob": np.ones(len(index)),
            "reference_probs": probs,
            "embedding_image": np.stack([index, 2 * index], axis=1).astype(np.float16),
        }

    return PoolView(SIZE, BAD, base, signals)


def _writer(tmp_path):
    layout = RunLayout(tmp_path)
    (tmp_path / "scores").mkdir(exist_ok=True)
    return SimpleNamespace(layout=layout, samples_writer=lambda: SamplesWriter(layout.samples, 300))


def test_vector_signals_line_up_with_the_samples_rows_across_ranges_and_bad_samples(tmp_path):
    writer = _writer(tmp_path)
    finish_samples(writer, _pool(), Stage2Options(scored=False, chunk=256))
    samples = pd.read_parquet(writer.layout.samples)
    positions = samples["sample_id"].str.slice(1).astype(int).to_numpy()
    assert len(samples) == SIZE - len(BAD) and not np.isin(positions, BAD).any()
    probs = read_row_array(writer.layout.reference_probs, len(samples))
    embedding = read_row_array(writer.layout.embedding("image"), len(samples))
    assert probs.dtype == np.float32 and embedding.dtype == np.float16
    assert np.array_equal(probs.argmax(axis=1), (positions + 1) % 10)
    assert np.array_equal(embedding[:, 0].astype(np.int64), positions)  # exact in float16 below 2048
    assert np.array_equal(samples["ref_pred"].to_numpy(dtype=np.int64), probs.argmax(axis=1))
    assert np.array_equal(samples["reference_loss"].to_numpy(), positions.astype(np.float64))
    assert writer.layout.embedding_sources() == ["image"]


def test_a_failure_part_way_leaves_no_array_and_no_samples(tmp_path):
    writer = _writer(tmp_path)
    with pytest.raises(RuntimeError, match="died"):
        finish_samples(writer, _pool(fail_at=512), Stage2Options(scored=False, chunk=256))
    assert not writer.layout.reference_probs.exists() and not writer.layout.samples.exists()
    assert writer.layout.embedding_sources() == []
    assert [p.name for p in tmp_path.rglob("*.tmp")] == []


def test_rows_never_given_are_nan_and_a_whole_array_is_written_at_once(tmp_path):
    array = RowArrayWriter(tmp_path / "a.npy", 4, np.float32)
    array.write(np.array([2, 0]), np.array([[2.0, 2.0], [0.0, 0.0]]))
    array.commit()
    found = read_row_array(tmp_path / "a.npy", 4)
    assert found[0].tolist() == [0.0, 0.0] and found[2].tolist() == [2.0, 2.0]
    assert np.isnan(found[1]).all() and np.isnan(found[3]).all()
    write_row_array(tmp_path / "b.npy", np.arange(6).reshape(3, 2), np.float16)
    assert read_row_array(tmp_path / "b.npy").dtype == np.float16
    with pytest.raises(ValueError, match="has 3 rows but the run has 5 samples"):
        read_row_array(tmp_path / "b.npy", 5)
