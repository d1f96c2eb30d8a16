"""The latent U-Net (LDM, used by MagicVideo section 3.2), here in image mode.

Input: noisy latents (B, C, T, H, W), the diffusion step t (B,), and the text context (B, L, D).
Output: the predicted noise (or velocity), the same shape as the input.

In image mode every 2D operation sees the frames folded into the batch, (B*T, C, H, W), so each
frame is an independent image: this is the text-to-image model that MagicVideo trains first and
later inflates into a video model (frame-wise adaptors and directed temporal attention join this
same class in the video issue).

    conv_in -> [ResBlock (+ SpatialTransformer)] x n, Downsample   per level, keeping skips
            -> ResBlock, SpatialTransformer, ResBlock               in the middle
            -> [concat skip, ResBlock (+ SpatialTransformer)] x (n+1), Upsample   per level back up
            -> GroupNorm, SiLU, conv_out (zero-initialised: the untrained model predicts 0)

The step t enters every ResBlock through a sinusoidal embedding and a small MLP; the text enters
through the cross-attention of the spatial transformers at the lower resolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import SpatialTransformer
from .config import UNetConfig
from .vae import ResBlock2d, group_norm


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Transformer positional encoding) of steps t (B,) -> (B, dim):
    [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]  # (B, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(ResBlock2d):
    """The VAE's residual block with the step embedding added between its two convolutions."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int):
        super().__init__(in_channels, out_channels)
        self.embedding_projection = nn.Linear(embedding_dim, out_channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding_projection(F.silu(embedding))[:, :, None, None]  # (N, C) -> (N, C, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Level(nn.Module):
    """One resolution's ResBlocks, each followed by a spatial transformer where there is one."""

    def __init__(self, channels_in: list[int], channels: int, embedding_dim: int,
                 attention: bool, num_heads: int, context_width: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResBlock(c, channels, embedding_dim) for c in channels_in)
        self.transformers = nn.ModuleList(
            SpatialTransformer(channels, num_heads, context_width) if attention else nn.Identity()
            for _ in channels_in)


class UNet3D(nn.Module):
    def __init__(self, config: UNetConfig, latent_channels: int, context_width: int):
        super().__init__()
        self.config = config
        base = config.base_channels
        widths = [base * mult for mult in config.channel_mults]
        embedding_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        self.conv_in = nn.Conv2d(latent_channels, base, 3, padding=1)

        def level(inputs, width, index):
            return Level(inputs, width, embedding_dim, index in config.attention_levels,
                         config.num_heads, context_width)

        # down path: remember the channels of every skip connection it leaves behind
        skips, channels = [base], base
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for index, width in enumerate(widths):
            self.down.append(level([channels] + [width] * (config.num_res_blocks - 1), width, index))
            channels = width
            skips += [width] * config.num_res_blocks
            last = index == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            if not last:
                skips.append(width)
        self.middle = Level([channels, channels], channels, embedding_dim, True, config.num_heads, context_width)
        self.middle.transformers[1] = nn.Identity()  # ResBlock, transformer, ResBlock
        # up path: each ResBlock takes the previous output concatenated with one skip
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for index, width in reversed(list(enumerate(widths))):
            inputs = []
            for _ in range(config.num_res_blocks + 1):
                inputs.append(channels + skips.pop())
                channels = width
            self.up.append(level(inputs, width, index))
            self.upsample.append(nn.Identity() if index == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsampling(self) -> int:
        """The latent side must be divisible by this."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """latents (B, C, T, H, W), t (B,), context (B, L, D), context_mask (B, L) -> (B, C, T, H, W)."""
        batch, _, num_frames, height, width = latents.shape
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(f"latent size {height}x{width} is not divisible by {self.downsampling}, "
                             f"which {len(self.config.channel_mults)} U-Net levels need")
        # every frame of a clip shares its clip's step and text
        embedding = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        embedding = embedding.repeat_interleave(num_frames, dim=0)  # (B, E) -> (B*T, E)
        context = context.repeat_interleave(num_frames, dim=0)  # (B, L, D) -> (B*T, L, D)
        if context_mask is not None:
            context_mask = context_mask.repeat_interleave(num_frames, dim=0)

        def run(level: Level, h: torch.Tensor, skips: list | None = None, saved: list | None = None):
            for resblock, transformer in zip(level.resblocks, level.transformers):
                if skips is not None:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = resblock(h, embedding)
                if isinstance(transformer, SpatialTransformer):
                    h = transformer(h, context, context_mask)
                if saved is not None:
                    saved.append(h)
            return h

        h = self.conv_in(latents.transpose(1, 2).flatten(0, 1))  # (B, C, T, H, W) -> (B*T, C, H, W)
        saved = [h]
        for level, downsample in zip(self.down, self.downsample):
            h = run(level, h, saved=saved)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)
                saved.append(h)
        h = run(self.middle, h)
        for level, upsample in zip(self.up, self.upsample):
            h = upsample(run(level, h, skips=saved))
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B*T, C, H, W)
        return out.unflatten(0, (batch, num_frames)).transpose(1, 2)  # -> (B, C, T, H, W)
