"""The building blocks the autoencoders (vae.py) and the U-Net (unet3d.py) share.

Both are LDM's: a GroupNorm that adapts its group count to the channels, and the pre-activation
residual block x + conv(SiLU(norm(conv(SiLU(norm(x)))))). The U-Net's ResBlock extends the latter
with the diffusion step and the frame adaptors; the attention blocks (attention.py) normalise with
the same GroupNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
