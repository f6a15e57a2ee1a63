"""Backbones from the command line: timm and torchvision models (random weights, nothing downloaded) and a
``file.py:function`` CNN go through ``train``/``score`` end to end on the 30-image CIFAR fixture; each
run records the preprocessing it used, which is part of the run id and of the feature-cache key; a
saved probe's preprocessing is adopted by the runs that use it; the same weights as ``.safetensors``
score identically; bad input is a one-line error before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.models.checkpoints import save_checkpoint
from tests.conftest import run_cli
from tests.data.test_sources import FIXTURE

POOL = f"folder:{FIXTURE}"
PROBE = ["--data", POOL, "--linear-probe", "--epochs", "2", "--batch-size", "8", "--quiet"]


def _cache(tmp_path: Path) -> dict:
    """A private cache folder, so the feature files a test counts are its own."""
    return {"MIMIC_EXPLORER_CACHE": str(tmp_path / "cache")}


def _feature_files(tmp_path: Path) -> set[str]:
    """The feature-cache entries (each a folder with its entry.json)."""
    return {p.parent.name for p in (tmp_path / "cache" / "features").glob("*/entry.json")}


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_timm_linear_probe_records_its_preprocessing_and_keys_run_and_features_by_it(tmp_path):
    timm = pytest.importorskip("timm")
    env = _cache(tmp_path)
    args = ["train", *PROBE, "--arch", "timm:resnet18", "--label-noise", "0.3"]
    first = run_cli(*args, "--image-size", "32", "--out", str(tmp_path / "a"), env=env)
    _ok(first)
    meta = open_run(tmp_path / "a").meta
    config = timm.data.resolve_model_data_config(timm.create_model("resnet18"))
    assert meta["model"]["preprocessing"] == {
        "resize": 32,
        "crop": 32,
        "mean": pytest.approx(list(config["mean"])),
        "std": pytest.approx(list(config["std"])),
        "interpolation": config["interpolation"],
    }
    assert meta["model"]["preprocessing_source"] == "timm data config of resnet18; --image-size 32"
    assert meta["model"]["arch"] == "timm:resnet18" and meta["model"]["head"] == "fc"
    assert meta["fingerprints"]["preprocessing"] == meta["model"]["preprocessing"]
    assert len(open_run(tmp_path / "a").samples) == 30 and not meta["warnings"]
    features = _feature_files(tmp_path)
    assert len(features) == 1

    again = run_cli(*args, "--image-size", "32", "--out", str(tmp_path / "a"), env=env)
    _ok(again)
    assert "cached" in again.stderr and _feature_files(tmp_path) == features

    bigger = run_cli(*args, "--image-size", "40", "--out", str(tmp_path / "b"), env=env)
    _ok(bigger)
    other = open_run(tmp_path / "b").meta
    assert other["run_id"] != meta["run_id"] and other["model"]["preprocessing"]["crop"] == 40
    assert len(_feature_files(tmp_path)) == 2  # same random backbone, other preprocessing: another cache entry
    assert other["timings"]["features_cached"] is False


@pytest.mark.slow
def test_torchvision_probe_and_its_reference_share_the_preprocessing_the_probe_was_saved_with(tmp_path):
    env = _cache(tmp_path)
    reference = tmp_path / "reference.pt"
    common = ["train", *PROBE, "--arch", "torchvision:resnet18"]
    _ok(run_cli(*common, "--image-size", "40", "--out", str(tmp_path / "ref"), "--save-model", str(reference), env=env))
    sidecar = json.loads(Path(str(reference) + ".meta.json").read_text())
    assert sidecar["preprocessing"] == open_run(tmp_path / "ref").meta["model"]["preprocessing"]
    assert sidecar["preprocessing"]["crop"] == 40 and sidecar["preprocessing"]["mean"] == pytest.approx(
        [0.485, 0.456, 0.406]
    )

    adopted = run_cli(
        *common, "--reference", str(reference), "--label-noise", "0.3", "--out", str(tmp_path / "gm"), env=env
    )
    _ok(adopted)
    assert f"note: preprocessing recorded with --reference {reference} is used" in adopted.stderr
    meta = open_run(tmp_path / "gm").meta
    assert meta["model"]["preprocessing"] == sidecar["preprocessing"] and meta["model"]["head"] == "fc"
    assert meta["load_reports"]["reference"]["head"] == "fc" and not meta["warnings"]
    assert meta["basis"]["backbone_distance_at_start"] == 0.0  # same seed, same random backbone
    assert "note: preprocessing recorded" in (tmp_path / "gm" / "run.log").read_text()

    contradicted = run_cli(
        *common,
        "--reference",
        str(reference),
        "--label-noise",
        "0.3",
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "gm32"),
        env=env,
    )
    _ok(contradicted)
    assert (
        "WARNING: PREPROCESSING MISMATCH: --reference" in contradicted.stderr and "crop 40 -> 32" in contradicted.stderr
    )
    assert any("PREPROCESSING MISMATCH" in w for w in open_run(tmp_path / "gm32").meta["warnings"])


@pytest.mark.slow
def test_score_takes_the_preprocessing_its_model_was_saved_with(tmp_path):
    pytest.importorskip("timm")
    env = _cache(tmp_path)
    probe = tmp_path / "probe.pt"
    _ok(
        run_cli(
            "train",
            *PROBE,
            "--arch",
            "timm:test_resnet",
            "--image-size",
            "40",
            "--out",
            str(tmp_path / "t"),
            "--save-model",
            str(probe),
            env=env,
        )
    )
    proc = run_cli(
        "score",
        "--data",
        POOL,
        "--arch",
        "timm:test_resnet",
        "--model",
        str(probe),
        "--reference",
        str(probe),
        "--linear-probe",
        "--quiet",
        "--out",
        str(tmp_path / "s"),
        env=env,
    )
    _ok(proc)
    run = open_run(tmp_path / "s")
    assert run.meta["model"]["preprocessing"]["crop"] == 40
    assert run.meta["model"]["preprocessing_source"] == f"recorded with --model {probe}"
    assert run.meta["load_reports"]["model"]["head"] == "fc" and run.meta["same_init"] is None
    assert not run.meta["warnings"]  # the shared backbone: no feature-basis warning
    assert len(run.scores) == 30 and np.allclose(run.scores["proj"], 0.0)  # model and reference are one checkpoint

    # the same weights as .safetensors (with the same sidecar) load identically: same model, same scores
    as_safetensors = save_checkpoint(torch.load(probe, weights_only=True), tmp_path / "probe.safetensors")
    shutil.copy(str(probe) + ".meta.json", str(as_safetensors) + ".meta.json")
    _ok(
        run_cli(
            "score",
            "--data",
            POOL,
            "--arch",
            "timm:test_resnet",
            "--model",
            str(as_safetensors),
            "--reference",
            str(probe),
            "--linear-probe",
            "--quiet",
            "--out",
            str(tmp_path / "st"),
            env=env,
        )
    )
    from_safetensors = open_run(tmp_path / "st")
    assert from_safetensors.meta["fingerprints"]["model"] == run.meta["fingerprints"]["model"]
    assert from_safetensors.meta["model"]["preprocessing"] == run.meta["model"]["preprocessing"]
    assert np.array_equal(from_safetensors.scores["loss"], run.scores["loss"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "head"),
    [
        ("timm:test_vit", "head"),
        ("timm:test_convnext", "head.fc"),
        ("timm:test_efficientnet", "classifier"),
        ("torchvision:mobilenet_v3_small", "classifier.3"),
        ("torchvision:resnet18", "fc"),
    ],
)
def test_the_linear_probe_protocol_runs_on_each_backbone_family(tmp_path, arch, head):
    """Reference probe on clean labels, Grad-Mimic probe on noisy ones, then ``score`` of the one against
    the other: the head is found in each run and the scores are real numbers that are not all zero."""
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    env = _cache(tmp_path)
    reference, model = tmp_path / "reference.pt", tmp_path / "model.pt"
    common = ["train", *PROBE, "--arch", arch]
    _ok(run_cli(*common, "--image-size", "32", "--out", str(tmp_path / "ref"), "--save-model", str(reference), env=env))
    _ok(
        run_cli(
            *common,
            "--reference",
            str(reference),
            "--label-noise",
            "0.3",
            "--out",
            str(tmp_path / "gm"),
            "--save-model",
            str(model),
            env=env,
        )
    )
    _ok(
        run_cli(
            "score",
            "--data",
            POOL,
            "--arch",
            arch,
            "--model",
            str(model),
            "--reference",
            str(reference),
            "--linear-probe",
            "--label-noise",
            "0.3",
            "--quiet",
            "--out",
            str(tmp_path / "s"),
            env=env,
        )
    )
    assert open_run(tmp_path / "gm").meta["timings"]["features_cached"] is True  # one backbone, one preprocessing
    for name in ("ref", "gm", "s"):
        meta = open_run(tmp_path / name).meta
        assert meta["model"]["arch"] == arch and meta["model"]["head"] == head, name
        assert meta["model"]["preprocessing"]["crop"] == 32 and not meta["warnings"], name
    scores = open_run(tmp_path / "s").scores
    assert len(scores) == 30 and np.isfinite(scores["proj"]).all() and np.abs(scores["proj"]).max() > 0
    assert open_run(tmp_path / "gm").scores["proj"].abs().max() > 0


NETS = """
from torch import nn


