"""Training a dual encoder's towers (``training/towers``): a caption drawn per photo per batch, seeded
and covering every caption; the image tower frozen or not; Grad-Mimic while the towers learn, whose
recorded proj equals each pair's own InfoNCE gradient by brute-force autograd in float64; and seeded
projection resets that let a later run start from the values a checkpoint's projections started from."""

from __future__ import annotations

import copy

import pytest
import torch

from mimic_explorer.models.dual import reset_projections
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.training.batches import CaptionDraws
from mimic_explorer.training.loop import TrainConfig
from mimic_explorer.training.towers import (
    TextSide,
    caption_sets,
    image_inputs,
    image_tower_differences,
    reference_part,
    train_towers,
    trainable_part,
)
from tests.pairs_helpers import tiny_dual

CAPTIONS = [[f"a dog number {i} runs", f"the dog {i} plays", f"one more dog {i}"] for i in range(6)] + [
    ["a lone cat sits"]
]


def test_caption_sets_pad_with_the_first_caption_and_count_each_photos_captions():
    model = tiny_dual([c for row in CAPTIONS for c in row])
    sets, counts = caption_sets(model.tokenizer, CAPTIONS)
    assert sets.shape[:2] == (7, 3) and counts.tolist() == [3] * 6 + [1]
    assert torch.equal(sets[6, 1], sets[6, 0]) and not torch.equal(sets[0, 1], sets[0, 0])
    with pytest.raises(ValueError, match="at least one caption"):
        caption_sets(model.tokenizer, [["x"], []])


def _drawn(batches: CaptionDraws, sets: torch.Tensor, epoch: int) -> dict[int, int]:
    """Which caption (by its index in the photo's set) each photo got in ``epoch``."""
    chosen = {}
    for index, (_, tokens), targets in batches.epoch(epoch):
        assert targets is None and len(index) >= 2
        for row, photo in enumerate(index.tolist()):
            matches = [k for k in range(sets.shape[1]) if torch.equal(sets[photo, k], tokens[row])]
            chosen[photo] = matches[0]
    return chosen


def test_caption_draws_are_seeded_per_epoch_stay_within_each_photos_captions_and_use_them_all():
    model = tiny_dual([c for row in CAPTIONS for c in row])
    sets, counts = caption_sets(model.tokenizer, CAPTIONS)
    images = torch.arange(7.0).unsqueeze(1)
    batches = CaptionDraws(images, sets, counts, 3, seed=5)
    first = _drawn(batches, sets, 0)
    assert sorted(first) == list(range(7)) and first == _drawn(CaptionDraws(images, sets, counts, 3, seed=5), sets, 0)
    assert first[6] == 0  # one caption: always its own
    used = {(p, k) for e in range(12) for p, k in _drawn(batches, sets, e).items()}
    assert {(p, k) for p in range(6) for k in range(3)} <= used  # every caption of every photo is drawn
    with pytest.raises(ValueError, match="at least 2 pairs"):
        CaptionDraws(images, sets, counts, 1, seed=0)


def test_text_side_shares_the_models_modules_and_names():
    model = tiny_dual([c for row in CAPTIONS for c in row])
    side = TextSide(model)
    assert {n for n, _ in side.named_parameters()} == {
        n for n, _ in model.named_parameters() if not n.startswith("image_tower.")
    }
    assert side.text_projection.weight is model.text_projection.weight and side.logit_scale is model.logit_scale
    images = torch.randn(4, 3, 32, 32)
    tokens = model.tokenizer.encode(["a dog runs", "a cat", "the dog plays", "one more dog"]).ids
    with torch.no_grad():
        whole, part = model.eval()(images, tokens), side(model.image_features(images), tokens)
    for a, b in zip(whole, part):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("freeze_image", [True, False])
def test_train_towers_trains_the_text_side_and_the_image_tower_only_when_asked(freeze_image):
    model = tiny_dual([c for row in CAPTIONS for c in row])
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    images = image_inputs(model, torch.randn(7, 3, 32, 32), freeze_image)
    assert images.shape[1] == (model.image_dim if freeze_image else 3)
    sets, counts = caption_sets(model.tokenizer, CAPTIONS)
    result = train_towers(
        model, images, sets, counts, TrainConfig(epochs=2, batch_size=4, lr=1e-2), freeze_image=freeze_image
    )
    assert len(result.records) == 2 and sorted(result.records[0].index.tolist()) == list(range(7))
    after = model.state_dict()
    changed = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])}
    assert (
        "text_tower.embedding.weight" in changed
        and "text_projection.weight" in changed
        and "image_projection.weight" in changed
    )
    image_changed = any(k.startswith("image_tower.") and "running" not in k and "num_batches" not in k for k in changed)
    assert image_changed is (not freeze_image)


ONE_CAPTION = [[row[0]] for row in CAPTIONS]


