"""The building blocks the autoencoders (vae.py) and the U-Net (unet3d.py) share.

Both are LDM's: a GroupNorm that adapts its group count to the channels, and the pre-activation
residual block x + conv(SiLU(norm(conv(SiLU(norm(x)))))). The U-Net's ResBlock extends the latter
with the diffusion step and the frame adaptors.

And the training noise's draws (`randn`, `rand`, `randint`), which take a torch.Generator or, under
torchrun, a `BatchShare`: one process's slice of draws made for the whole global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchShare:
    """One process's share of a global batch under torchrun (training.py): the draws of a training
    loss are made for the whole global batch, world_size times the local one along dim 0, from the
    generator every process holds in the same state, and this rank's rows kept. So N processes draw,
    between them, exactly what one process draws for the global batch, and their generators stay in
    step: a checkpoint holds one state, valid for any number of processes."""

    def __init__(self, generator: torch.Generator, rank: int, world_size: int):
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def draw(self, draw, shape: tuple[int, ...], **options) -> torch.Tensor:
        """draw(global shape, generator=..., **options), this rank's rows: (shape[0], *shape[1:])."""
        rows = shape[0]
        drawn = draw((rows * self.world_size, *shape[1:]), generator=self.generator, **options)
        return drawn[self.rank * rows:(self.rank + 1) * rows]


def randn(shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
          **options) -> torch.Tensor:
    """torch.randn(shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(torch.randn, shape, **options)
    return torch.randn(shape, generator=generator, **options)


def rand(shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
         **options) -> torch.Tensor:
    """torch.rand(shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(torch.rand, shape, **options)
    return torch.rand(shape, generator=generator, **options)


def randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
            **options) -> torch.Tensor:
    """torch.randint(low, high, shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(lambda size, **kw: torch.randint(low, high, size, **kw), shape, **options)
    return torch.randint(low, high, shape, generator=generator, **options)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, as many as divide the channel count."""
    groups = math.gcd(channels, 32)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock2d(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 projection when channels change.

    (N, C_in, H, W) -> (N, C_out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h
