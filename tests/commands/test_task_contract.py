"""What ``train`` and ``score`` guarantee whatever the task, checked once and run for each task:
labelled images (``tests/fixtures/cifar_mini`` as a ``folder:`` pool) and image-text pairs
(``tests/fixtures/flickr_mini/pairs.tar`` as a ``wds:`` pool), each pool with one more sample that is
not an image.

- plain ``train`` writes every good sample once, kept, with no mimic score;
- Grad-Mimic ``train`` records every good sample once an epoch, each batch's Stage-1 weights sum to 1,
  and Stage 2's columns are written;
- ``score`` writes every good sample once; a run killed after its second chunk resumes at the first
  missing chunk and equals an uninterrupted run;
- an option only the other task can use is refused before anything is written;
- a ``--subset`` keep-list restricts the pool to its samples;
- a bad sample is in errors.parquet with its reason, and in neither samples.parquet nor the score rows;
- a run directory holding a different run is refused and left untouched.

Each task runs on its usual pool and on another way in (an ``hf:`` folder, a ``pipe:`` shard), which must
give the same guarantees.

Why one suite: the commands never ask which modality they run (docs/ARCHITECTURE.md), so the
guarantees are the commands', and a check written once cannot drift between the tasks the way two
copies did. What only one task does is tested in ``tests/tasks`` (``test_labelled_*``,
``test_pairs_*``). The runs go through the Python API in this process on the CPU — a few seconds in all.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.commands import score as score_command
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.specs import open_source
from mimic_explorer.stage2 import baselines
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.reader import Run
from tests.subset_helpers import write_ids

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOT_AN_IMAGE = b"not a jpeg"
#: how every run here is made: small batches, CPU, no worker processes, nothing printed
HOW = {"batch_size": 8, "device": "cpu", "workers": 0, "quiet": True, "seed": 0}


def labelled_pool(folder: Path) -> str:
    """The 30 CIFAR-10 fixture images as a folder pool, with ``cat/broken.jpg`` that is not an image."""
    shutil.copytree(FIXTURES / "cifar_mini", folder / "cifar")
    (folder / "cifar" / "cat" / "broken.jpg").write_bytes(NOT_AN_IMAGE)
    return f"folder:{folder / 'cifar'}"


def pairs_pool(folder: Path) -> str:
    """The 24 Flickr8k fixture pairs as a shard, with a pair ``broken`` whose photo is not an image."""
    shard = folder / "pairs.tar"
    shutil.copy(FIXTURES / "flickr_mini" / "pairs.tar", shard)
    with tarfile.open(shard, "a") as tar:
        for name, data in (("broken.jpg", NOT_AN_IMAGE), ("broken.txt", b"a caption of nothing")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"wds:{shard}"


def labelled_hf_pool(folder: Path) -> str:
    """The 30 CIFAR-10 fixture images as a ``datasets`` folder (``hf:``), with a row ``broken`` that is not an image."""
    datasets = pytest.importorskip("datasets")
    from tests.source_helpers import cifar_dataset

    pool = cifar_dataset()
    broken = datasets.Dataset.from_dict(
        {"img": [{"bytes": NOT_AN_IMAGE, "path": None}], "label": [3], "key": ["broken"]}, features=pool.features
    )
    datasets.concatenate_datasets([pool, broken]).save_to_disk(str(folder / "hf"))
    return f"hf:{folder / 'hf'}?id=key"


def piped_pairs_pool(folder: Path) -> str:
    """``pairs_pool``'s shard read as ``pipe:cat SHARD`` (a remote shard, fetched once into the cache)."""
    return "wds:pipe:cat " + pairs_pool(folder).removeprefix("wds:")


@dataclass(frozen=True)
class TaskCase:
    """One task as the contract sees it: its pool, its models and the options of the other task."""

    name: str
    make_pool: object  # (folder) -> the --data spec of a pool holding the one bad sample ``bad_id``
    bad_id: str
    arch: str
    #: options of every train run of this task (the pairs' cheapest mode: projections on held tower outputs)
    train_mode: dict
    #: Stage 2's default vote of a train run
    binarisation: str
    #: command -> (options only the other task can use, the refusal they get)
    foreign: dict = field(default_factory=dict)


