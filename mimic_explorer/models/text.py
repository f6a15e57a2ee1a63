"""The built-in dual encoder's text side: a word-level tokenizer built from captions and a small
text encoder that forward-mode AD can differentiate.

Why word level: a CPU-sized model trained on a few thousand captions has no use for sub-words, and a
vocabulary read off the captions needs no download. The vocabulary travels inside the model's state
dict as a uint8 buffer (its UTF-8 text), so a checkpoint read with ``torch.load(weights_only=True)``
rebuilds the exact tokenizer, and two checkpoints with different vocabularies never load into each
other silently (the buffer's shape differs).

Why ``nn.Embedding`` + masked mean and not ``nn.EmbeddingBag``: the mimic scores of a text-side layer
come from ``torch.func.jvp`` (docs/ARCHITECTURE.md), and ``EmbeddingBag`` has no forward-mode rule.
Captions longer than the context length are cut; ``TokenBatch.truncated`` says which, so a run can
report how many (the paper notes such captions score low).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mimic_explorer.models.dual import TokenBatch

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption (letters/digits, with an apostrophe suffix kept)."""
    return _WORD.findall(caption.lower())


class WordTokenizer:
    """Captions → token ids: 0 pads, 1 is an unknown word, the rest index ``vocabulary``."""

    def __init__(self, vocabulary: Sequence[str], context_length: int = 32):
        vocabulary = list(vocabulary)
        if vocabulary[:2] != [PAD, UNK]:
            vocabulary = [PAD, UNK] + [w for w in vocabulary if w not in (PAD, UNK)]
        if int(context_length) < 1:
            raise ValueError(f"context_length must be ≥ 1, got {context_length}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the vocabulary repeats words")
        self.vocabulary = vocabulary
        self.context_length = int(context_length)
        self._index = {w: k for k, w in enumerate(vocabulary)}

    @classmethod
    def from_captions(
        cls, captions: Iterable[str], context_length: int = 32, min_count: int = 1, max_size: int | None = None
    ) -> WordTokenizer:
        """The words of ``captions`` seen at least ``min_count`` times, most frequent first (ties by word)."""
        counts = Counter(w for caption in captions for w in words(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max(0, int(max_size) - 2)]
        if not kept:
            raise ValueError("no words in the captions to build a vocabulary from")
        return cls([PAD, UNK, *kept], context_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, captions: Sequence[str]) -> TokenBatch:
        """(N, context_length) int64 ids and a per-caption flag: True when words were cut off."""
        ids = np.zeros((len(captions), self.context_length), dtype=np.int64)
        truncated = np.zeros(len(captions), dtype=bool)
        for row, caption in enumerate(captions):
            tokens = [self._index.get(w, 1) for w in words(caption)]
            truncated[row] = len(tokens) > self.context_length
            tokens = tokens[: self.context_length]
            ids[row, : len(tokens)] = tokens
        return TokenBatch(torch.from_numpy(ids), truncated)

    def to_buffer(self) -> Tensor:
        """The vocabulary as a uint8 tensor (UTF-8, one word a line), for a state dict."""
        return torch.frombuffer(bytearray("\n".join(self.vocabulary).encode("utf-8")), dtype=torch.uint8).clone()

    @classmethod
    def from_buffer(cls, buffer: Tensor, context_length: int) -> WordTokenizer:
        """The tokenizer a model saved as its ``vocabulary`` buffer (``to_buffer``): a saved dual encoder brings its own
        vocabulary."""
        return cls(bytes(buffer.to(torch.uint8).tolist()).decode("utf-8").split("\n"), context_length)


class BagOfWordsText(nn.Module):
    """Word embeddings, masked mean over the caption's words, then a ReLU MLP: (B, L) ids → (B, width).

    The tokenizer's vocabulary and context length are buffers (``vocabulary``, ``context_length``) so
    the state dict carries them. ``hidden`` = 0 skips the MLP (features are the mean embedding).
    """

    def __init__(self, tokenizer: WordTokenizer, embed_dim: int = 128, hidden: int = 256, width: int = 256):
        super().__init__()
        self.tokenizer = tokenizer
        self.register_buffer("vocabulary", tokenizer.to_buffer())
        self.register_buffer("context_length", torch.tensor(tokenizer.context_length, dtype=torch.int64))
        self.embedding = nn.Embedding(len(tokenizer), embed_dim, padding_idx=0)
        layers: list[nn.Module] = []
        if hidden:
            layers = [nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.width = width if hidden else embed_dim

    def forward(self, tokens: Tensor) -> Tensor:
        """One vector per caption (B, width): the mean of its word embeddings (pads left out) through the MLP."""
        mask = (tokens > 0).to(self.embedding.weight.dtype).unsqueeze(-1)
        pooled = (self.embedding(tokens) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.mlp(pooled)
