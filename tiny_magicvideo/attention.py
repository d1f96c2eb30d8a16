"""Attention: the explicit formula, the spatial transformer, and directed temporal attention.

Scaled dot-product attention (Vaswani et al. 2017): every query position i takes a weighted mean
of the values, weighted by how well its query matches each key:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

with H heads doing this in parallel on d = width / H channels each. Self-attention takes Q, K, V
from the same tokens; cross-attention takes K and V from the text (LDM's conditioning mechanism),
so each latent position can look up the words that concern it.

The spatial transformer (LDM) treats each frame's H x W latent positions as H*W tokens:
norm -> self-attention -> norm -> cross-attention to the text -> norm -> feed-forward, each with a
residual connection, between a 1x1 projection in and a projection out.

Directed temporal attention (MagicVideo section 3.3) treats each spatial location's T values as a
sequence of T tokens, so information flows between frames: (B*T, C, H, W) -> (B*H*W, T, C). A
causal mask applied to the logits before the softmax lets frame i attend to frames 0..i only:

    mask[i, j] = (j <= i),   logits[i, j] = -inf where mask[i, j] is False

so the past shapes the future and never the other way round. Its output projection starts at zero,
so a freshly added temporal attention changes nothing. (A caller may lay the frames out otherwise,
with each one's position in its clip and its own mask: diffusion.twin_clip_layout does, to train
on a clean clip and its noisy twin in one sequence.)
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import group_norm


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

    def project(self, tokens: torch.Tensor, context: torch.Tensor | None = None):
        """Queries from `tokens`, keys and values from `context` (or `tokens`), each (B, H, L, d)."""
        context = tokens if context is None else context
        return tuple(self.split_heads(proj(x)) for proj, x in
                     ((self.to_q, tokens), (self.to_k, context), (self.to_v, context)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of the projected heads, merged and projected out: (B, H, L, d) -> (B, L, width)."""
        out = scaled_dot_product_attention(q, k, v, mask, fused=self.fused)  # (B, H, L, d)
        return self.to_out(out.transpose(1, 2).flatten(2))

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask (Lq, Lk), True where allowed, is combined with key_mask (causal masks)."""
        q, k, v = self.project(tokens, context)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        if attention_mask is not None:
            mask = attention_mask if mask is None else mask & attention_mask
        return self.attend(q, k, v, mask)


def explicit_attention(model: nn.Module) -> nn.Module:
    """Every MultiHeadAttention in `model` as its spelled-out formula, in place: FLOP counters
    (torch.utils.flop_counter) see its two matmuls, where they count PyTorch's fused CPU kernel as 0."""
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.fused = False
    return model


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
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.block = TransformerBlock(channels, num_heads, context_width)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
        tokens = self.proj_out(self.block(self.proj_in(tokens), context, context_mask))
        return x + tokens.transpose(1, 2).reshape(n, c, h, w)  # (N, H*W, C) -> (N, C, H, W)


def causal_mask(num_frames: int, device: torch.device | None = None, num_past: int = 0) -> torch.Tensor:
    """(T, num_past + T) bool: query frame i (the clip's frame num_past + i) may attend to key frames
    0..num_past + i. With no past frames, (T, T), True on and below the diagonal."""
    return torch.ones(num_frames, num_past + num_frames, dtype=torch.bool, device=device).tril(num_past)


def both_ways(num_frames: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) bool, all True: every frame attends to every frame. The frame interpolation model's
    temporal attention (a frame between two keyframes needs the later one); the keyframe model's is causal."""
    return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)


