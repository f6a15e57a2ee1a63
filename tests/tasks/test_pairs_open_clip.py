"""``score`` and ``train`` with ``--arch open_clip:NAME`` on real Flickr8k pairs, with a one-layer ViT
config registered for the test (random weights, never downloaded): the scored model from this
package's checkpoint format, the reference from a state dict in open_clip's own names (as a released
CLIP is distributed); Grad-Mimic while both towers train, the pairs decoded every epoch."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.models.dual_checkpoint import save_dual_encoder
from mimic_explorer.models.dual_registry import build_dual_encoder
from mimic_explorer.tasks.dual_models import load_pair_model
from tests.pairs_helpers import flickr_pool, needs_flickr

open_clip = pytest.importorskip("open_clip")
pytestmark = [needs_flickr, pytest.mark.slow]

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAME = "mimic-explorer-tiny-vit"


def _native_reference(folder) -> str:
    """A released-style open_clip state dict of the tiny config (registered here)."""
    (folder / f"{NAME}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(str(folder / f"{NAME}.json"))
    torch.manual_seed(0)
    torch.save(open_clip.create_model(NAME, pretrained=None).state_dict(), folder / "reference-native.pt")
    return str(folder / "reference-native.pt")


def test_open_clip_pairs_run_with_a_native_reference(tmp_path):
    _native_reference(tmp_path)
    model = build_dual_encoder(f"open_clip:{NAME}", init=tmp_path / "reference-native.pt")
    scored = copy.deepcopy(model)
    with torch.no_grad():
        scored.image_projection.weight.add_(0.05 * torch.randn_like(scored.image_projection.weight))
    save_dual_encoder(scored, tmp_path / "model.pt", arch=f"open_clip:{NAME}", input_shape=model.input_shape)
    pool = flickr_pool(tmp_path / "pool.tar", 16)
    options = ScoreOptions(
        data=f"wds:{pool}",
        arch=f"open_clip:{NAME}",
        out=str(tmp_path / "run"),
        model=str(tmp_path / "model.pt"),
        reference=str(tmp_path / "reference-native.pt"),
        mimic_layer="image",
        score_method="cos",
        batch_size=8,
        device="cpu",
        quiet=True,
    )
    run = open_run(run_score(options).path)
    samples = run.samples
    assert len(samples) == 16 and run.meta["params"] == "image_projection.weight"
    assert run.meta["basis"]["tower_distance"] == 0.0 and not run.meta["warnings"]
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert np.abs(samples["clip_score_ref"] - samples["clip_score_model"]).max() > 0  # the image projections differ


def test_open_clip_grad_mimic_while_both_towers_train(tmp_path):
    reference_path = _native_reference(tmp_path)
    pool = flickr_pool(tmp_path / "pool.tar", 16)
    saved = tmp_path / "trained.pt"
    options = TrainOptions(
        data=f"wds:{pool}",
        arch=f"open_clip:{NAME}",
        out=str(tmp_path / "run"),
        reference=reference_path,
        mimic_layer="image",
        caption_noise=0.25,
        epochs=2,
        batch_size=8,
        lr=1e-3,
        device="cpu",
        save_model=str(saved),
        quiet=True,
    )
    outcome = run_train(options)
    run = open_run(outcome.path)
    samples = run.samples
    assert len(samples) == 16 and outcome.summary["pairs"]["towers_trained"] == "both"
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    drift = run.meta["basis"]["drift_per_epoch"]
    assert [d["epoch"] for d in drift] == [0, 1] and drift[-1]["to_reference"] > 0
    trained, _ = load_pair_model(str(saved), f"open_clip:{NAME}", "--model")
    reference, _ = load_pair_model(reference_path, f"open_clip:{NAME}", "--reference")
    visual = [k for k, v in reference.state_dict().items() if k.startswith("clip.visual.") and v.is_floating_point()]
    assert any(
        not torch.equal(trained.state_dict()[k], reference.state_dict()[k]) for k in visual
    )  # the image tower learned
