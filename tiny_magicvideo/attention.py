"""Attention: the explicit formula, the spatial transformer, and (video issue) temporal attention.

Scaled dot-product attention (Vaswani et al. 2017): every query position i takes a weighted mean
of the values, weighted by how well its query matches each key:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

with H heads doing this in parallel on d = width / H channels each. Self-attention takes Q, K, V
from the same tokens; cross-attention takes K and V from the text (LDM's conditioning mechanism),
so each latent position can look up the words that concern it.

The spatial transformer (LDM) treats each frame's H x W latent positions as H*W tokens:
norm -> self-attention -> norm -> cross-attention to the text -> norm -> feed-forward, each with a
residual connection, between a 1x1 projection in and a projection out.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for q (..., Lq, d), k and v (..., Lk, d).

    mask: bool, broadcastable to (..., Lq, Lk), True where a query may attend to a key; masked
    logits are set to -inf before the softmax. fused=True calls PyTorch's kernel, which computes
    the same thing faster (a test checks they agree); fused=False spells the formula out.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., Lq, Lk)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1) @ v  # (..., Lq, d)


class MultiHeadAttention(nn.Module):
    """Multi-head attention from `tokens` (B, L, width) to `context` (B, Lc, context_width).

    Without a context it is self-attention. key_mask (B, Lc), True for real tokens, hides padding.
    """

    def __init__(self, width: int, num_heads: int, context_width: int | None = None):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        context_width = width if context_width is None else context_width
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_width, width, bias=False)
        self.to_v = nn.Linear(context_width, width, bias=False)
        self.to_out = nn.Linear(width, width)
        self.fused = True  # False: the explicit softmax(QK^T/sqrt(d))V, e.g. to look at the weights

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (B, L, width) -> (B, H, L, d)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask (Lq, Lk), True where allowed, is combined with key_mask (causal masks)."""
        context = tokens if context is None else context
        q, k, v = (self.split_heads(proj(x)) for proj, x in
                   ((self.to_q, tokens), (self.to_k, context), (self.to_v, context)))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        if attention_mask is not None:
            mask = attention_mask if mask is None else mask & attention_mask
        out = scaled_dot_product_attention(q, k, v, mask, fused=self.fused)  # (B, H, L, d)
        return self.to_out(out.transpose(1, 2).flatten(2))  # (B, H, L, d) -> (B, L, width)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, 4x wider in the middle."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """x + SelfAttn(norm x); x + CrossAttn(norm x, text); x + FF(norm x)."""

    def __init__(self, width: int, num_heads: int, context_width: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attention = MultiHeadAttention(width, num_heads)
        self.cross_attention = MultiHeadAttention(width, num_heads, context_width)
        self.feed_forward = FeedForward(width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attention(self.norm1(x))
        x = x + self.cross_attention(self.norm2(x), context, key_mask=context_mask)
        return x + self.feed_forward(self.norm3(x))


class SpatialTransformer(nn.Module):
    """A transformer over each frame's positions, conditioned on the text: (N, C, H, W) -> same.

    N is batch x frames: frames are folded into the batch, so no information crosses frames here.
    """

    def __init__(self, channels: int, num_heads: int, context_width: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(channels, 32), channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.block = TransformerBlock(channels, num_heads, context_width)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
        tokens = self.proj_out(self.block(self.proj_in(tokens), context, context_mask))
        return x + tokens.transpose(1, 2).reshape(n, c, h, w)  # (N, H*W, C) -> (N, C, H, W)
