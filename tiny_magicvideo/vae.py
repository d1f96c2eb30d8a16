"""The image autoencoder: frames <-> small latents (MagicVideo section 3.1, after LDM's AutoencoderKL).

MagicVideo does not diffuse pixels. A variational autoencoder (VAE) maps each 64x64 RGB frame to a
4-channel latent that is `downsample_factor` times smaller per side (16x16 for f = 4), and the
diffusion model learns the distribution of those latents instead: f^2 = 16 times fewer positions
per frame, each of them carrying more meaning than a pixel.

    encoder:  x (B, 3, H, W) -> (mean, log variance), each (B, 4, H/f, W/f)
    sample:   z = mean + sigma * eps, eps ~ N(0, I)          (the reparameterisation trick)
    decoder:  z -> x_hat (B, 3, H, W)
    loss:     |x - x_hat| (or squared) + kl_weight * KL(q(z|x) || N(0, I))

The KL term keeps the latent space smooth and near the origin; a small weight keeps reconstructions
sharp. After training, latents are multiplied by `scaling_factor` = 1 / std(z) so that the
diffusion model sees unit variance (stored in the run's config.json).

Every layer of the image VAE is a 2D operation: video latents `(B, C, T, H, W)` have their frames
folded into the batch first, `(B*T, C, H, W)`, by `encode_video` / `decode_video`. So each frame is
decoded on its own, and its small errors change from frame to frame: "pixel dithering". The
VideoVAE at the end of this file (MagicVideo section 3.4) keeps the encoder and gives the decoder
temporal layers that see the whole clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig
from .distributed import BatchShare, randn
from .layers import ResBlock2d, group_norm


def level_channels(config: VAEConfig) -> list[int]:
    """Channels at each resolution: base, then 2x base for every level below full resolution."""
    num_downsamples = int(math.log2(config.downsample_factor))
    return [config.base_channels * min(2 ** level, 2) for level in range(num_downsamples + 1)]


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, 2 * latent_channels, H/f, W/f): mean and log variance, stacked."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        channels = level_channels(config)
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for level, width in enumerate(channels):
            previous = channels[max(level - 1, 0)]
            blocks = [ResBlock2d(previous if i == 0 else width, width) for i in range(config.num_res_blocks)]
            if level < len(channels) - 1:  # halve the resolution: a strided 3x3 convolution
                blocks.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            self.levels.append(nn.Sequential(*blocks))
        self.middle = ResBlock2d(channels[-1], channels[-1])
        self.norm_out = group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.middle(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, latent_channels, H/f, W/f) -> (B, 3, H, W): the encoder mirrored."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        channels = level_channels(config)[::-1]  # lowest resolution first
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.middle = ResBlock2d(channels[0], channels[0])
        self.levels = nn.ModuleList()
        for level, width in enumerate(channels):
            previous = channels[max(level - 1, 0)]
            blocks = [ResBlock2d(previous if i == 0 else width, width) for i in range(config.num_res_blocks)]
            if level < len(channels) - 1:  # double the resolution: nearest neighbour, then a 3x3 conv
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(sigma^2)), from the encoder's stacked (mean, log sigma^2)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, log_variance = moments.chunk(2, dim=1)
        self.log_variance = log_variance.clamp(-30.0, 20.0)  # keeps exp() finite early in training
        self.std = torch.exp(0.5 * self.log_variance)  # sigma = exp(log sigma^2 / 2)

    def sample(self, generator: torch.Generator | BatchShare | None = None) -> torch.Tensor:
        # reparameterisation: z = mu + sigma * eps with eps ~ N(0, I), so gradients reach mu, sigma
        eps = randn(self.mean.shape, generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def kl(self) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, 1)) per example, summed over latent elements: (B,).

        KL = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2)
        """
        terms = self.mean ** 2 + self.log_variance.exp() - 1.0 - self.log_variance
        return 0.5 * terms.flatten(1).sum(dim=1)


class AutoencoderKL(nn.Module):
    """The VAE: `encode` gives q(z | x), `decode` maps a latent back to pixels in [-1, 1]."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        if config.downsample_factor not in (4, 8):
            raise ValueError(f"vae.downsample_factor must be 4 or 8, got {config.downsample_factor}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        factor = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"expected images (B, 3, H, W) with H and W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | BatchShare | None = None):
        """Reconstruct through a sampled latent: (x_hat, posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior

    def reconstruction_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean |x_hat - x| (vae.reconstruction_loss l1) or mean (x_hat - x)^2 (mse), any shape."""
        error = reconstruction - target
        return error.abs().mean() if self.config.reconstruction_loss == "l1" else error.pow(2).mean()

    def loss(self, x: torch.Tensor, generator: torch.Generator | BatchShare | None = None):
        """(total loss, {"reconstruction": ..., "kl": ...}) for a batch of images in [-1, 1]."""
        reconstruction, posterior = self(x, generator)
        reconstruction_loss = self.reconstruction_loss(reconstruction, x)
        kl = posterior.kl().mean()
        total = reconstruction_loss + self.config.kl_weight * kl
        return total, {"reconstruction": reconstruction_loss.item(), "kl": kl.item()}

    # Videos: frames folded into the batch, every operation above is per frame.

    def encode_video(self, video: torch.Tensor, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> scaled latents (B, 4, T, H/f, W/f)."""
        batch, _, num_frames, _, _ = video.shape
        frames = video.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)
        posterior = self.encode(frames)
        z = posterior.sample(generator) if sample else posterior.mean
        z = z * self.scaling_factor
        return z.unflatten(0, (batch, num_frames)).transpose(1, 2)  # (B*T, c, h, w) -> (B, c, T, h, w)

    def decode_frames(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """z (B*T, c, h, w), unscaled, the frames of B clips in order -> (B*T, 3, H, W): each frame on
        its own (num_frames is for the VideoVAE, whose decoder sees the clip)."""
        return self.decode(z)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, T, h, w) -> (B, 3, T, H, W)."""
        batch, _, num_frames, _, _ = latents.shape
        z = latents.transpose(1, 2).flatten(0, 1) / self.scaling_factor  # (B*T, c, h, w)
        frames = self.decode_frames(z, num_frames)
        return frames.unflatten(0, (batch, num_frames)).transpose(1, 2)  # (B, 3, T, H, W)

    def reconstruct_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the same clips through encoder (posterior mean) and decoder, in [-1, 1].
        Unscaled latents throughout, so that it works before the scaling factor is measured."""
        batch, _, num_frames, _, _ = video.shape
        frames = video.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)
        decoded = self.decode_frames(self.encode(frames).mean, num_frames).clamp(-1, 1)
        return decoded.unflatten(0, (batch, num_frames)).transpose(1, 2)  # -> (B, 3, T, H, W)

    @property
    def scaling_factor(self) -> float:
        if self.config.scaling_factor is None:
            raise ValueError("vae.scaling_factor is not set: it is measured when the VAE stage finishes; "
                             "load a trained VAE with load_vae(run_dir), or train one with python train.py")
        return self.config.scaling_factor


