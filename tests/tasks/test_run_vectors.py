"""What a Grad-Mimic ``train`` run keeps for the map and the suggested label, in every mode.

Labelled runs (linear probe and fine-tune): ``ref_pred`` / ``ref_prob`` in samples.parquet and the
reference's class probabilities in ``reference_probs.npy``, row r = samples row r — checked against
the ``reference_loss`` column (−log of the given label's probability, written by another path) on a
pool with a bad sample that shifts the rows; so cleanlab runs on them in two lines:

    pred_probs = np.load(RUN / "reference_probs.npy")
    issues = cleanlab.filter.find_label_issues(samples["label"], pred_probs)

and the head inputs in ``embeddings/image.npy`` (a linear probe: its backbone features, which the
reference head turns back into the reference's probabilities). Image-text pairs: the reference's
image and caption embeddings, unit length, whose dot product is the ``clip_score_ref`` column.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer.store.layout import RunLayout
from tests.golden.runner import QUIET_CPU, run_command

pytestmark = pytest.mark.slow  # four tiny real training runs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEEDS = ["--seed", "0", "--noise-seed", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectors")
    shutil.copytree(FIXTURES / "cifar_mini", root / "cifar")
    (root / "cifar" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")  # row r is no longer position r
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIMIC_EXPLORER_CACHE", str(root / "cache"))
        yield root


def _labelled(root: Path) -> list[str]:
    data = ["--data", f"folder:{root / 'cifar'}", "--arch", "small_cnn", "--batch-size", "8", *SEEDS, *QUIET_CPU]
    return ["train", *data, "--epochs", "2", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def base(root) -> Path:
    run_command([*_labelled(root), "--save-model", str(root / "base.pt")], root / "plain")
    return root / "base.pt"


def _grad_mimic(root: Path, base: Path, name: str, *mode: str) -> Path:
    reference = root / f"{name}-ref.pt"
    init = ["--init", str(base), *mode]
    run_command([*_labelled(root), *init, "--save-model", str(reference)], root / f"{name}-ref")
    return run_command([*_labelled(root), *init, "--reference", str(reference), "--label-noise", "0.3"], root / name)


@pytest.fixture(scope="module", params=["linear-probe", "fine-tune"])
def labelled_run(request, root, base) -> Path:
    mode = ["--linear-probe"] if request.param == "linear-probe" else []
    return _grad_mimic(root, base, request.param, *mode)


def test_reference_probabilities_line_up_with_the_samples(labelled_run):
    samples = pd.read_parquet(labelled_run / "samples.parquet")
    layout = RunLayout(labelled_run)
    probs = np.load(layout.reference_probs)
    assert probs.shape == (len(samples), 10) and probs.dtype == np.float32
    assert len(samples) == 30 and "cat/broken.jpg" not in set(samples["sample_id"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    labels = samples["label"].to_numpy()
    given = probs[np.arange(len(samples)), labels]
    np.testing.assert_allclose(-np.log(given), samples["reference_loss"].to_numpy(), rtol=1e-4, atol=1e-5)
    assert np.array_equal(samples["ref_pred"].to_numpy(dtype=np.int64), probs.argmax(axis=1))
    np.testing.assert_allclose(samples["ref_prob"].to_numpy(), probs.max(axis=1), rtol=1e-6)
    embedding = np.load(layout.embedding("image"), mmap_mode="r")
    assert embedding.dtype == np.float16 and len(embedding) == len(samples) and np.isfinite(embedding).all()


def test_a_linear_probe_keeps_its_backbone_features_as_the_embedding(root, labelled_run):
    if labelled_run.name != "linear-probe":
        pytest.skip("the features a reference head reads back are a linear probe's")
    state = torch.load(root / "linear-probe-ref.pt", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    head = next(k for k in state if k.endswith("weight") and state[k].shape[0] == 10)
    weight, bias = state[head], state[head.replace("weight", "bias")]
    features = torch.from_numpy(np.load(RunLayout(labelled_run).embedding("image")).astype(np.float32))
    probs = torch.softmax(features @ weight.float().T + bias.float(), dim=1).numpy()
    np.testing.assert_allclose(probs, np.load(RunLayout(labelled_run).reference_probs), atol=5e-3)


def test_pairs_keep_the_references_image_and_caption_embeddings(root):
    data = ["--data", f"wds:{FIXTURES / 'flickr_mini' / 'pairs.tar'}", "--arch", "small_dual", "--batch-size", "8"]
    train = ["train", *data, *SEEDS, *QUIET_CPU, "--epochs", "1", "--checkpoint-every", "0"]
    run_command([*train, "--frozen-image-tower", "--save-model", str(root / "P.pt")], root / "pairs-ref")
    run = run_command([*train, "--frozen-towers", "--reference", str(root / "P.pt")], root / "pairs")
    samples = pd.read_parquet(run / "samples.parquet")
    layout = RunLayout(run)
    assert layout.embedding_sources() == ["image", "text"]
    image, text = (np.load(layout.embedding(s)).astype(np.float64) for s in ("image", "text"))
    assert image.shape[0] == text.shape[0] == len(samples)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=2e-3)
    np.testing.assert_allclose((image * text).sum(axis=1), samples["clip_score_ref"].to_numpy(), atol=5e-3)
    assert not layout.reference_probs.exists() and "ref_pred" not in samples.columns
    assert layout.scratch_files() == []  # the embeddings' scratch files are gone once the run is complete
