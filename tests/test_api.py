"""``me.score`` / ``me.train``: the command line's runs from Python, on data and models in memory.

The bar: ``me.score`` gives the scores ``mimic-explorer score`` writes for the same data and
checkpoints — whether the models come as checkpoint paths or as modules, and whether the data is a
SPEC, a Dataset of pictures, a Dataset of the model's tensors or a Hugging Face dataset (each read
through ``data.torch_source``). ``out=`` reuses a run as ``--out`` does, and refuses one made from
other data; ``train`` trains a copy and leaves the caller's model as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import mimic_explorer as me
from mimic_explorer.cli import main
from mimic_explorer.data.folder import FolderSource
from mimic_explorer.data.transforms import default_transform
from mimic_explorer.models.build import build_for_run
from mimic_explorer.models.checkpoints import save_checkpoint
from mimic_explorer.store.reader import open_run
from tests.ui_helpers import ROOT

CIFAR = ROOT / "tests" / "fixtures" / "cifar_mini"
SPEC = f"folder:{CIFAR}"
MLP_INPUTS = default_transform("mlp")  # what --arch mlp feeds the model: 32 px, mean/std 0.5


class Pictures(Dataset):
    """A torchvision-style dataset: (PIL picture, class index), in the folder's order, with ``classes``."""

    def __init__(self, source: FolderSource, transform=None):
        self.source, self.transform, self.classes = source, transform, source.class_names

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        picture = self.source.load(i)
        return (picture if self.transform is None else self.transform(picture)), int(self.source.labels[i])


@pytest.fixture(scope="module")
def pool() -> FolderSource:
    return FolderSource(str(CIFAR), spec=SPEC)


@pytest.fixture(scope="module")
def models():
    """An MLP and its reference: the same weights but for a nudged head (a shared basis, scores not all zero)."""
    torch.manual_seed(0)
    model = build_for_run("mlp", 10).model
    reference = build_for_run("mlp", 10).model
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.head.weight.add_(0.2 * torch.randn_like(reference.head.weight))
    return model.eval(), reference.eval()


@pytest.fixture(scope="module")
def cli_scores(models, tmp_path_factory):
    """``mimic-explorer score`` on the fixture pool with the two models saved as checkpoints: mimic_score by id."""
    folder = tmp_path_factory.mktemp("cli")
    for name, module in zip(("m.pt", "r.pt"), models):
        save_checkpoint(module, folder / name)
    command = ["score", "--data", SPEC, "--arch", "mlp", "--model", str(folder / "m.pt"), "--quiet"]
    assert main([*command, "--reference", str(folder / "r.pt"), "--out", str(folder / "run")]) == 0
    samples = open_run(folder / "run").samples.set_index("sample_id")
    assert samples["mimic_score"].abs().max() > 0  # scores that can differ
    return folder, samples


def _same_scores(result: me.api.Result, expected: pd.DataFrame, ids=None, columns=("mimic_score", "proj_last")) -> None:
    samples = result.samples
    keys = samples["sample_id"] if ids is None else ids[samples["index"].to_numpy()]
    for column in columns:
        np.testing.assert_allclose(samples[column], expected.loc[keys, column], rtol=1e-6, atol=1e-7, err_msg=column)
    assert (samples["keep"].to_numpy() == expected.loc[keys, "keep"].to_numpy()).all()


def test_checkpoint_paths_give_the_scores_the_command_line_writes(cli_scores, tmp_path):
    folder, expected = cli_scores
    result = me.score(folder / "m.pt", folder / "r.pt", SPEC, arch="mlp", out=tmp_path / "run")
    assert result.path == (tmp_path / "run").resolve() or result.path == tmp_path / "run"
    _same_scores(result, expected)
    assert result.keep_mask.tolist() == result.samples["keep"].tolist()


def test_modules_give_the_same_scores_and_are_left_as_they_were(cli_scores, models):
    _, expected = cli_scores
    model, reference = models
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = me.score(model, reference, SPEC, transform=MLP_INPUTS)
    _same_scores(result, expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_a_dataset_of_pictures_a_dataloader_and_one_of_tensors_give_the_same_scores(cli_scores, models, pool):
    _, expected = cli_scores
    ids = pool.sample_ids
    pictures = me.score(*models, Pictures(pool), transform=MLP_INPUTS)
    _same_scores(pictures, expected, ids)
    assert pictures.run.class_names == pool.class_names and pictures.samples["source"][0] == "Pictures[0]"
    tensors = Pictures(pool, transform=MLP_INPUTS)  # the dataset applies the model's transform itself
    loaded = me.score(*models, DataLoader(tensors, batch_size=7, shuffle=True))
    # the loader's batch size is used (its shuffling is not): proj is per sample, the Stage-1 weight per batch
    _same_scores(loaded, expected, ids, columns=("proj_last",))
    assert loaded.run.meta["config"]["batch_size"] == 7
    assert loaded.run.thumbnails.get(loaded.samples["sample_id"][0])  # a picture of each tensor, for the app
    assert loaded.ranked()["mimic_score"].is_monotonic_increasing


def test_a_hugging_face_dataset_is_read_by_its_features(cli_scores, models, pool):
    datasets = pytest.importorskip("datasets")
    _, expected = cli_scores
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=pool.class_names)})
    rows = {"img": [pool.load(i) for i in range(len(pool))], "fine": pool.labels.tolist()}
    result = me.score(*models, datasets.Dataset.from_dict(rows, features=features), transform=MLP_INPUTS)
    _same_scores(result, expected, pool.sample_ids)
    assert result.run.class_names == pool.class_names


