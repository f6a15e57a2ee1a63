"""The one formula that turns a run's seed and an epoch into a random generator.

Why one home: every batch source of a run (held tensors, images decoded every epoch, pairs with a
caption drawn per batch, the data layer's own shuffled batches) must draw the same permutation for
the same seed and epoch — a resumed run, a streamed run and a held run are compared weight for weight
— and they only do while none spells the formula itself (``training.epoch_plan`` uses it for the
shuffle, the rank split and the batch edges).
"""

from __future__ import annotations

import torch

#: the multiplier that separates one seed's epochs from the next seed's
SEED_STRIDE = 100_003
#: the generator stream of the per-batch caption draws (``--all-captions``), apart from the shuffle's
CAPTION_STREAM = 7


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The seeded generator of ``epoch``'s shuffle (``stream`` 0) or of another draw of that epoch."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + epoch + stream)