IMAGE_TEXT_ONLY = "only for image-text pools"
LABELLED_ONLY = "only for labelled pools"
CASES = [
    TaskCase(
        "labelled",
        labelled_pool,
        "cat/broken.jpg",
        "small_cnn",
        {},
        "weight",
        {
            "train": [
                ({"caption_noise": 0.3}, f"--caption-noise: {IMAGE_TEXT_ONLY}"),
                ({"mimic_layer": "text"}, f"--mimic-layer: {IMAGE_TEXT_ONLY}"),
                (
                    {"frozen_towers": True},
                    f"--frozen-towers: {IMAGE_TEXT_ONLY}.*use --linear-probe instead of --frozen-towers",
                ),
                ({"frozen_image_tower": True}, f"--frozen-image-tower: {IMAGE_TEXT_ONLY}"),
                ({"all_captions": True}, f"--all-captions: {IMAGE_TEXT_ONLY}"),
                ({"fresh_projections": True}, f"--fresh-projections: {IMAGE_TEXT_ONLY}"),
            ],
            "score": [
                ({"caption_noise": 0.3}, f"--caption-noise: {IMAGE_TEXT_ONLY}"),
                ({"mimic_layer": "image"}, f"--mimic-layer: {IMAGE_TEXT_ONLY}"),
                ({"test_data": "held-out"}, f"--test-data: {IMAGE_TEXT_ONLY}"),
                ({"redraws": 3}, f"--redraws 3: {IMAGE_TEXT_ONLY}"),
            ],
        },
    ),
    TaskCase(
        "pairs",
        pairs_pool,
        "broken",
        "small_dual",
        {"frozen_towers": True},
        "gmm",
        {
            "train": [
                ({"label_noise": 0.2}, f"--label-noise 0.2: {LABELLED_ONLY}"),
                ({"linear_probe": True}, f"--linear-probe: {LABELLED_ONLY}"),
                ({"reference_noise": 0.1}, f"--reference-noise 0.1: {LABELLED_ONLY}"),
            ],
            "score": [
                ({"label_noise": 0.2}, f"--label-noise 0.2: {LABELLED_ONLY}"),
                ({"linear_probe": True}, f"--linear-probe: {LABELLED_ONLY}"),
                ({"init": "base.pt"}, f"--init: {LABELLED_ONLY}"),
            ],
        },
    ),
]
#: the same guarantees on the other ways in: a ``datasets`` folder and a shard fetched through ``pipe:``
CASES += [
    replace(CASES[0], name="labelled-hf", make_pool=labelled_hf_pool, bad_id="broken"),
    replace(CASES[1], name="pairs-pipe", make_pool=piped_pairs_pool),
]


class TaskRuns:
    """One task's pool and the runs the checks share, each made once, when first asked for: a plain run
    (its weights are the reference), a Grad-Mimic run against it (its weights are the scored model) and
    a score run of that model."""

    def __init__(self, case: TaskCase, root: Path):
        self.case, self.root = case, root
        self.data = case.make_pool(root)

    def train_options(self, out: Path, **changes) -> TrainOptions:
        return TrainOptions(
            data=self.data,
            arch=self.case.arch,
            out=str(out),
            checkpoint_every=0.0,
            **{**HOW, "epochs": 1, **self.case.train_mode, **changes},
        )

    def score_options(self, out: Path, **changes) -> ScoreOptions:
        return ScoreOptions(
            data=self.data,
            arch=self.case.arch,
            out=str(out),
            model=str(self.root / "model.pt"),
            reference=str(self.root / "reference.pt"),
            **{**HOW, "chunk_size": 8, **changes},
        )

    @cached_property
    def good_ids(self) -> list[str]:
        """The pool's sample ids but the bad one, in pool order."""
        ids = [str(s) for s in open_source(self.data, index_dir=self.root / "index").sample_ids]
        assert self.case.bad_id in ids
        return [s for s in ids if s != self.case.bad_id]

    @cached_property
    def plain(self) -> Run:
        options = self.train_options(self.root / "plain", save_model=str(self.root / "reference.pt"))
        return open_run(run_train(options).path)

    @cached_property
    def grad_mimic(self) -> Run:
        self.plain  # noqa: B018 - its weights are the reference
        options = self.train_options(
            self.root / "grad-mimic",
            epochs=2,
            reference=str(self.root / "reference.pt"),
            save_model=str(self.root / "model.pt"),
        )
        return open_run(run_train(options).path)

    @cached_property
    def score(self) -> Run:
        self.grad_mimic  # noqa: B018 - its weights are the scored model
        return open_run(run_score(self.score_options(self.root / "score")).path)