# ---------------------------------------------------------------------------------------------
# The VideoVAE (MagicVideo section 3.4): the same encoder, a decoder that also looks across frames.


class TemporalConvBlock(nn.Module):
    """h + Conv_t(SiLU(GroupNorm(h))), Conv_t a 3-tap convolution along time at every pixel.

    (B*T, C, H, W) -> (B, C, T, H, W): a Conv3d with kernel (3, 1, 1) mixes frames t-1, t, t+1 of
    each pixel and channel, and nothing across pixels. The clip's ends are padded by repeating the
    first and last frame. Conv_t starts at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), padding_mode="replicate")
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        clips = h.unflatten(0, (-1, num_frames)).transpose(1, 2)  # (B*T, C, H, W) -> (B, C, T, H, W)
        update = self.conv(F.silu(self.norm(clips)))  # GroupNorm over (C/G, T, H, W) of each clip
        return h + update.transpose(1, 2).flatten(0, 1)  # -> (B*T, C, H, W)


class VideoDecoder(Decoder):
    """The image decoder with a temporal block after its middle block and after every level:

        conv_in -> middle -> temporal -> [level -> temporal] x levels -> norm, SiLU, conv_out

    Every 2D layer still sees one frame at a time, (B*T, C, H, W); the temporal blocks see the clip.
    """

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        channels = level_channels(config)[::-1]
        # vae.temporal_blocks false: the control, the image decoder fine-tuned on clips as it is
        block = TemporalConvBlock if config.temporal_blocks else NoTemporalBlock
        self.temporal_middle = block(channels[0])
        self.temporal_levels = nn.ModuleList(block(width) for width in channels)

    def forward(self, z: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """z (B*T, c, h, w), the frames of B clips in order -> (B*T, 3, H, W)."""
        h = self.temporal_middle(self.middle(self.conv_in(z)), num_frames)
        for level, temporal in zip(self.levels, self.temporal_levels):
            h = temporal(level(h), num_frames)
        return self.conv_out(F.silu(self.norm_out(h)))


class NoTemporalBlock(nn.Module):
    """In place of a TemporalConvBlock in the control decoder: every frame decoded on its own."""

    def __init__(self, channels: int):
        super().__init__()

    def forward(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        return h


class VideoVAE(AutoencoderKL):
    """The image VAE's encoder (frozen: every latent the diffusion model makes stays valid) and a
    VideoDecoder that starts with the image decoder's weights and zero temporal blocks, so that it
    decodes exactly like the image VAE until it is trained.

    loss = reconstruction + temporal_loss_weight * mean |(x^_{t+1} - x^_t) - (x_{t+1} - x_t)|
    """

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.decoder = VideoDecoder(config)
        self.encoder.requires_grad_(False)

    @classmethod
    def from_image(cls, vae: AutoencoderKL) -> "VideoVAE":
        """The VideoVAE holding a copy of every weight of `vae`; only the temporal blocks are new."""
        video_vae = cls(vae.config).to(next(vae.parameters()).device)
        missing, unexpected = video_vae.load_state_dict(vae.state_dict(), strict=False)
        if unexpected or any(".temporal_" not in name for name in missing):
            raise RuntimeError(f"VideoVAE.from_image: weights that found no place: {unexpected or missing}")
        return video_vae

    def decode_frames(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """z (B*T, c, h, w), unscaled, the frames of B clips in order -> (B*T, 3, H, W), decoded as clips."""
        return self.decoder(z, num_frames)

    def video_loss(self, video: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(total, {"reconstruction", "temporal"}) for clips (B, 3, T, H, W) in [-1, 1]."""
        with torch.no_grad():  # the frozen encoder gives the latents the diffusion model also sees
            latents = self.encode_video(video)
        decoded = self.decode_video(latents)
        reconstruction = self.reconstruction_loss(decoded, video)
        temporal = ((decoded.diff(dim=2) - video.diff(dim=2)).abs()).mean()  # differences along T
        total = reconstruction + self.config.temporal_loss_weight * temporal
        return total, {"reconstruction": reconstruction.item(), "temporal": temporal.item()}


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None,
                           batch_size: int = 64) -> float:
    """1 / std of sampled latents over `images` (N, 3, H, W): the factor that gives unit variance."""
    latents = torch.cat([vae.encode(images[i:i + batch_size]).sample(generator)
                         for i in range(0, len(images), batch_size)])
    return 1.0 / latents.std().item()
