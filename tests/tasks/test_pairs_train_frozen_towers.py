"""``train`` on an image-text pool in the frozen-tower mode (a few dozen real Flickr8k pairs): plain
training saves a dual checkpoint that ``score`` loads; Grad-Mimic against it records every epoch and
writes the per-pair columns, whose CLIP scores equal the reference's own on each pair; a killed run
resumes after its last saved epoch; ``--init`` takes a dual checkpoint or an image classifier. What
every task's ``train`` does is in tests/commands/test_task_contract.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimic_explorer import open_run
from mimic_explorer.commands.options import ScoreOptions, TrainOptions
from mimic_explorer.commands.score import run_score
from mimic_explorer.commands.train import run_train
from mimic_explorer.data.specs import open_source
from mimic_explorer.models.dual import tower_differences
from mimic_explorer.scoring.contrastive import clip_score, retrieval_recall
from mimic_explorer.tasks.dual_models import dual_transform, load_pair_model
from tests.pairs_helpers import dies_once_in_epoch, expected_clean_fraction, flickr_pool, needs_flickr

pytestmark = [needs_flickr]
PAIRS = 24


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair-train")
    clean = f"wds:{flickr_pool(folder / 'clean.tar', PAIRS, 'train-00.tar')}"
    pool = f"wds:{flickr_pool(folder / 'pool.tar', PAIRS, 'train-01.tar')}"
    return folder, clean, pool


def options(data, out, **kw) -> TrainOptions:
    return TrainOptions(
        data=data,
        arch="small_dual",
        out=str(out),
        batch_size=8,
        device="cpu",
        quiet=True,
        **{"frozen_towers": True, "epochs": 2, **kw},
    )


@pytest.fixture(scope="module")
def reference(pools):
    folder, clean, pool = pools
    path = folder / "R.pt"
    outcome = run_train(options(clean, folder / "ref", save_model=str(path), test_data=pool))
    return path, outcome


@pytest.mark.slow
def test_plain_training_saves_a_dual_checkpoint_and_reports_recall(pools, reference):
    path, outcome = reference
    samples = open_run(outcome.path).samples
    assert len(samples) == PAIRS and samples["caption"].str.len().gt(0).all()
    recall = outcome.summary["test_recall"]
    assert set(recall) == {f"{d}@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} and all(
        0 <= v <= 1 for v in recall.values()
    )
    assert open_run(outcome.path).meta["summary"]["test_recall"] == recall
    model, config = load_pair_model(str(path), "small_dual", "--reference")
    assert config["arch"] == "small_cnn" and config["frozen_towers"] is True
    # the saved model's own embeddings of the test photos and of all five captions of each give the same recall
    _, _, pool = pools
    source = open_source(pool)
    transform = dual_transform(model, config)
    captions = [source.all_captions(i) for i in range(len(source))]
    assert (
        outcome.summary["test_recall_ranked"] == {"photos": PAIRS, "captions": sum(map(len, captions))}
        and len(captions[0]) == 5
    )
    with torch.no_grad():
        model.eval()
        image = model.encode_image(torch.stack([transform(source.load(i)) for i in range(len(source))]))
        text = model.encode_text(model.tokenizer.encode([c for row in captions for c in row]).ids)
    owner = torch.as_tensor(np.repeat(np.arange(len(captions)), [len(row) for row in captions]))
    expected = retrieval_recall(image, text, owner, ks=(1, 5, 10))
    assert recall == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_grad_mimic_records_epochs_and_per_pair_columns_that_score_can_reproduce(pools, reference, tmp_path):
    _folder, _clean, pool = pools
    ref_path, _ = reference
    model_path = tmp_path / "M.pt"
    outcome = run_train(
        options(
            pool,
            tmp_path / "gm",
            reference=str(ref_path),
            caption_noise=0.3,
            mimic_layer="image",
            save_model=str(model_path),
        )
    )
    run = open_run(outcome.path)
    samples = run.samples
    assert len(samples) == PAIRS and int(samples["is_noisy"].sum()) == int(0.3 * PAIRS)
    for column in ("mimic_score", "clip_score_ref", "clip_score_model", "reference_loss", "model_loss"):
        assert np.isfinite(samples[column].to_numpy(dtype=float)).all(), column
    assert samples["keep"].dtype == bool and 0 < samples["keep"].sum() <= PAIRS
    assert (samples["batch_size"] >= 2).all() and samples["score_batch"].nunique() == PAIRS // 8
    swapped = samples[samples["is_noisy"]]
    assert (swapped["caption"] != swapped["true_caption"]).all()
    # the model started from the reference's towers: only projections and logit scale differ
    model, _ = load_pair_model(str(model_path), "small_dual", "--model")
    ref, config = load_pair_model(str(ref_path), "small_dual", "--reference")
    assert tower_differences(model, ref) == []
    assert not torch.equal(model.text_projection.weight, ref.text_projection.weight)
    # clip_score_ref is the reference's cosine of each pair's own two embeddings (captions as trained on)
    source = open_source(pool)
    transform = dual_transform(ref, config)
    positions = [source.index_of(s) for s in samples["sample_id"]]
    images = torch.stack([transform(source.load(p)) for p in positions])
    with torch.no_grad():
        out = ref.eval()(images, ref.tokenizer.encode(samples["caption"].tolist()).ids)
    np.testing.assert_allclose(samples["clip_score_ref"], clip_score(out.image, out.text).double().numpy(), atol=1e-5)
    # score loads the trained checkpoint and the reference
    scored = run_score(
        ScoreOptions(
            data=pool,
            arch="small_dual",
            out=str(tmp_path / "score"),
            model=str(model_path),
            reference=str(ref_path),
            mimic_layer="image",
            batch_size=8,
            device="cpu",
            quiet=True,
        )
    )
    assert len(open_run(scored.path).samples) == PAIRS


@pytest.mark.slow
def test_a_killed_pair_training_resumes_after_its_last_saved_epoch(pools, reference, tmp_path, monkeypatch):
    _, _, pool = pools
    ref_path, _ = reference
    kw = dict(reference=str(ref_path), caption_noise=0.3, epochs=3, checkpoint_every=0.0)
    whole = open_run(run_train(options(pool, tmp_path / "whole", **kw)).path).samples
    seen = dies_once_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_train(options(pool, tmp_path / "resumed", **kw))
    run_train(options(pool, tmp_path / "resumed", **kw))
    assert seen == [0, 1, 2, 2]  # epochs 0 and 1 were kept, epoch 2 redone
    resumed = open_run(tmp_path / "resumed").samples
    np.testing.assert_allclose(resumed["mimic_score"], whole["mimic_score"], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_init_takes_a_dual_checkpoint_whole_or_an_image_classifier_for_the_image_tower(pools, reference, tmp_path):
    from mimic_explorer.models.checkpoints import save_checkpoint
    from mimic_explorer.models.registry import build_model

    _, _, pool = pools
    ref_path, _ = reference
    saved = tmp_path / "from-dual.pt"
    run_train(options(pool, tmp_path / "dual", init=str(ref_path), save_model=str(saved)))
    ref, _ = load_pair_model(str(ref_path), "small_dual", "--reference")
    trained, _ = load_pair_model(str(saved), "small_dual", "--model")
    assert tower_differences(trained, ref) == []  # towers and vocabulary from the dual checkpoint, frozen
    torch.manual_seed(3)
    classifier = build_model("small_cnn", 10, input_shape=(3, 32, 32))
    save_checkpoint(classifier, tmp_path / "cnn.pt")
    saved = tmp_path / "from-cnn.pt"
    run_train(options(pool, tmp_path / "cnn", init=str(tmp_path / "cnn.pt"), save_model=str(saved)))
    trained, _ = load_pair_model(str(saved), "small_dual", "--model")
    ours = {k: v for k, v in classifier.state_dict().items() if v.is_floating_point()}
    tower = {k.removeprefix("image_tower."): v for k, v in trained.state_dict().items() if k.startswith("image_tower.")}
    shared = [k for k in tower if k in ours and ours[k].shape == tower[k].shape]
    assert shared and all(torch.equal(tower[k], ours[k]) for k in shared)  # the image tower is the classifier's


@pytest.mark.slow
def test_held_out_clean_pairs_set_the_split_at_their_clean_fraction_estimate(pools, reference, tmp_path):
    """With --test-data (pairs known to be clean), the split keeps the top q̂ of combined_score, q̂ placing the pool's
    mean reference CLIP score between the held-out pairs' mean and the mean over the pool's wrong pairings."""
    _, clean, pool = pools
    ref_path, _ = reference
    kw = dict(reference=str(ref_path), caption_noise=0.5, mimic_layer="text")
    run = open_run(run_train(options(pool, tmp_path / "held", test_data=clean, **kw)).path)
    split = run.meta["summary"]["combined_split"]
    assert split["method"] == "held-out clean pairs"
    samples = run.samples
    # the estimate, recomputed from the run's own files and the reference's CLIP scores of the held-out pairs
    expected = expected_clean_fraction(run, ref_path, clean)
    assert split["estimated_quality"] == pytest.approx(expected, abs=2e-3)
    assert samples["combined_keep"].mean() == pytest.approx(expected, abs=1 / len(samples) + 1e-9)
    kept = samples["combined_score"][samples["combined_keep"]]
    assert kept.min() >= samples["combined_score"][~samples["combined_keep"]].max()
    # without held-out pairs: the mixture, said to be a rough guide
    plain = open_run(run_train(options(pool, tmp_path / "plain", **kw)).path)
    assert plain.meta["summary"]["combined_split"]["method"] == "two-group mixture"
    assert "rough guide" in plain.meta["summary"]["combined_split"]["warnings"][0]
