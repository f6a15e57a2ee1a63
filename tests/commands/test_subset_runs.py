"""``train`` and ``score --subset FILE`` on real shards: a labelled CIFAR-10 pool (linear probe and
fine-tuning) and a Flickr8k image-text pool (frozen towers, score): the run holds exactly the listed
samples, decodes no other, records the keep-list in meta.json and in its run id (the same ids in
another format: the same run), and a bad keep-list is refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.specs import open_source
from mimic_explorer.data.wds import WdsSource
from mimic_explorer.filters.formats import datacomp_uids
from tests.pairs_helpers import FLICKR, make_checkpoints, needs_flickr
from tests.subset_helpers import CIFAR, needs_cifar, shard_excerpt, write_ids

POOL = 40


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A 40-sample CIFAR-10 pool and 12 of its ids (every third sample) plus two it lacks."""
    folder = tmp_path_factory.mktemp("subset-cifar")
    spec = f"wds:{shard_excerpt(CIFAR / 'train-00.tar', folder / 'pool.tar', POOL)}"
    ids = open_source(spec, index_dir=folder).sample_ids
    listed = [str(s) for s in ids[::3][:12]]
    return folder, spec, listed


def decoded_ids(monkeypatch) -> list[str]:
    """Every sample id whose image bytes are read from a shard from now on (this process)."""
    read: list[str] = []
    original = WdsSource.read_bytes

    def counting(self, i):
        read.append(str(self.sample_ids[i]))
        return original(self, i)

    monkeypatch.setattr(WdsSource, "read_bytes", counting)
    return read


def train_options(spec, out, subset, **kw) -> TrainOptions:
    return TrainOptions(
        data=spec,
        arch="small_cnn",
        out=str(out),
        subset=str(subset),
        batch_size=4,
        device="cpu",
        quiet=True,
        **{"epochs": 1, **kw},
    )


@needs_cifar
@pytest.mark.slow
def test_a_linear_probe_trains_on_the_listed_samples_only(cifar, tmp_path, monkeypatch, private_cache):
    _folder, spec, listed = cifar
    keep = write_ids(tmp_path / "keep.csv", [*listed, "train_cat_99999", "elsewhere"])
    read = decoded_ids(monkeypatch)
    outcome = run_train(
        train_options(spec, tmp_path / "run", keep, linear_probe=True, save_model=str(tmp_path / "M.pt"))
    )
    run = open_run(outcome.path)
    assert run.samples["sample_id"].tolist() == listed  # pool order, which the keep-list also follows here
    assert set(read) == set(listed)  # nothing outside the subset was decoded
    subset = run.meta["subset"]
    assert (
        subset["kept"] == 12 and subset["missing"] == 2 and subset["pool_samples"] == POOL and subset["format"] == "csv"
    )
    assert run.meta["fingerprints"]["subset"] == subset["sha256"]
    assert any(w.startswith("SUBSET: 2 of the 14 id(s)") for w in run.meta["warnings"])
    # the same ids as parquet: the same run, returned at once; other ids: another run
    again = run_train(
        train_options(
            spec,
            tmp_path / "run",
            write_ids(tmp_path / "keep.parquet", [*listed[::-1], "elsewhere", "train_cat_99999"]),
            linear_probe=True,
        )
    )
    assert again.cached
    with pytest.raises(ValueError, match="holds a different run"):
        run_train(
            train_options(spec, tmp_path / "run", write_ids(tmp_path / "fewer.csv", listed[:6]), linear_probe=True)
        )


@needs_cifar
@pytest.mark.slow
def test_fine_tuning_and_score_use_the_subset(cifar, tmp_path, monkeypatch, private_cache):
    _folder, spec, listed = cifar
    keep = write_ids(tmp_path / "keep.npy", listed[:8])
    model, reference = tmp_path / "M.pt", tmp_path / "R.pt"
    run_train(train_options(spec, tmp_path / "m", keep, save_model=str(model)))
    run_train(train_options(spec, tmp_path / "r", keep, save_model=str(reference), epochs=2))
    read = decoded_ids(monkeypatch)
    for name, kw in (("score", {}), ("probe", {"linear_probe": True})):
        outcome = run_score(
            ScoreOptions(
                data=spec,
                arch="small_cnn",
                out=str(tmp_path / name),
                subset=str(keep),
                model=str(model),
                reference=str(reference),
                batch_size=4,
                device="cpu",
                quiet=True,
                **kw,
            )
        )
        samples = open_run(outcome.path).samples
        assert samples["sample_id"].tolist() == listed[:8] and np.isfinite(samples["mimic_score"]).all()
        assert open_run(outcome.path).meta["subset"]["format"] == "npy"
    assert set(read) == set(listed[:8])


