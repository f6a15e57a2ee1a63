"""``train`` on an image-text pool with the towers trained (no ``--frozen-towers``): plainly, the way a
small "pretrained" checkpoint is made — its checkpoint serves as ``--init`` and ``--reference`` of a
frozen-tower run; ``--all-captions`` draws every caption of each photo — and with Grad-Mimic against
such a checkpoint while the towers learn (drift recorded per epoch, end-of-run signals through the
trained towers); what cannot be done is refused before anything is written (a labelled pool's refusal
of these options is in tests/commands/test_task_contract.py)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.commands.options import TrainOptions
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.specs import open_source
from mimic_explorer.models.checkpoints import CheckpointError
from mimic_explorer.models.dual import reset_projections, tower_differences
from mimic_explorer.models.dual_checkpoint import read_dual_checkpoint, save_dual_encoder
from mimic_explorer.scoring.contrastive import clip_score
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from mimic_explorer.training.towers import image_tower_differences
from tests.pairs_helpers import dies_once_in_epoch, flickr_pool, needs_flickr

pytestmark = [needs_flickr]
PAIRS = 24


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tower-train")
    return (
        folder,
        f"wds:{flickr_pool(folder / 'dev.tar', PAIRS, 'dev-00.tar')}",
        f"wds:{flickr_pool(folder / 'pool.tar', PAIRS, 'train-00.tar')}",
    )


def options(data, out, **kw) -> TrainOptions:
    return TrainOptions(
        data=data, arch="small_dual", out=str(out), batch_size=8, device="cpu", quiet=True, **{"epochs": 2, **kw}
    )


@pytest.fixture(scope="module")
def pretrained(pools):
    folder, dev, pool = pools
    path = folder / "P.pt"
    outcome = run_train(
        options(
            dev,
            folder / "pre",
            frozen_image_tower=True,
            all_captions=True,
            save_model=str(path),
            test_data=pool,
            seed=3,
        )
    )
    return path, outcome


@pytest.mark.slow
def test_text_tower_training_draws_all_captions_keeps_the_image_tower_and_saves_a_dual_checkpoint(pools, pretrained):
    path, outcome = pretrained
    summary = outcome.summary
    assert summary["pairs"]["towers_trained"] == "text" and summary["pairs"]["frozen_towers"] is False
    assert summary["pairs"]["photos"] == PAIRS and summary["pairs"]["captions"] == 5 * PAIRS  # Flickr8k: five a photo
    assert set(summary["test_recall"]) == {"i2t@1", "i2t@5", "i2t@10", "t2i@1", "t2i@5", "t2i@10"}
    assert summary["test_recall_ranked"] == {"photos": PAIRS, "captions": 5 * PAIRS}  # Flickr8k: five captions a photo
    run = open_run(outcome.path)
    assert len(run.samples) == PAIRS and run.samples["caption"].str.len().gt(0).all()
    config, state = read_dual_checkpoint(path)
    assert config["frozen_towers"] is False and config["frozen_image_tower"] is True and config["all_captions"] is True
    trained, _ = load_pair_model(str(path), "small_dual", "--reference")
    # the image tower is the fresh model's (seeded by --seed 3), the text tower and projections trained
    torch.manual_seed(3)
    from mimic_explorer.models.dual_registry import build_dual_encoder

    fresh = build_dual_encoder("small_cnn", captions=["a"], input_shape=(3, 32, 32))
    tower = {k: v for k, v in fresh.state_dict().items() if k.startswith("image_tower.")}
    assert all(torch.equal(state[k], v) for k, v in tower.items())
    initial = reset_projections(copy.deepcopy(trained), ["image", "text"], seed=3)
    assert not torch.equal(initial.text_projection.weight, trained.text_projection.weight)
    # the vocabulary was read from all five captions of each photo, not caption #0 alone
    first_only = {w for c in run.samples["caption"] for w in c.lower().split()}
    assert len(trained.tokenizer) - 2 > len(first_only)


@pytest.mark.slow
def test_the_pretrained_checkpoint_is_init_and_reference_of_a_frozen_tower_grad_mimic_run(pools, pretrained, tmp_path):
    _folder, _dev, pool = pools
    path, _ = pretrained
    saved = tmp_path / "M.pt"
    outcome = run_train(
        options(
            pool,
            tmp_path / "gm",
            frozen_towers=True,
            init=str(path),
            fresh_projections=True,
            reference=str(path),
            caption_noise=0.3,
            seed=3,
            save_model=str(saved),
        )
    )
    run = open_run(outcome.path)
    samples = run.samples
    assert samples["mimic_score"].notna().all() and samples["clip_score_ref"].notna().all()
    assert run.meta["stage2"]["binarisation"] == "gmm"  # a pairs run's default Stage-2 vote
    model, _ = load_pair_model(str(saved), "small_dual", "--model")
    reference, _ = load_pair_model(str(path), "small_dual", "--reference")
    assert tower_differences(model, reference) == []  # the towers are the checkpoint's, frozen


@pytest.mark.slow
def test_both_towers_train_without_frozen_image_tower(pools, tmp_path):
    _, dev, _ = pools
    path = tmp_path / "both.pt"
    outcome = run_train(options(dev, tmp_path / "both", save_model=str(path), seed=1))
    assert outcome.summary["pairs"]["towers_trained"] == "both" and outcome.summary["pairs"]["captions"] == PAIRS
    _, state = read_dual_checkpoint(path)
    torch.manual_seed(1)
    from mimic_explorer.models.dual_registry import build_dual_encoder

    fresh = build_dual_encoder("small_cnn", captions=["a"], input_shape=(3, 32, 32)).state_dict()
    moved = [
        k
        for k, v in fresh.items()
        if k.startswith("image_tower.") and v.is_floating_point() and not torch.equal(state[k], v)
    ]
    assert moved  # the image tower trained too


def _clip_scores(model, config, pool: str, samples) -> np.ndarray:
    """Each recorded pair's cosine under ``model``: its image and the caption it was trained with."""
    source = open_source(pool)
    transform = dual_transform(model, config)
    images = torch.stack([transform(source.load(source.index_of(s))) for s in samples["sample_id"]])
    with torch.no_grad():
        out = model.eval()(images, model.tokenizer.encode(samples["caption"].tolist()).ids)
    return clip_score(out.image, out.text).double().numpy()


