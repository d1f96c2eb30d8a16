"""Text: a word-level tokenizer and a small transformer encoder, our stand-in for CLIP's text tower.

MagicVideo conditions on CLIP text embeddings. Our captions come from a grammar of a few dozen
words, so a word-level vocabulary covers them exactly, and a two-layer transformer trained with
the image stage is enough to encode them:

    list[str] -> token ids (B, L) and a padding mask (B, L) -> context (B, L, D)

Every prompt starts with a <start> token, so even the empty prompt "" (the unconditional input of
classifier-free guidance) has one real token to attend to.
"""

from __future__ import annotations

import re
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from .attention import FeedForward, MultiHeadAttention
from .config import TextConfig

SPECIAL_TOKENS = ("<pad>", "<start>", "<unknown>")
PAD, START, UNKNOWN = range(len(SPECIAL_TOKENS))


def prompt_words(prompt: str) -> list[str]:
    """The words the tokenizer reads in a prompt or caption: lower-cased runs of letters."""
    return re.findall(r"[a-z]+", prompt.lower())


class Tokenizer:
    """Lower-cased words -> ids, for the words of `vocabulary` (models.text_vocabulary: the moving
    shapes' caption grammar, or the training captions' words for real video)."""

    def __init__(self, max_length: int, vocabulary: Sequence[str], described: str | None = None):
        if not vocabulary:
            raise ValueError("a tokenizer needs the words it knows: pass a vocabulary, such as "
                             "tiny_magicvideo.shapes.caption_vocabulary()")
        self.max_length = max_length
        self.vocabulary = list(SPECIAL_TOKENS) + list(vocabulary)
        self.described = described or f"the {len(vocabulary)} words given"  # what an unknown-word warning names
        self.ids = {word: index for index, word in enumerate(self.vocabulary)}
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.vocabulary)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_length) long, mask (B, max_length) bool, True for real tokens)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = torch.full((len(prompts), self.max_length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = [START] + [self._word_id(word) for word in prompt_words(prompt)]
            if len(tokens) > self.max_length:
                start = prompt if len(prompt) <= 40 else prompt[:40] + "..."
                warnings.warn(f"prompt {start!r} has {len(tokens) - 1} words; only the first "
                              f"{self.max_length - 1} are used (text.max_length {self.max_length})")
                tokens = tokens[:self.max_length]
            ids[row, :len(tokens)] = torch.tensor(tokens)
        return ids, ids != PAD

    def _word_id(self, word: str) -> int:
        if word not in self.ids and word not in self._warned:
            self._warned.add(word)
            warnings.warn(f"unknown word {word!r} in a prompt is read as <unknown>; the vocabulary is "
                          f"{self.described}")
        return self.ids.get(word, UNKNOWN)


class TextEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + SelfAttn(norm x), then x + FF(norm x)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = MultiHeadAttention(width, num_heads)
        self.feed_forward = FeedForward(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), key_mask=mask)
        return x + self.feed_forward(self.norm2(x))


class TextEncoder(nn.Module):
    """Token and position embeddings, `num_layers` transformer layers, a final LayerNorm, for the
    words of `vocabulary` (described: where they come from, for the unknown-word warning)."""

    def __init__(self, config: TextConfig, vocabulary: Sequence[str], described: str | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = Tokenizer(config.max_length, vocabulary, described)
        self.token_embedding = nn.Embedding(len(self.tokenizer), config.width)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, config.width) * 0.02)
        self.layers = nn.ModuleList(TextEncoderLayer(config.width, config.num_heads)
                                    for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (context (B, L, width), mask (B, L) bool)."""
        device = self.position_embedding.device
        ids, mask = (tensor.to(device) for tensor in self.tokenizer(prompts))
        x = self.token_embedding(ids) + self.position_embedding  # (B, L, width)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), mask