@needs_cifar
@pytest.mark.parametrize(
    "name, content, cause",
    [
        ("absent.csv", None, "no such file"),
        ("keep.txt", "a\n", "unknown keep-list format"),
        ("keep.json", '["nowhere", "else"]', "none of its 2 id"),
    ],
)
def test_a_bad_keep_list_is_refused_before_anything_is_written(cifar, tmp_path, name, content, cause, private_cache):
    _, spec, _ = cifar
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=cause):
        run_train(train_options(spec, out, path, linear_probe=True))
    assert not out.exists()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """24 Flickr8k pairs, a model and reference for them, and a DataComp uid list of 16 of them."""
    folder = tmp_path_factory.mktemp("subset-pairs")
    spec = f"wds:{shard_excerpt(FLICKR / 'train-00.tar', folder / 'pool.tar', 24)}"
    model, reference = make_checkpoints(spec, folder)
    ids = open_source(spec, index_dir=folder).sample_ids
    mask = np.zeros(len(ids), dtype=bool)
    mask[np.arange(0, 24, 3)] = mask[np.arange(1, 24, 3)] = True
    uids = folder / "subset.npy"
    np.save(uids, datacomp_uids([*list(ids), "f" * 32], np.append(mask, True)))  # one uid the pool lacks
    return spec, model, reference, uids, [str(s) for s in ids[mask]]


@needs_flickr
@pytest.mark.slow
def test_pairs_score_and_frozen_tower_training_use_the_uid_subset(pairs, tmp_path, monkeypatch, private_cache):
    spec, model, reference, uids, kept = pairs
    read = decoded_ids(monkeypatch)
    scored = run_score(
        ScoreOptions(
            data=spec,
            arch="small_dual",
            out=str(tmp_path / "score"),
            subset=str(uids),
            model=str(model),
            reference=str(reference),
            batch_size=8,
            device="cpu",
            quiet=True,
        )
    )
    trained = run_train(
        TrainOptions(
            data=spec,
            arch="small_dual",
            out=str(tmp_path / "train"),
            subset=str(uids),
            reference=str(reference),
            frozen_towers=True,
            caption_noise=0.25,
            epochs=1,
            batch_size=8,
            device="cpu",
            quiet=True,
        )
    )
    assert set(read) == set(kept)
    for outcome in (scored, trained):
        run = open_run(outcome.path)
        samples = run.samples
        assert samples["sample_id"].tolist() == kept and samples["caption"].str.len().gt(0).all()
        assert np.isfinite(samples["mimic_score"]).all() and np.isfinite(samples["clip_score_ref"]).all()
        assert run.meta["subset"]["format"] == "uids" and run.meta["subset"]["missing_examples"] == ["f" * 32]
    assert int(open_run(trained.path).samples["is_noisy"].sum()) == 4  # the caption noise is drawn within the subset


def test_both_commands_offer_subset_in_their_help():
    from mimic_explorer.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "score"):
        text = " ".join(commands[name].format_help().split())
        assert "--subset FILE" in text and "DataComp's --format uids" in text


@needs_cifar
@pytest.mark.slow
def test_the_command_line_reports_missing_ids_and_refuses_an_unknown_format(cifar, tmp_path):
    from tests.conftest import run_cli

    _, spec, listed = cifar
    env = {"MIMIC_EXPLORER_CACHE": str(tmp_path / "cache")}
    common = [
        "train",
        "--data",
        spec,
        "--arch",
        "small_cnn",
        "--linear-probe",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--quiet",
    ]
    proc = run_cli(
        *common,
        "--subset",
        str(write_ids(tmp_path / "k.csv", [*listed[:5], "gone"])),
        "--out",
        str(tmp_path / "run"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SUBSET: 1 of the 6 id(s)" in proc.stderr and "gone" in proc.stderr
    assert open_run(proc.stdout.strip().splitlines()[-1]).samples["sample_id"].tolist() == listed[:5]
    (tmp_path / "k.tsv").write_text("sample_id\n")
    proc = run_cli(*common, "--subset", str(tmp_path / "k.tsv"), "--out", str(tmp_path / "refused"), env=env)
    assert proc.returncode != 0 and "unknown keep-list format '.tsv'" in proc.stderr
    assert not (tmp_path / "refused").exists()
