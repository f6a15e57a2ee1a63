"""Tiny image-text pools cut from the real Flickr8k shards and a model/reference pair of built-in dual
encoders for them, small enough that a scoring run takes seconds on a CPU.

The pool: the first ``count`` samples of a Flickr8k shard copied into a shard of their own (DataComp's
layout: ``UID.jpg``, ``UID.txt``, ``UID.json`` with the uid). The models: one small dual encoder
(``small_cnn`` image tower, narrow towers), and a reference whose projections and logit scale were
trained a few steps with plain InfoNCE on the pool's clean captions — same towers, so model and
reference share a feature basis, as the valid protocol needs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mimic_explorer.commands.options import ScoreOptions
from mimic_explorer.data.specs import open_source
from mimic_explorer.models.dual_checkpoint import save_dual_encoder
from mimic_explorer.models.small_dual import build_small_dual_encoder
from mimic_explorer.models.text import WordTokenizer
from mimic_explorer.scoring.contrastive import InfoNCELoss
from mimic_explorer.tasks.dual_models import dual_transform
from tests.subset_helpers import shard_excerpt

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
needs_flickr = pytest.mark.skipif(not (FLICKR / "dev-00.tar").exists(), reason="../shared/data/flickr8k not present")
ARCH = "small_cnn"  # the image tower of the built-in dual encoder (--arch small_dual or small_dual:small_cnn)
SHAPE = (3, 32, 32)


def flickr_pool(path: Path, count: int, shard: str = "dev-00.tar") -> Path:
    """A shard holding the first ``count`` samples (all their members) of a Flickr8k shard."""
    return shard_excerpt(FLICKR / shard, path, count)


def tiny_dual(captions, seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = WordTokenizer.from_captions(captions, context_length=12)
    return build_small_dual_encoder(
        "small_cnn", tokenizer, embed_dim=16, input_shape=SHAPE, word_dim=16, text_hidden=32, text_width=32
    )


def train_projections(
    model, images: torch.Tensor, tokens: torch.Tensor, steps: int = 30, batch: int = 8, seed: int = 1
):
    """A copy of ``model`` whose projections and logit scale took ``steps`` Adam steps of plain InfoNCE."""
    reference = copy.deepcopy(model).train()
    trained = [reference.image_projection.weight, reference.text_projection.weight, reference.logit_scale]
    for p in reference.parameters():
        p.requires_grad_(any(p is q for q in trained))
    optimiser = torch.optim.Adam(trained, lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randperm(len(images), generator=generator)[:batch]
        optimiser.zero_grad()
        InfoNCELoss()(reference(images[rows], tokens[rows]), None).mean().backward()
        optimiser.step()
    for p in reference.parameters():
        p.requires_grad_(True)
    return reference.eval()


def make_checkpoints(pool_spec: str, folder: Path) -> tuple[Path, Path]:
    """(M.pt, R.pt) for the pool: the model, and the reference trained from it on the clean pairs."""
    source = open_source(pool_spec)
    captions = source.captions.tolist()
    model = tiny_dual(captions).eval()
    transform = dual_transform(model, {"arch": ARCH, "input_shape": SHAPE})
    images = torch.stack([transform(source.load(i)) for i in range(len(source))])
    tokens = model.tokenizer.encode(captions).ids
    reference = train_projections(model, images, tokens)
    paths = folder / "M.pt", folder / "R.pt"
    save_dual_encoder(model, paths[0], arch=ARCH, input_shape=SHAPE)
    save_dual_encoder(reference, paths[1], arch=ARCH, input_shape=SHAPE)
    return paths


def dies_once_in_epoch(monkeypatch, epoch: int) -> list[int]:
    """Make a pairs ``train`` run raise KeyboardInterrupt the first time it records ``epoch`` (as a
    killed run would stop, before that epoch is saved); returns the epochs recorded, in order."""
    from mimic_explorer.training.epoch_parts import EpochParts

    real_add, seen = EpochParts.add, []

    def add(self, record):
        seen.append(record.epoch)
        if record.epoch == epoch and seen.count(epoch) == 1:
            raise KeyboardInterrupt("killed")
        return real_add(self, record)

    monkeypatch.setattr(EpochParts, "add", add)
    return seen


def scored_pool(folder: Path, count: int) -> tuple[str, Path, Path]:
    """(``wds:`` spec, M.pt, R.pt): a pool of the first ``count`` dev pairs and its two checkpoints."""
    spec = f"wds:{flickr_pool(folder / 'pool.tar', count)}"
    return (spec, *make_checkpoints(spec, folder))


def scored_pool_options(pool: tuple[str, Path, Path], out: Path, **kw) -> ScoreOptions:
    """``score`` options of a ``scored_pool`` (spec, M.pt, R.pt) into ``out``, on the CPU and quiet; ``kw`` sets the
    rest (batch and chunk sizes, the mimic layer …)."""
    spec, model, reference = pool
    return ScoreOptions(
        data=spec,
        arch="small_dual",
        out=str(out),
        model=str(model),
        reference=str(reference),
        device="cpu",
        quiet=True,
        **kw,
    )


def batch_of(samples: pd.DataFrame, number: int, source, model, transform):
    """The rows of one score batch and the batch itself (images, tokens), rebuilt from the pool."""
    rows = samples[samples["score_batch"] == number]
    positions = [source.index_of(s) for s in rows["sample_id"]]
    images = torch.stack([transform(source.load(p)) for p in positions])
    return rows, (images, model.tokenizer.encode([source.captions[p] for p in positions]).ids)


def expected_clean_fraction(run, reference_path, held_out_spec: str) -> float:
    """A pairs run's clean-fraction estimate recomputed from its own files: the reference's mean CLIP score over
    the held-out pairs (caption #0 each), placed against the pool's mean and the exact mean over its wrong
    pairings (from the stored unit embeddings), clipped to [0, 1] — what ``stage2.pair_quality`` should give."""
    from mimic_explorer.scoring.contrastive import clip_score
    from mimic_explorer.tasks.dual_models import load_pair_model

    image, text = (np.asarray(run.embedding(s), dtype=np.float64) for s in ("image", "text"))
    reference, config = load_pair_model(str(reference_path), "small_dual", "--reference")
    source = open_source(held_out_spec)
    transform = dual_transform(reference, config)
    with torch.no_grad():
        out = reference.eval()(
            torch.stack([transform(source.load(i)) for i in range(len(source))]),
            reference.tokenizer.encode([str(c) for c in source.captions]).ids,
        )
    clean_mean = clip_score(out.image, out.text).double().mean().item()
    scores = run.samples["clip_score_ref"].to_numpy()
    n = len(scores)
    mismatched = (image.sum(0) @ text.sum(0) - scores.sum()) / (n * (n - 1))
    return float(np.clip((scores.mean() - mismatched) / (clean_mean - mismatched), 0, 1))
