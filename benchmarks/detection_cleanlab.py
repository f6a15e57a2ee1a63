"""cleanlab's ``find_label_issues`` on the pool's cached backbone features (benchmark-only dependency).

cleanlab needs out-of-sample predicted probabilities. Two sources, both on the same frozen features
the probes use: (a) 5-fold cross-validated softmax regression on the noisy pool (cleanlab's own
recipe: no clean data at all), (b) the reference probe's softmax, which is out of sample by
construction (the reference never saw the pool). Probabilities are cached under the work folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd


def pool_features(backbone: Path, options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample ids, noisy labels, features) of the pool, from the pipeline's feature cache."""
    import torch

    from mimic_explorer.data.pool import open_pool
    from mimic_explorer.data.transforms import default_transform
    from mimic_explorer.models.checkpoints import load_checkpoint
    from mimic_explorer.models.heads import find_head
    from mimic_explorer.models.registry import build_model
    from mimic_explorer.training.features import extract_features

    pool = open_pool(options)
    model = build_model("small_cnn", len(pool.source.class_names), input_shape=(3, 32, 32))
    load_checkpoint(model, backbone)
    head_name, _ = find_head(model, torch.zeros(1, 3, 32, 32))
    feats = extract_features(model, pool.source, pool.labels, default_transform("small_cnn"), head_name=head_name)
    positions = feats.positions
    return (
        pool.source.sample_ids[positions].astype(str),
        pool.labels[positions],
        feats.values.numpy().astype(np.float64),
    )


def _softmax_regression(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int, steps: int = 200
) -> np.ndarray:
    """Full-batch multinomial logistic regression (Adam, lr 0.05, L2 1e-4) in numpy; test probabilities.

    Why not scikit-learn's LogisticRegression: on this shared 2-core machine its lbfgs took 107 s for
    100 iterations on 4,000 rows (and torch's per-op overhead was as bad); a few hundred full-batch
    numpy steps on (N, 128) features take seconds."""
    x = train_x.astype(np.float32)
    onehot = np.eye(classes, dtype=np.float32)[train_y]
    params = [np.zeros((x.shape[1], classes), np.float32), np.zeros(classes, np.float32)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for t in range(1, steps + 1):
        logits = x @ params[0] + params[1]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        delta = (probs - onehot) / len(x)
        grads = [x.T @ delta + 2e-4 * params[0], delta.sum(0)]
        for p, g, m in zip(params, grads, moments):
            m[0] = 0.9 * m[0] + 0.1 * g
            m[1] = 0.999 * m[1] + 0.001 * g * g
            p -= 0.05 * (m[0] / (1 - 0.9**t)) / (np.sqrt(m[1] / (1 - 0.999**t)) + 1e-8)
    logits = test_x.astype(np.float32) @ params[0] + params[1]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return (probs / probs.sum(1, keepdims=True)).astype(np.float64)


def cross_validated_probs(features: np.ndarray, labels: np.ndarray, cache: Path, folds: int = 5) -> np.ndarray:
    """Out-of-fold probabilities of a softmax regression on standardised features (stratified folds, seed 0)."""
    key = hashlib.sha256(features[:, :4].tobytes() + labels.astype(np.int64).tobytes()).hexdigest()[:16]
    path = cache / f"cv-probs-{key}.npy"
    if path.exists():
        return np.load(path)
    standardised = (features - features.mean(0)) / (features.std(0) + 1e-12)
    classes = int(labels.max()) + 1
    rng = np.random.default_rng(0)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in range(classes):  # stratified: each class spread evenly over the folds
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    probs = np.zeros((len(labels), classes))
    for k in range(folds):
        held = fold == k
        probs[held] = _softmax_regression(standardised[~held], labels[~held], standardised[held], classes)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, probs)
    return probs


def reference_probs(features: np.ndarray, reference: Path) -> np.ndarray:
    from mimic_explorer.models.checkpoints import read_state_dict

    state = read_state_dict(reference)
    logits = features @ state["head.weight"].double().numpy().T + state["head.bias"].double().numpy()
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def cleanlab_cell(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(utility = cleanlab's label-quality score, keep = not flagged by find_label_issues)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = find_label_issues(labels, probs)
    return get_label_quality_scores(labels, probs), ~issues


def cleanlab_cells(samples: pd.DataFrame, backbone: Path, reference: Path, options, cache: Path) -> dict:
    ids, labels, features = pool_features(backbone, options)
    position = pd.Series(np.arange(len(ids)), index=ids).reindex(samples["sample_id"]).to_numpy()
    if np.isnan(position.astype(float)).any():
        raise RuntimeError("pool features and the run's samples disagree on sample ids")
    labels, features = labels[position], features[position]
    if not np.array_equal(labels, samples["label"].to_numpy()):
        raise RuntimeError("the run's labels differ from the re-injected noisy labels")
    return {
        "cleanlab (5-fold CV probs)": cleanlab_cell(labels, cross_validated_probs(features, labels, cache)),
        "cleanlab (reference probs)": cleanlab_cell(labels, reference_probs(features, reference)),
    }