@pytest.mark.slow
def test_grad_mimic_while_the_text_tower_trains_scores_every_pair_through_the_trained_towers(
    pools, pretrained, tmp_path
):
    _folder, _dev, pool = pools
    path, _ = pretrained
    saved = tmp_path / "M.pt"
    outcome = run_train(
        options(
            pool,
            tmp_path / "gm",
            reference=str(path),
            frozen_image_tower=True,
            caption_noise=0.3,
            seed=3,
            save_model=str(saved),
        )
    )
    run = open_run(outcome.path)
    samples = run.samples
    assert len(samples) == PAIRS and int(samples["is_noisy"].sum()) == int(0.3 * PAIRS)
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert "Grad-Mimic on the text projection" in run.meta["method"] and "image tower frozen" in run.meta["method"]
    rows = pd.concat([pd.read_parquet(p) for p in run.layout.epoch_parts()])
    assert len(rows) == 2 * PAIRS and rows["proj"].notna().all() and rows["weight"].notna().all()
    drift = run.meta["basis"]["drift_per_epoch"]
    assert [d["epoch"] for d in drift] == [0, 1] and 0 < drift[0]["to_reference"] < drift[1]["to_reference"]
    # the model started from the reference with a fresh text projection; its text tower learned, its image tower did not
    model, config = load_pair_model(str(saved), "small_dual", "--model")
    reference, _ = load_pair_model(str(path), "small_dual", "--reference")
    assert image_tower_differences(model, reference) == []
    assert any(name.startswith("text_tower.") for name in tower_differences(model, reference))
    # the end-of-run CLIP scores come through each model's own towers
    np.testing.assert_allclose(samples["clip_score_model"], _clip_scores(model, config, pool, samples), atol=1e-5)
    np.testing.assert_allclose(samples["clip_score_ref"], _clip_scores(reference, config, pool, samples), atol=1e-5)


