"""The CUDA path gives the CPU's results: scoring, training and feature extraction on a GPU.

Skipped without a CUDA GPU; ``benchmarks/gpu_check.sh`` runs this module on a machine that has one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mimic_explorer import open_run
from tests.conftest import COMMON, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def noisy_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model")
    ckpt = root / "model.pt"
    proc = run_cli(
        "train",
        *COMMON,
        "--epochs",
        "2",
        "--label-noise",
        "0.3",
        "--device",
        "cpu",
        "--out",
        str(root / "run"),
        "--save-model",
        str(ckpt),
    )
    assert proc.returncode == 0, proc.stderr
    return ckpt


@pytest.mark.parametrize("extra", [(), ("--linear-probe",)], ids=["all-layers", "linear-probe"])
def test_scoring_on_cuda_equals_scoring_on_cpu(digits_reference, noisy_model, tmp_path, extra):
    runs = {}
    for device in ("cpu", "cuda"):
        proc = run_cli(
            "score",
            "--data",
            "digits",
            "--arch",
            "mlp",
            "--model",
            str(noisy_model),
            "--reference",
            str(digits_reference),
            "--label-noise",
            "0.3",
            "--chunk-size",
            "500",
            "--quiet",
            "--device",
            device,
            "--out",
            str(tmp_path / device),
            *extra,
            env={"MIMIC_EXPLORER_CACHE": str(tmp_path / f"cache-{device}")},
        )
        assert proc.returncode == 0, proc.stderr
        runs[device] = open_run(tmp_path / device)
    cpu, gpu = (runs[d].scores.set_index("sample_id").sort_index() for d in ("cpu", "cuda"))
    np.testing.assert_allclose(gpu["proj"], cpu["proj"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(gpu["loss"], cpu["loss"], rtol=1e-3, atol=1e-6)
    agree = (runs["cpu"].samples["keep"].to_numpy() == runs["cuda"].samples["keep"].to_numpy()).mean()
    assert agree > 0.99


def test_training_on_cuda_records_every_sample_and_detects_noise(digits_reference, tmp_path):
    proc = run_cli(
        "train",
        *COMMON,
        "--epochs",
        "4",
        "--reference",
        str(digits_reference),
        "--label-noise",
        "0.3",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    run = open_run(tmp_path / "run")
    assert run.scores.groupby("sample_id")["epoch"].nunique().eq(4).all()
    assert run.meta["evaluation"]["mimic_score"]["auroc"] > 0.6
    assert "combined_score" in run.samples.columns
