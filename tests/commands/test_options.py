"""Command options are checked in full — every option and every rule between options — before a run
directory is touched, and only what determines the results goes into the run id."""

from __future__ import annotations

import math

import pytest

from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from tests.conftest import run_cli


def _train(**changes) -> TrainOptions:
    return TrainOptions(**{"data": "digits", "arch": "mlp", "out": "runs/x", **changes})


def _score(**changes) -> ScoreOptions:
    return ScoreOptions(
        **{"data": "digits", "arch": "mlp", "out": "runs/x", "model": "m.pt", "reference": "r.pt", **changes}
    )


def test_defaults_are_valid():
    _train().validate()
    _score().validate()
    assert _score().binarisation == "proj" and _train().binarisation is None


def test_train_binarisation_is_the_pool_kinds_unless_given():
    from mimic_explorer.tasks import LabelledTask, PairsTask

    def train_binarisation(options, kind):
        return options.binarisation or {"labelled": LabelledTask(), "pairs": PairsTask()}[kind].default_binarisation()

    assert train_binarisation(_train(), "labelled") == "weight" and train_binarisation(_train(), "pairs") == "gmm"
    assert train_binarisation(_train(binarisation="kmeans"), "pairs") == "kmeans"
    assert train_binarisation(_train(binarisation="proj"), "labelled") == "proj"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"label_noise": 1.0}, "--label-noise"),
        ({"label_noise": -0.1}, "--label-noise"),
        ({"noise_type": "pairs"}, "--noise-type"),
        ({"temperature": 0}, "--temperature"),
        ({"batch_size": 0}, "--batch-size"),
        ({"reference_noise": -1}, "--reference-noise"),
        ({"workers": -1}, "--workers"),
        ({"device": "tpu"}, "unknown device"),
        ({"binarisation": "vote"}, "--binarise"),
        ({"aggregation": "median"}, "--aggregate"),
        ({"data": ""}, "--data"),
    ],
)
def test_common_options_are_checked_for_both_commands(changes, message):
    for options in (_train(**changes), _score(**changes)):
        with pytest.raises(ValueError, match=message):
            options.validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "--epochs"),
        ({"lr": 0}, "--lr"),
        ({"weight_decay": -1}, "--weight-decay"),
        ({"optimizer": "lion"}, "--optimizer"),
        ({"method": "loss"}, "--method"),
        ({"reweight": "tail"}, "--reweight"),
        ({"starting_epoch": -1}, "--starting-epoch"),
        ({"checkpoint_every": -1}, "--checkpoint-every"),
        ({"checkpoint_every": math.nan}, "--checkpoint-every"),
    ],
)
def test_train_options_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        _train(**changes).validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": None}, "--model"),
        ({"reference": None}, "--reference"),
        ({"score_method": "normed_proj"}, "--method"),
        ({"chunk_size": 0}, "--chunk-size"),
        ({"params": " , "}, "--params"),
        ({"linear_probe": True, "params": "all"}, "--linear-probe scores the head only"),
        ({"linear_probe": True, "params": "fc.weight"}, "--linear-probe scores the head only"),
    ],
)
def test_score_options_are_checked_including_rules_between_options(changes, message):
    with pytest.raises(ValueError, match=message):
        _score(**changes).validate()
    _score(linear_probe=True, params="head").validate()


def test_score_params_reach_the_scorer_as_it_takes_them():
    assert _score().mimic_params() == "head" and _score(params="all").mimic_params() == "all"
    assert _score(params="fc.weight, fc.bias").mimic_params() == ["fc.weight", "fc.bias"]


def test_identity_holds_what_determines_the_results_and_nothing_else():
    base = _train()
    assert base.identity()["command"] == "train" and _score().identity()["command"] == "score"
    same = _train(
        out="elsewhere",
        force=True,
        quiet=True,
        device="cpu",
        workers=4,
        save_model="m.pt",
        trust_pickle=True,
        checkpoint_every=0,
    )
    assert same.identity() == base.identity()
    for changes in ({"epochs": 3}, {"label_noise": 0.3}, {"seed": 1}, {"reference": "r.pt"}, {"temperature": 2.0}):
        assert _train(**changes).identity() != base.identity(), changes
    assert _score(chunk_size=10).identity() == _score().identity()
    assert _score(score_method="cos").identity() != _score().identity()
    assert base.to_dict()["out"] == "runs/x" and base.to_dict()["command"] == "train"


@pytest.mark.slow
def test_bad_option_combinations_fail_on_the_command_line_before_anything_is_written(tmp_path):
    score = run_cli(
        "score",
        "--data",
        "digits",
        "--arch",
        "mlp",
        "--model",
        "m.pt",
        "--reference",
        "r.pt",
        "--linear-probe",
        "--params",
        "all",
        "--out",
        str(tmp_path / "s"),
    )
    assert score.returncode == 2 and score.stderr.startswith("error: --linear-probe scores the head only")
    train = run_cli(
        "train", "--data", "digits", "--arch", "mlp", "--checkpoint-every", "-1", "--out", str(tmp_path / "t")
    )
    assert train.returncode == 2 and "--checkpoint-every" in train.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