@pytest.mark.slow
def test_grad_mimic_while_both_towers_train(pools, pretrained, tmp_path):
    _, _, pool = pools
    path, _ = pretrained
    saved = tmp_path / "both.pt"
    outcome = run_train(
        options(pool, tmp_path / "both", reference=str(path), mimic_layer="image", save_model=str(saved))
    )
    samples = open_run(outcome.path).samples
    assert samples["mimic_score"].notna().all() and outcome.summary["pairs"]["towers_trained"] == "both"
    model, _ = load_pair_model(str(saved), "small_dual", "--model")
    reference, _ = load_pair_model(str(path), "small_dual", "--reference")
    assert image_tower_differences(model, reference)  # the image tower learned too


@pytest.mark.slow
def test_a_killed_grad_mimic_run_with_both_towers_resumes_after_its_last_saved_epoch(
    pools, pretrained, tmp_path, monkeypatch
):
    _, _, pool = pools
    path, _ = pretrained
    kw = dict(reference=str(path), caption_noise=0.3, epochs=3, checkpoint_every=0.0)
    whole = open_run(run_train(options(pool, tmp_path / "whole", **kw)).path)
    seen = dies_once_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_train(options(pool, tmp_path / "resumed", **kw))
    resumed = open_run(run_train(options(pool, tmp_path / "resumed", **kw)).path)
    assert seen == [0, 1, 2, 2]  # epochs 0 and 1 were kept, epoch 2 redone on pairs decoded again
    np.testing.assert_allclose(resumed.samples["mimic_score"], whole.samples["mimic_score"], rtol=1e-5, atol=1e-8)
    drift, expected = resumed.meta["basis"]["drift_per_epoch"], whole.meta["basis"]["drift_per_epoch"]
    assert [d["epoch"] for d in drift] == [0, 1, 2]
    np.testing.assert_allclose([d["to_reference"] for d in drift], [d["to_reference"] for d in expected], rtol=1e-5)


@pytest.mark.slow
def test_a_frozen_image_tower_unlike_the_references_is_refused_before_writing(pools, pretrained, tmp_path):
    _, _, pool = pools
    path, _ = pretrained
    model, config = load_pair_model(str(path), "small_dual", "--init")
    with torch.no_grad():
        next(model.image_tower.parameters()).add_(0.1)
    other = tmp_path / "other.pt"
    save_dual_encoder(model, str(other), arch=config["arch"], input_shape=config["input_shape"])
    out = tmp_path / "refused"
    with pytest.raises(CheckpointError, match="--frozen-image-tower with --reference .* its image tower differs"):
        run_train(options(pool, out, init=str(other), reference=str(path), frozen_image_tower=True))
    assert not out.exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"frozen_towers": True, "all_captions": True}, "--all-captions draws a caption"),
        ({"frozen_towers": True, "frozen_image_tower": True}, "either --frozen-towers .* or --frozen-image-tower"),
        ({"all_captions": True, "caption_noise": 0.3}, "--all-captions trains on each photo's own captions"),
        (
            {"arch": "open_clip:ViT-B-32", "frozen_image_tower": True},
            "--frozen-image-tower is available for the built-in --arch small_dual",
        ),
    ],
)
def test_what_tower_training_cannot_do_is_refused_before_writing(pools, tmp_path, kw, message):
    _, dev, _ = pools
    out = tmp_path / "refused"
    with pytest.raises(ValueError, match=message):
        run_train(
            options(dev, out, **kw)
            if "arch" not in kw
            else TrainOptions(data=dev, out=str(out), batch_size=8, device="cpu", quiet=True, **kw)
        )
    assert not out.exists()