def test_out_reuses_the_run_and_refuses_one_made_from_other_data(models, pool, tmp_path):
    tensors = [(MLP_INPUTS(pool.load(i)), int(pool.labels[i])) for i in range(len(pool))]
    first = me.score(*models, tensors, out=tmp_path / "run")
    again = me.score(*models, tensors, out=tmp_path / "run")
    assert not first.cached and again.cached
    pd.testing.assert_frame_equal(first.samples, again.samples)
    tensors[3] = (tensors[3][0] + 1.0, tensors[3][1])  # one item's content changed, ids and labels the same
    with pytest.raises(ValueError, match="holds a different run"):
        me.score(*models, tensors, out=tmp_path / "run")


def test_an_item_the_dataset_cannot_give_is_recorded_and_not_kept(models, pool):
    class Flaky(Pictures):
        def __getitem__(self, i):
            if i == 4:
                raise OSError("disk hiccup")
            return super().__getitem__(i)

    result = me.score(*models, Flaky(pool), transform=MLP_INPUTS)
    assert len(result.samples) == len(pool) - 1 and 4 not in result.samples["index"].tolist()
    assert len(result.keep_mask) == len(pool) and not result.keep_mask[4]
    errors = result.run.errors
    assert errors["path"].tolist() == ["Flaky[4]"] and "disk hiccup" in errors["reason"][0]


@pytest.mark.slow
def test_train_trains_a_copy_returns_it_and_reads_it_back_from_a_finished_run(models, pool, tmp_path):
    model, _ = models
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = me.train(model, None, SPEC, transform=MLP_INPUTS, epochs=2, batch_size=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(reference.model.head.weight, model.head.weight)
    run = me.train(model, reference.model, SPEC, transform=MLP_INPUTS, epochs=2, batch_size=8, out=tmp_path / "gm")
    assert run.run.meta["kind"] == "train" and run.run.scores["epoch"].nunique() == 2
    assert {"mimic_score", "keep", "reference_loss"} <= set(run.samples.columns)
    again = me.train(model, reference.model, SPEC, transform=MLP_INPUTS, epochs=2, batch_size=8, out=tmp_path / "gm")
    assert again.cached and torch.equal(again.model.head.weight, run.model.head.weight)


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(3, 32, 32), 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, r: me.score(m, r, Stream()), "Stream has no positions to read samples by"),
        (lambda m, r: me.score(m, None, SPEC, transform=MLP_INPUTS), "score needs a reference"),
        (lambda m, r: me.score(m, r, SPEC, arch="mlp"), "arch= names the architecture of checkpoint files"),
        (lambda m, r: me.score(m, "r.pt", SPEC), "both as modules or both as checkpoint paths"),
        (lambda m, r: me.score("m.pt", "r.pt", SPEC), "checkpoint paths need arch="),
        (lambda m, r: me.score(m, r, SPEC), "pass transform="),
        (
            lambda m, r: me.score(m, r, TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4)), transform=MLP_INPUTS),
            "the dataset gives tensors",
        ),
        (lambda m, r: me.score(m, r, SPEC, transform=MLP_INPUTS, epochs=3), "unknown option\\(s\\) epochs"),
        (lambda m, r: me.score(m, r, [(torch.zeros(3, 32, 32), 0)] * 3), "has 10 outputs and the pool 1 classes"),
        (lambda m, r: me.score(m, r, [(torch.zeros(3, 32, 32), "a caption")] * 3), "image-text pairs are scored"),
    ],
)
def test_a_bad_call_is_one_line_and_leaves_nothing_behind(models, tmp_path, monkeypatch, call, message):
    import tempfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where out=None puts its run
    with pytest.raises(ValueError, match=message) as raised:
        call(*models)
    assert "\n" not in str(raised.value)
    assert [p.name for p in tmp_path.rglob("*")] == ["tmp"]


def test_the_top_level_names_the_api_without_importing_torch_first():
    import subprocess
    import sys

    from mimic_explorer.commands import python_api as api

    code = "import sys, mimic_explorer; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"  # the app imports the package without torch
    assert me.score is api.score and me.train is api.train


def test_image_text_pairs_from_checkpoints_give_the_command_lines_scores(tmp_path):
    from tests.pairs_helpers import make_checkpoints

    spec = f"wds:{ROOT / 'tests' / 'fixtures' / 'flickr_mini' / 'pairs.tar'}"
    model, reference = make_checkpoints(spec, tmp_path)
    common = ["--data", spec, "--arch", "small_dual", "--model", str(model), "--reference", str(reference)]
    assert main(["score", *common, "--batch-size", "8", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    expected = open_run(tmp_path / "cli").samples.set_index("sample_id")
    result = me.score(model, reference, spec, arch="small_dual", batch_size=8)
    _same_scores(result, expected)
    assert result.samples["caption"].tolist() == expected.loc[result.samples["sample_id"], "caption"].tolist()