@pytest.fixture(scope="module", params=CASES, ids=[case.name for case in CASES])
def task(request, tmp_path_factory) -> TaskRuns:
    root = tmp_path_factory.mktemp(f"contract-{request.param.name}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_EXPLORER_CACHE", str(root / "cache"))  # this module's feature caches and shard indexes
        yield TaskRuns(request.param, root)


def test_plain_train_writes_every_good_sample_once_kept_and_without_a_mimic_score(task):
    samples = task.plain.samples
    assert samples["sample_id"].tolist() == task.good_ids  # once each, in pool order
    assert samples["keep"].dtype == bool and samples["keep"].all()
    assert samples["mimic_score"].isna().all()
    assert task.plain.meta["status"] == "complete"


def test_grad_mimic_train_records_every_good_sample_once_an_epoch_and_writes_stage_2(task):
    run = task.grad_mimic
    rows = run.scores
    assert sorted(rows["epoch"].unique()) == [0, 1]
    for epoch, ids in rows.groupby("epoch")["sample_id"]:
        assert sorted(ids) == sorted(task.good_ids), f"epoch {epoch}: every good sample exactly once"
    assert rows["proj"].notna().all() and rows["weight"].notna().all()
    sums = rows.groupby(["epoch", "step"])["weight"].sum()  # one process: a step is one batch
    assert len(sums) >= 2 * 3
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-5)  # Stage 1: a softmax over each batch
    samples = run.samples
    assert samples["sample_id"].tolist() == task.good_ids
    for column in ("mimic_score", "votes", "proj_mean", "proj_min", "proj_last"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert samples["keep"].dtype == bool
    assert run.meta["stage2"]["binarisation"] == task.case.binarisation  # the task's default vote


def test_score_writes_every_good_sample_once(task):
    run = task.score
    assert run.samples["sample_id"].tolist() == task.good_ids
    assert sorted(run.scores["sample_id"]) == sorted(task.good_ids)  # one score row each
    assert np.isfinite(run.samples["mimic_score"].to_numpy(dtype=float)).all() and run.samples["keep"].dtype == bool
    assert all(run.thumbnails.get(s) is not None for s in task.good_ids)  # the photos, for the app


def _reference_arrays(run: Run) -> dict[str, np.ndarray]:
    """The run arrays the reference's pass writes (class probabilities, embeddings), by name, read whole."""
    found = {"reference_probs": run.reference_probs, **{f"embedding_{s}": run.embedding(s) for s in ("image", "text")}}
    return {name: np.asarray(values) for name, values in found.items() if values is not None}


def test_score_keeps_the_reference_signals_a_train_run_keeps(task):
    """The Map and the suggested labels of a score run: the reference's pass over each scoring batch gives what
    a Grad-Mimic train run's end-of-run pass gives, on the same pool and reference (row r = samples row r)."""
    run, trained = task.score, task.grad_mimic
    arrays = _reference_arrays(run)
    expected = (
        {"embedding_image", "reference_probs"}
        if task.case.name.startswith("labelled")
        else {
            "embedding_image",
            "embedding_text",
        }
    )
    assert set(arrays) == expected
    assert all(len(values) == len(task.good_ids) for values in arrays.values())
    if "reference_probs" in arrays:  # labelled: the suggested label, its probability and the reference loss
        np.testing.assert_allclose(arrays["reference_probs"], np.asarray(trained.reference_probs), atol=1e-5)
        samples, wanted = run.samples, trained.samples
        assert samples["ref_pred"].tolist() == wanted["ref_pred"].tolist()
        assert (samples["ref_pred"] == arrays["reference_probs"].argmax(1)).all()
        for column in ("ref_prob", "reference_loss"):
            np.testing.assert_allclose(samples[column], wanted[column], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(samples["reducible_loss"], samples["model_loss"] - samples["reference_loss"])
        # the default ranking: --method proj records no cos, so each sample's mean proj is its mimic part
        parts = [samples[c].to_numpy() for c in ("proj_mean", "reference_loss", "model_loss")]
        np.testing.assert_allclose(samples["combined_score"], baselines.combined_score(*parts))
    else:  # pairs: the reference's unit-length embeddings of each photo and caption, as a frozen-towers run keeps
        for name in expected:
            np.testing.assert_allclose(arrays[name], _reference_arrays(trained)[name], atol=2e-3)
            np.testing.assert_allclose(np.linalg.norm(arrays[name].astype(np.float32), axis=1), 1, atol=2e-3)
    assert run.layout.scratch_files() == []  # the per-chunk files are gone once the run is complete


@pytest.mark.parametrize("command", ["train", "score"])
def test_no_embeddings_keeps_every_other_signal_and_no_vector_on_disk(task, command, tmp_path):
    """``--no-embeddings`` (a pool whose embeddings would fill the disk): no ``embeddings/`` — not even as a
    scratch file on the way — and the same samples, suggested labels and class probabilities."""
    task.score  # noqa: B018 - makes the checkpoints
    if command == "train":
        reference = str(task.root / "reference.pt")
        options = task.train_options(tmp_path / "run", epochs=2, reference=reference, embeddings=False)
        run, full = open_run(run_train(options).path), task.grad_mimic
    else:
        run, full = open_run(run_score(task.score_options(tmp_path / "run", embeddings=False)).path), task.score
    assert _reference_arrays(full).keys() & {"embedding_image", "embedding_text"}  # kept by default
    assert run.layout.embedding_sources() == [] and not run.layout.embeddings_dir.exists()
    assert run.layout.scratch_files() == []
    pd.testing.assert_frame_equal(run.samples, full.samples)
    assert (run.reference_probs is None) == (full.reference_probs is None)
    assert run.meta["run_id"] != full.meta["run_id"]  # another run: the directory of one is not the other's


class Killed(Exception):
    """Raised in place of a kill, right after a chunk part is committed."""


class ChunkParts:
    """The chunk parts a score run into ``out`` writes, in order; the run dies right after the
    ``die_after``-th when given (its part committed, the next chunk not begun: where a kill -9 between
    two chunks lands)."""

    def __init__(self, monkeypatch, out: Path, chunks: int, die_after: int | None = None):
        layout = RunLayout(out)
        self.chunk_of = {layout.chunk_part(c).name: c for c in range(chunks)}
        self.written: list[int] = []
        real = score_command.write_score_part

        def write(path, rows):
            committed = real(path, rows)
            self.written.append(self.chunk_of[Path(path).name])
            if len(self.written) == die_after:
                raise Killed(f"after {Path(path).name}")
            return committed

        monkeypatch.setattr(score_command, "write_score_part", write)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: its size and modification time, by relative path."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_killed_score_resumes_at_its_first_missing_chunk_and_equals_an_uninterrupted_run(task, tmp_path, monkeypatch):
    whole = task.score
    chunks = len(whole.layout.chunk_parts())
    assert chunks >= 3
    out = tmp_path / "killed"
    first = ChunkParts(monkeypatch, out, chunks, die_after=2)
    with pytest.raises(Killed):
        run_score(task.score_options(out))
    assert first.written == [0, 1]
    kept = {p.name: p.stat().st_mtime_ns for p in RunLayout(out).chunk_parts()}
    assert sorted(kept) == sorted(RunLayout(out).chunk_part(c).name for c in (0, 1))
    monkeypatch.undo()  # the writer as it is, watched again
    again = ChunkParts(monkeypatch, out, chunks)
    resumed = open_run(run_score(task.score_options(out)).path)
    assert again.written == list(range(2, chunks))  # chunks 0 and 1 were not scored again
    assert {p.name: p.stat().st_mtime_ns for p in RunLayout(out).chunk_parts() if p.name in kept} == kept  # untouched
    pd.testing.assert_frame_equal(resumed.samples, whole.samples, check_exact=True)
    by_id = ["sample_id"]
    pd.testing.assert_frame_equal(
        resumed.scores.sort_values(by_id).reset_index(drop=True),
        whole.scores.sort_values(by_id).reset_index(drop=True),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(resumed.errors, whole.errors)  # a bad sample found before the kill is kept
    resumed_arrays, whole_arrays = _reference_arrays(resumed), _reference_arrays(whole)
    assert sorted(resumed_arrays) == sorted(whole_arrays) and whole_arrays
    for name, values in whole_arrays.items():  # chunks 0 and 1's reference signals were kept through the kill
        np.testing.assert_array_equal(resumed_arrays[name], values, err_msg=name)
    assert all(resumed.thumbnails.get(s) is not None for s in task.good_ids)  # chunks 0 and 1 too


@pytest.mark.parametrize("command", ["train", "score"])
def test_options_of_the_other_task_are_refused_before_anything_is_written(task, command, tmp_path):
    out = tmp_path / "refused"
    for changes, message in task.case.foreign[command]:
        options = (task.train_options if command == "train" else task.score_options)(out, **changes)
        run = run_train if command == "train" else run_score
        with pytest.raises(ValueError, match=message):
            run(options)
        assert not out.exists(), changes


@pytest.mark.parametrize("command", ["train", "score"])
def test_a_subset_keep_list_restricts_the_pool_to_its_samples(task, command, tmp_path):
    listed = task.good_ids[::3]
    keep = write_ids(tmp_path / "keep.csv", [*listed, "not-in-the-pool"])
    out = tmp_path / "run"
    if command == "train":
        outcome = run_train(task.train_options(out, subset=str(keep)))
    else:
        task.grad_mimic  # noqa: B018 - the checkpoints
        outcome = run_score(task.score_options(out, subset=str(keep)))
    run = open_run(outcome.path)
    assert run.samples["sample_id"].tolist() == listed
    assert set(run.scores["sample_id"]) == set(listed)
    assert run.meta["subset"]["kept"] == len(listed) and run.meta["subset"]["missing"] == 1


@pytest.mark.parametrize("which", ["plain", "grad_mimic", "score"])
def test_a_bad_sample_is_in_errors_with_its_reason_and_nowhere_else(task, which):
    run = getattr(task, which)
    errors = run.errors
    assert errors["sample_id"].tolist() == [task.case.bad_id]
    assert "not an image" in errors["reason"].iloc[0]
    assert task.case.bad_id not in set(run.samples["sample_id"])
    assert task.case.bad_id not in set(run.scores["sample_id"])
    assert run.meta["summary"]["skipped"] == 1


def test_a_run_directory_holding_a_different_run_is_refused_untouched(task, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(task.score.path, out)
    before = _files(out)
    assert run_score(task.score_options(out)).cached  # the same run: returned as it is
    for run, options in ((run_score, task.score_options(out, temperature=2.0)), (run_train, task.train_options(out))):
        with pytest.raises(ValueError, match=re.escape(str(out)) + ".*holds a different run"):
            run(options)
    assert _files(out) == before