def _grad_mimic_setup(freeze_image: bool):
    """A float64 model, a reference that differs from it in the projections, the text tower and (when
    the image tower trains) the image tower — as a reference fine-tuned from the model would — and the
    inputs ``train_towers`` takes."""
    model = tiny_dual([c for row in CAPTIONS for c in row]).double()
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if not (freeze_image and name.startswith("image_tower.")):
                p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    images = image_inputs(model, torch.randn(7, 3, 32, 32, generator=generator, dtype=torch.float64), freeze_image)
    sets, counts = caption_sets(model.tokenizer, ONE_CAPTION)
    return model, reference, images, sets, counts


@pytest.mark.parametrize("freeze_image", [True, False])
@pytest.mark.parametrize("layer", ["text", "image"])
def test_grad_mimic_with_trainable_towers_records_each_pairs_own_infonce_projection(freeze_image, layer):
    """One batch of all 7 pairs: epoch 0's proj is −⟨g_i, v⟩/‖v‖ at the starting weights, g_i the
    gradient of pair i's own InfoNCE term (the batch's other pairs its negatives) on the mimic layer,
    v = θ_ref − θ there; the towers train (mean gradient) while the mimic layer is re-weighted."""
    model, reference, images, sets, counts = _grad_mimic_setup(freeze_image)
    name = f"{layer}_projection.weight"
    brute = copy.deepcopy(model)
    part, ref_part = trainable_part(brute, freeze_image).train(), reference_part(reference, freeze_image)
    param = dict(part.named_parameters())[name]
    v = (dict(ref_part.named_parameters())[name] - param).detach().reshape(-1)
    expected = []
    for i in range(7):
        part.zero_grad(set_to_none=True)
        InfoNCELoss()(part(images, sets[:, 0]), None)[i].backward()
        expected.append(-(param.grad.reshape(-1) @ v) / v.norm())
    before = copy.deepcopy(model.state_dict())
    result = train_towers(
        model,
        images,
        sets,
        counts,
        TrainConfig(epochs=2, batch_size=7, lr=1e-2),
        freeze_image=freeze_image,
        reference=reference,
        mimic_layer=layer,
    )
    first = result.records[0]
    assert first.proj is not None and first.weight is not None
    recorded = dict(zip(first.index.tolist(), first.proj.tolist()))
    torch.testing.assert_close(
        torch.tensor([recorded[i] for i in range(7)], dtype=torch.float64),
        torch.stack(expected).detach(),
        rtol=1e-5,
        atol=1e-9,
    )
    assert abs(sum(first.weight) - 1) < 1e-9  # one batch: the Stage-1 weights are a softmax over its pairs
    after = model.state_dict()
    assert not torch.equal(before["text_tower.embedding.weight"], after["text_tower.embedding.weight"])
    assert any(
        not torch.equal(before[k], after[k])
        for k in before
        if k.startswith("image_tower.") and before[k].is_floating_point() and "running" not in k
    ) is (not freeze_image)
    assert all(not p.requires_grad for p in reference.parameters())


def test_a_frozen_image_tower_that_differs_from_the_references_is_refused():
    model, reference, _images, sets, counts = _grad_mimic_setup(freeze_image=False)  # the reference's image tower moved
    assert image_tower_differences(model, reference)
    with pytest.raises(ValueError, match="the reference's image tower differs from the model's"):
        train_towers(
            model,
            image_inputs(model, torch.randn(7, 3, 32, 32, dtype=torch.float64), True),
            sets,
            counts,
            TrainConfig(epochs=1, batch_size=7),
            freeze_image=True,
            reference=reference,
        )


def test_trainable_part_freezes_the_image_tower_and_keeps_it_out_of_training_mode():
    model = tiny_dual(["a dog", "a cat"])
    part = trainable_part(model, freeze_image=True)
    assert isinstance(part, TextSide) and not any(p.requires_grad for p in model.image_tower.parameters())
    model.eval()
    part.train()
    assert not model.image_tower.training
    assert trainable_part(model, freeze_image=False) is model and all(p.requires_grad for p in model.parameters())


def test_reset_projections_is_seeded_per_tower_whatever_else_is_reset():
    model = tiny_dual(["a dog runs", "a cat sits"])
    both = reset_projections(copy.deepcopy(model), ["image", "text"], seed=4)
    text_only = reset_projections(copy.deepcopy(model), ["text"], seed=4)
    image_only = reset_projections(copy.deepcopy(model), ["image"], seed=4)
    assert torch.equal(both.text_projection.weight, text_only.text_projection.weight)
    assert torch.equal(both.image_projection.weight, image_only.image_projection.weight)
    assert torch.equal(text_only.image_projection.weight, model.image_projection.weight)  # untouched
    other = reset_projections(copy.deepcopy(model), ["text"], seed=5)
    assert not torch.equal(other.text_projection.weight, text_only.text_projection.weight)
    state = torch.random.get_rng_state()
    reset_projections(model, ["text"], seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was
