"""The combined score of an image-text pairs run: the mean of the standardised utilities of
``baselines.PAIR_COMBINED_INPUTS``, written by Stage 2 as ``combined_score`` with its own GMM keep split."""

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.commands.finalize import add_stage2, evaluate
from mimic_explorer.stage2 import baselines
from mimic_explorer.stage2.evaluation import auroc


def _pairs(n=800, noise=0.3, seed=0, mimic_signal=0.5):
    """A pairs pool whose three views each separate the bad pairs, none of them well: the CLIP scores under
    the reference and the model, and the mimic projections (noisy per step)."""
    rng = np.random.default_rng(seed)
    is_noisy = np.zeros(n, dtype=bool)
    is_noisy[rng.permutation(n)[: int(noise * n)]] = True
    clip_ref = np.where(is_noisy, rng.normal(0.20, 0.05, n), rng.normal(0.30, 0.05, n))
    clip_model = np.where(is_noisy, rng.normal(0.18, 0.06, n), rng.normal(0.28, 0.06, n))
    reference_loss = np.where(is_noisy, rng.gamma(6, 0.8, n), rng.gamma(2, 0.5, n))
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "caption": [f"caption {i}" for i in range(n)],
            "is_noisy": is_noisy,
            "clip_score_ref": clip_ref,
            "clip_score_model": clip_model,
            "reference_loss": reference_loss,
            "model_loss": reference_loss * rng.uniform(0.6, 1.4, n),
        }
    )
    epochs = 3
    position = np.tile(np.arange(n), epochs)
    proj = np.where(is_noisy[position], -mimic_signal, mimic_signal) + rng.normal(0, 1, len(position))
    rows = pd.DataFrame(
        {
            "sample_id": samples["sample_id"].to_numpy()[position],
            "epoch": np.repeat(np.arange(epochs), n),
            "step": np.repeat(np.arange(epochs), n),
            "position": position,
            "proj": proj,
            "cos": proj / 10,
            "weight": np.full(len(position), 1 / 128),
            "batch_size": np.full(len(position), 128),
        }
    )
    return samples, rows


def test_the_pair_combined_score_is_the_mean_of_its_inputs_standardised_utilities():
    rng = np.random.default_rng(1)
    inputs = {name: rng.gamma(2.0, 1.0, 50) for name in baselines.PAIR_COMBINED_INPUTS}
    expected = np.mean([baselines.standardise(baselines.pair_utility(n, v)) for n, v in inputs.items()], axis=0)
    np.testing.assert_allclose(baselines.pair_combined_score(inputs), expected)
    # losses enter as −log(loss), CLIP scores as they are
    np.testing.assert_allclose(baselines.pair_utility("model_loss", np.array([np.e])), [-1.0])
    np.testing.assert_allclose(baselines.pair_utility("clip_score_ref", np.array([0.3])), [0.3])
    with pytest.raises(ValueError, match="one value per pair"):
        baselines.pair_combined_score({name: np.zeros(3 + i) for i, name in enumerate(baselines.PAIR_COMBINED_INPUTS)})


def test_stage2_writes_the_pairs_combined_score_and_it_ranks_with_the_best_input():
    samples, rows = _pairs()
    out = add_stage2(samples, rows, "gmm", "majority")
    inputs = {name: out[name].to_numpy() for name in baselines.PAIR_COMBINED_INPUTS}
    np.testing.assert_allclose(out["combined_score"], baselines.pair_combined_score(inputs))
    is_noisy = out["is_noisy"].to_numpy()
    combined = auroc(is_noisy, -out["combined_score"].to_numpy())
    best = max(auroc(is_noisy, -baselines.pair_utility(n, v)) for n, v in inputs.items())
    assert combined >= best - 0.005  # the bar, here on a pool where the inputs are informative
    assert combined > best + 0.02  # three views of the same pairs, each noisy: their mean ranks better than any
    # its own split estimates the quality (0.7 clean) and is what the evaluation scores combined_score by
    evaluation = evaluate(out)
    assert abs(out["combined_keep"].mean() - 0.7) < 0.05
    assert evaluation["combined_score"]["estimated_quality"] == pytest.approx(out["combined_keep"].mean())


def test_a_labelled_pool_keeps_its_own_combined_score():
    samples, rows = _pairs()
    labelled = samples.drop(columns=["caption", "clip_score_ref", "clip_score_model"])
    out = add_stage2(labelled, rows, "weight", "majority")
    parts = [out[c].to_numpy() for c in ("cos_mean", "reference_loss", "model_loss")]
    np.testing.assert_allclose(out["combined_score"], baselines.combined_score(*parts))
