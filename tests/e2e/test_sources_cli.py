"""The new ways in, end to end through ``mimic_explorer.cli.main``: a ``datasets`` folder, parquet file, shards over
loopback HTTP and ``pipe:cat`` score exactly as the local files they were made from (labelled images and
image-text pairs); DataComp's layout (a parquet beside the shard) puts the published CLIP score into
samples.parquet and the app, where a compound rule on it and ``mimic_score`` exports DataComp uids; bad
metadata and an unreachable URL are one line and write nothing."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.cli import main
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.commands.train import run_train
from mimic_explorer.data import remote
from mimic_explorer.data.specs import open_source
from mimic_explorer.filters.formats import datacomp_uids
from mimic_explorer.filters.rules import FilterRule, all_of, apply_rule
from mimic_explorer.store.app_index import open_index
from tests.data.test_sources import fixture_items, write_pool_shards
from tests.pairs_helpers import make_checkpoints
from tests.source_helpers import FIXTURE, FLICKR_MINI, ShardServer, cifar_dataset, flickr_dataset

pytestmark = pytest.mark.slow  # whole module: real runs
datasets = pytest.importorskip("datasets")

SMALL = ["--arch", "small_cnn", "--batch-size", "8", "--quiet", "--device", "cpu"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


@pytest.fixture(scope="module")
def labelled_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A small_cnn model (1 epoch) and reference (3 epochs) trained plainly on the cifar_mini folder."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = []
    for name, epochs in (("model", 1), ("reference", 3)):
        path = root / f"{name}.pt"
        run_train(
            TrainOptions(
                data=f"folder:{FIXTURE}",
                arch="small_cnn",
                out=str(root / name),
                epochs=epochs,
                batch_size=8,
                device="cpu",
                quiet=True,
                save_model=str(path),
            )
        )
        paths.append(path)
    return paths[0], paths[1]


def run_score(capsys, data: str, out: Path, model: Path, reference: Path, *extra: str, arch=SMALL):
    models = ["--model", str(model), "--reference", str(reference)]
    status = main(["score", "--data", data, *arch, *models, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return open_run(out)


def by_stem(run) -> pd.DataFrame:
    rows = run.scores.assign(stem=run.scores["sample_id"].map(lambda s: Path(s).stem))
    return rows.set_index("stem").sort_index()


def test_labelled_pool_scores_the_same_from_hf_http_and_pipe(tmp_path, capsys, labelled_checkpoints):
    model, reference = labelled_checkpoints
    cifar_dataset().save_to_disk(str(tmp_path / "hf"))
    shards = tmp_path / "www"
    write_pool_shards(shards, fixture_items(), shards=2)
    folder_run = run_score(capsys, f"folder:{FIXTURE}", tmp_path / "folder", model, reference)
    expected = by_stem(folder_run)
    assert len(expected) == 30
    with ShardServer(shards) as server:
        specs = {
            "hf": f"hf:{tmp_path / 'hf'}?id=key",
            "http": f"wds:{server.url}/pool-{{00..01}}.tar",
            "pipe": f"wds:pipe:cat {shlex.quote(str(shards))}/pool-{{00..01}}.tar",
        }
        for name, spec in specs.items():
            run = run_score(capsys, spec, tmp_path / name, model, reference)
            found = by_stem(run)
            assert list(found.index) == list(expected.index), name
            np.testing.assert_allclose(found["proj"], expected["proj"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(found["loss"], expected["loss"], rtol=1e-5, atol=1e-7)
            assert all(run.thumbnails.get(s) for s in run.samples["sample_id"]), name  # the app's images
            assert run.meta["source"]["spec"] == spec
    # the hf pool with --subset: the listed rows only
    keep = tmp_path / "keep.csv"
    listed = cifar_dataset()["key"][9:12]
    pd.DataFrame({"sample_id": [*listed, "nowhere"]}).to_csv(keep, index=False)
    subset = run_score(capsys, specs["hf"], tmp_path / "subset", model, reference, "--subset", str(keep))
    assert subset.samples["sample_id"].tolist() == listed and subset.meta["subset"]["missing"] == 1


def test_pairs_score_the_same_from_parquet_and_http(tmp_path, capsys):
    model, reference = make_checkpoints(f"wds:{FLICKR_MINI}", tmp_path)
    pairs = ["--arch", "small_dual", "--batch-size", "8", "--quiet", "--device", "cpu"]
    flickr_dataset().to_parquet(str(tmp_path / "pairs.parquet"))
    shutil.copy(FLICKR_MINI, tmp_path / "pairs.tar")
    local = run_score(capsys, f"wds:{FLICKR_MINI}", tmp_path / "local", model, reference, arch=pairs)
    with ShardServer(tmp_path) as server:
        for name, spec in (("hf", f"hf:{tmp_path / 'pairs.parquet'}"), ("http", f"wds:{server.url}/pairs.tar")):
            run = run_score(capsys, spec, tmp_path / name, model, reference, arch=pairs)
            assert run.samples["sample_id"].tolist() == local.samples["sample_id"].tolist()
            assert run.samples["caption"].tolist() == local.samples["caption"].tolist()
            for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss"):
                np.testing.assert_allclose(run.samples[column], local.samples[column], rtol=1e-5, atol=1e-7)


def test_datacomp_layout_rule_on_the_published_score_and_mimic_score_exports_uids(tmp_path, capsys):
    folder = tmp_path / "datacomp"
    folder.mkdir()
    shutil.copy(FLICKR_MINI, folder / "00000000.tar")
    model, reference = make_checkpoints(f"wds:{folder / '00000000.tar'}", tmp_path)
    uids = open_source(f"wds:{folder / '00000000.tar'}").sample_ids.tolist()
    rng = np.random.default_rng(0)
    published = pd.DataFrame(
        {
            "uid": [*uids, "0" * 31 + "1", "0" * 31 + "2"],  # two uids the local pool lacks
            "text": [f"t{k}" for k in range(26)],
            "clip_l14_similarity_score": rng.uniform(0.1, 0.4, 26),
        }
    )
    published.to_parquet(folder / "00000000.parquet")
    pairs = ["--arch", "small_dual", "--batch-size", "8", "--quiet", "--device", "cpu"]
    run = run_score(capsys, f"wds:{folder}/{{00000000..00000000}}.tar", tmp_path / "run", model, reference, arch=pairs)
    samples = run.samples
    expected = published.set_index("uid").loc[samples["sample_id"], "clip_l14_similarity_score"].to_numpy()
    np.testing.assert_allclose(samples["clip_l14_similarity_score"], expected)
    facts = run.meta["source"]["metadata"]
    assert facts["matched"] == 24 and facts["not_in_pool"] == 2 and facts["key"] == "uid"
    assert any(w.startswith("METADATA: 2 of the 26 uid(s)") for w in run.meta["warnings"])
    assert "clip_l14_similarity_score" in open_index(tmp_path / "run").score_columns  # a column of the app
    out = tmp_path / "subset.npy"
    status = main(
        [
            "export",
            str(tmp_path / "run"),
            "--rule",
            "clip_l14_similarity_score:top=30%",
            "--rule",
            "mimic_score:drop=15%",
            "--format",
            "uids",
            "--out",
            str(out),
        ]
    )
    assert status == 0, capsys.readouterr().err
    rule = all_of(
        [FilterRule("top_fraction", 0.3, "clip_l14_similarity_score"), FilterRule("quantile", 0.15, "mimic_score")]
    )
    keep = apply_rule(samples, rule).keep
    top = samples["clip_l14_similarity_score"].rank(ascending=False) <= 0.3 * 24 + 1e-9
    assert keep.sum() >= 1 and not (keep & ~top.to_numpy()).any()
    exported = np.load(out)
    assert np.array_equal(exported, datacomp_uids(samples["sample_id"].to_numpy(), keep))
    # the same metadata named with --metadata is the same run (its content hash is the identity)
    again = main(
        [
            "score",
            "--data",
            f"wds:{folder}/{{00000000..00000000}}.tar",
            *pairs,
            "--model",
            str(model),
            "--reference",
            str(reference),
            "--out",
            str(tmp_path / "run"),
            "--metadata",
            str(folder / "*.parquet"),
        ]
    )
    assert again == 0 and "already holds this run" in capsys.readouterr().err


def test_bad_metadata_and_an_unreachable_shard_write_nothing(tmp_path, capsys, labelled_checkpoints):
    model, reference = labelled_checkpoints
    pd.DataFrame({"key": ["a"], "score": [1.0]}).to_parquet(tmp_path / "nokey.parquet")
    cases = [
        (f"folder:{FIXTURE}", ["--metadata", str(tmp_path / "nokey.parquet")], "has no uid or sample_id column"),
        (f"folder:{FIXTURE}", ["--metadata", str(tmp_path / "absent.parquet")], "no such file"),
        ("wds:http://127.0.0.1:9/pool-{00..01}.tar", [], "cannot fetch shard http://127.0.0.1:9/pool-00.tar"),
        (f"hf:{tmp_path / 'absent'}", [], "does not exist"),
    ]
    for k, (data, extra, cause) in enumerate(cases):
        out = tmp_path / f"run{k}"
        models = ["--model", str(model), "--reference", str(reference)]
        status = main(["score", "--data", data, *SMALL, *models, "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert status == 2 and err.startswith("error: ") and cause in err and "\n" not in err, err
        assert not out.exists()


def test_export_hf_gives_the_original_rows_with_the_run_columns(tmp_path, capsys, labelled_checkpoints):
    model, reference = labelled_checkpoints
    cifar_dataset().save_to_disk(str(tmp_path / "hf"))
    run = run_score(capsys, f"hf:{tmp_path / 'hf'}?id=key", tmp_path / "run", model, reference)
    out = tmp_path / "kept"
    args = ["export", str(tmp_path / "run"), "--top-fraction", "0.5", "--format", "hf", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    kept = datasets.load_from_disk(str(out))
    samples = run.samples
    expected = samples[apply_rule(samples, FilterRule("top_fraction", 0.5, "mimic_score")).keep]
    assert len(kept) == len(expected) == 15
    assert kept["key"] == expected["sample_id"].tolist()  # the original rows, in their order
    assert kept.features["img"].__class__.__name__ == "Image" and kept.features["label"].names[0] == "airplane"
    assert kept["label"] == kept["run_label"]  # the run's label beside the dataset's own (no noise injected)
    np.testing.assert_allclose(kept["mimic_score"], expected["mimic_score"])
    original = cifar_dataset()
    rows = {key: k for k, key in enumerate(original["key"])}
    assert kept[0]["img"].tobytes() == original[rows[kept[0]["key"]]]["img"].tobytes()
    spec = (tmp_path / "kept.spec.json").read_text()
    assert '"format": "hf"' in spec
    # the spec verifies against the folder it describes; an edited folder no longer matches
    from mimic_explorer.store.filter_files import pair_problem, read_spec_file

    assert pair_problem(out, read_spec_file(tmp_path / "kept.spec.json")) is None
    # exporting again replaces the folder as one change; a file in the way is one line
    assert main([*args[:3], "0.2", *args[4:]]) == 0
    assert len(datasets.load_from_disk(str(out))) == 6
    (out / "extra.txt").write_text("x")
    assert "not the keep-list its spec describes" in pair_problem(out, read_spec_file(tmp_path / "kept.spec.json"))
    (tmp_path / "file").write_text("x")
    assert main([*args[:-1], str(tmp_path / "file")]) == 2
    assert "it is a file (--format hf writes a folder)" in capsys.readouterr().err


def test_torchrun_fetches_each_remote_shard_once_and_scores_as_one_process(tmp_path, capsys, labelled_checkpoints):
    from tests.conftest import run_torchrun

    model, reference = labelled_checkpoints
    shards = tmp_path / "www"
    write_pool_shards(shards, fixture_items(), shards=2)
    cifar_dataset().save_to_disk(str(tmp_path / "hf"))
    expected = by_stem(run_score(capsys, f"folder:{FIXTURE}", tmp_path / "one", model, reference))
    with ShardServer(shards) as server:
        specs = {"http": f"wds:{server.url}/pool-{{00..01}}.tar", "hf": f"hf:{tmp_path / 'hf'}?id=key"}
        for name, spec in specs.items():
            args = ["score", "--data", spec, *SMALL, "--model", str(model), "--reference", str(reference)]
            proc = run_torchrun(*args, "--chunk-size", "8", "--out", str(tmp_path / name))
            assert proc.returncode == 0, proc.stderr
            run = open_run(tmp_path / name)
            assert run.meta["world_size"] == 2
            found = by_stem(run)
            assert list(found.index) == list(expected.index)
            np.testing.assert_allclose(found["proj"], expected["proj"], rtol=1e-5, atol=1e-7)
        fetched = [n for n, _ in server.requests if n.endswith(".tar")]
    assert sorted(fetched) == ["pool-00.tar", "pool-01.tar"]  # two ranks, one fetch of each shard