class FrameCache:
    """The keys and values that finished frames give each temporal attention, kept so that a later
    frame can be denoised alone beside them: a language model's KV cache, over frames.

    Causal attention lets frame k change no earlier frame, so frames 0..k-1 give every layer the same
    keys and values whatever frame k holds, as long as their own inputs stay the same: frame-by-frame
    sampling beside clean finished frames (diffusion.past_frames clean) shows them at step 0 at every
    step. A frame is recorded once, when it is finished (`with cache.record(1): unet(...)`); each
    denoising step of the next runs the U-Net on that frame alone and attends to the kept keys and
    values (pipeline.with_frame_cache).

    Rows: classifier-free guidance runs [unconditional; conditional] in one batch of 2B and, below
    diffusion.unguided_below, the conditional B alone; a call with fewer rows than were recorded reads
    the last ones, the conditional rows.
    """

    def __init__(self):
        self.keys: dict[nn.Module, torch.Tensor] = {}  # per attention: (rows*H*W, heads, frames, d)
        self.values: dict[nn.Module, torch.Tensor] = {}
        self.num_frames = 0  # frames recorded
        self.recording = False

    @contextlib.contextmanager
    def record(self, num_frames: int):
        """Within the block, the U-Net's call on the next `num_frames` frames of each clip keeps their
        keys and values; afterwards they count as finished (an error inside records nothing as done)."""
        self.recording = True
        try:
            yield self
        finally:
            self.recording = False
        self.num_frames += num_frames

    def attend(self, attention: MultiHeadAttention, tokens: torch.Tensor) -> torch.Tensor:
        """Causal self-attention of `tokens` (N, T, C), frames num_frames.. of their clips, over the
        recorded frames and themselves; when recording, their keys and values are kept."""
        q, k, v = attention.project(tokens)  # (N, heads, T, d)
        if attention in self.keys:
            kept = len(self.keys[attention])
            if len(q) > kept or (self.recording and len(q) != kept):
                raise ValueError(f"FrameCache: {len(q)} rows against the {kept} recorded; record and read with "
                                 f"the same guidance batch (or its conditional half)")
            k = torch.cat([self.keys[attention][-len(q):], k], dim=2)  # (N, heads, frames + T, d)
            v = torch.cat([self.values[attention][-len(q):], v], dim=2)
        if self.recording:
            self.keys[attention], self.values[attention] = k, v
        mask = causal_mask(q.shape[2], q.device, num_past=k.shape[2] - q.shape[2])
        return attention.attend(q, k, v, mask)


class TemporalAttention(nn.Module):
    """Directed (causal) attention across the frames at every spatial location: (B*T, C, H, W) -> same.

    norm -> tokens + frame-position embedding -> x + causal SelfAttn(norm x) -> x + FF(norm x)
    -> proj_out, initialised to zero. It returns only the update, which the U-Net adds to the
    spatial transformer's output (the two run in parallel on the same input).

    With `context_width`, a cross-attention to the text sits between the self-attention and the
    feed-forward (x + CrossAttn(norm x, text)), so the motion words reach the frames' sequence
    directly (unet.temporal_text; not in the paper, whose frozen spatial layers read CLIP's text).
    """

    def __init__(self, channels: int, num_heads: int, max_frames: int, context_width: int | None = None):
        super().__init__()
        self.max_frames = max_frames
        self.norm = group_norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.frame_position = nn.Parameter(torch.randn(max_frames, channels) * 0.02)  # learned, (T_max, C)
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.attention = MultiHeadAttention(channels, num_heads)
        self.cross_attention = None if context_width is None else MultiHeadAttention(channels, num_heads, context_width)
        self.norm_cross = None if context_width is None else nn.LayerNorm(channels)
        self.feed_forward = FeedForward(channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, frame_index: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: FrameCache | None = None) -> torch.Tensor:
        """x (B*T, C, H, W); frame_index (T,), each frame's position in its clip (0..T-1 for a plain
        clip); with cross-attention, the text context (B*T, L, D) and mask (B*T, L), one copy per
        frame as the spatial transformer gets them. attention_mask (T, T), True where frame i may
        attend to frame j: by default causal_mask(T). cache: the T frames follow the finished frames
        it holds, and attend to them too (FrameCache)."""
        num_frames = len(frame_index)
        frames_in_batch, c, h, w = x.shape
        batch = frames_in_batch // num_frames
        # (B*T, C, H, W) -> (B, T, C, H*W) -> (B, H*W, T, C) -> (B*H*W, T, C)
        tokens = self.norm(x).reshape(batch, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, num_frames, c)
        tokens = self.proj_in(tokens) + self.frame_position[frame_index]
        if cache is None:
            if attention_mask is None:
                attention_mask = causal_mask(num_frames, x.device)
            tokens = tokens + self.attention(self.norm1(tokens), attention_mask=attention_mask)
        else:  # the cache builds the mask over its finished frames and these
            tokens = tokens + cache.attend(self.attention, self.norm1(tokens))
        if self.cross_attention is not None:
            # Every token of a clip reads the same text, and queries do not see each other, so the
            # clip's H*W*T tokens query its text in one sequence: the keys and values are projected
            # once per clip, not once per location. (B*H*W, T, C) -> (B, H*W*T, C); text (B*T, L, D) -> (B, L, D)
            queries = self.norm_cross(tokens).reshape(batch, h * w * num_frames, c)
            clip_mask = None if context_mask is None else context_mask[::num_frames]
            update = self.cross_attention(queries, context[::num_frames], key_mask=clip_mask)
            tokens = tokens + update.reshape(batch * h * w, num_frames, c)
        tokens = self.proj_out(tokens + self.feed_forward(self.norm2(tokens)))
        # (B*H*W, T, C) -> (B, H*W, T, C) -> (B, T, C, H*W) -> (B*T, C, H, W)
        return tokens.reshape(batch, h * w, num_frames, c).permute(0, 2, 3, 1).reshape(frames_in_batch, c, h, w)