def cifar_cnn(num_classes):
    # the Linear fits 32-px inputs only: any other size fails in forward
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, num_classes))


cifar_cnn.input_size = 32


def pooled_cnn(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, num_classes))
"""


@pytest.mark.slow
def test_a_file_cnn_gets_the_input_size_it_declares_or_is_told_the_size_assumed(tmp_path):
    nets = tmp_path / "nets.py"
    nets.write_text(NETS)
    common = ["train", "--data", POOL, "--epochs", "1", "--batch-size", "10", "--quiet"]
    declared = run_cli(*common, "--arch", f"{nets}:cifar_cnn", "--out", str(tmp_path / "declared"))
    _ok(declared)
    meta = open_run(tmp_path / "declared").meta
    assert meta["model"]["preprocessing"]["crop"] == 32 and meta["model"]["preprocessing"]["resize"] == 32
    assert meta["model"]["preprocessing_source"] == f"input_size 32 declared by {nets}:cifar_cnn"
    assert "note:" not in declared.stderr

    assumed = run_cli(*common, "--arch", f"{nets}:pooled_cnn", "--out", str(tmp_path / "assumed"))
    _ok(assumed)
    assert "declares no input size, so 224-px inputs are assumed" in assumed.stderr
    assert "declares no input size" in (tmp_path / "assumed" / "run.log").read_text()
    assert open_run(tmp_path / "assumed").meta["model"]["preprocessing"]["crop"] == 224
    sized = run_cli(*common, "--arch", f"{nets}:pooled_cnn", "--image-size", "32", "--out", str(tmp_path / "sized"))
    _ok(sized)
    assert "note:" not in sized.stderr and open_run(tmp_path / "sized").meta["model"]["preprocessing"]["crop"] == 32


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "timm:resnet19"], "error: timm has no model 'resnet19'. Did you mean resnet18"),
        (["--arch", "timm:resnet18", "--pretrained", "--init", "backbone.pt"], "error: pass either --pretrained"),
        (
            ["--arch", "timm:resnet18", "--pretrained", "laion2b"],
            "error: --pretrained 'laion2b': a TAG names open_clip weights",
        ),
        (["--arch", "small_cnn", "--pretrained"], "error: --pretrained applies to timm:NAME and torchvision models"),
        (
            ["--arch", "small_cnn", "--transform", "resize=big"],
            "error: --transform 'resize=big': resize must be a whole number",
        ),
        (["--arch", "small_cnn", "--transform", "crop=32,sise=40"], "unknown key 'sise'"),
        (["--arch", "small_cnn", "--image-size", "0"], "error: --image-size must be a positive whole number"),
    ],
)
def test_bad_model_choices_are_one_line_errors_before_anything_is_written(tmp_path, extra, message):
    pytest.importorskip("timm")
    proc = run_cli("train", "--data", POOL, "--batch-size", "8", "--quiet", "--out", str(tmp_path / "run"), *extra)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
