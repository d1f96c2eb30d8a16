"""The latent U-Net (LDM, used by MagicVideo section 3.2) in image mode and, inflated, in video mode.

Input: noisy latents (B, C, T, H, W), the diffusion step t (B,) (or one per frame, (B, T)), the text
context (B, L, D) and, in video mode, the clips' frame rate fps (B,). Output: the predicted noise (or
velocity), same shape.

Every 2D operation sees the frames folded into the batch, (B*T, C, H, W). In image mode that is
all there is: each frame is an independent image, the text-to-image model MagicVideo trains first.
Video mode (`UNet3D.from_image`, "inflation") keeps every image weight and adds three things:

- a frame-wise adaptor after every 2D convolution: frame i gets its own per-channel scale and
  shift, z_i = S_i * conv(z_i) + B_i, starting at S = 1, B = 0 (the identity);
- directed temporal attention beside every spatial transformer, on the same input, its output
  added: h <- SpatialTransformer(h) + TemporalAttention(h), the second starting at zero;
- a frame-rate embedding added to the step embedding, its last layer starting at zero.

So a freshly inflated video U-Net computes exactly what the image U-Net computes, frame by frame,
and training moves it away from there. Only the temporal attention mixes frames, and only causally:
the output for frame i depends on input frames 0..i.

The frame interpolation model (the interp stage) is inflated the same way with `condition_channels`
more input channels (diffusion.keyframe_condition), whose weights in conv_in start at zero: it too
starts as the image model on the noisy latents.

    conv_in -> [ResBlock (+ Spatial|Temporal)] x n, Downsample   per level, keeping skips
            -> ResBlock, Spatial|Temporal, ResBlock               in the middle
            -> [concat skip, ResBlock (+ Spatial|Temporal)] x (n+1), Upsample   per level back up
            -> GroupNorm, SiLU, conv_out (zero-initialised: the untrained model predicts 0)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import FrameCache, SpatialTransformer, TemporalAttention
from .config import UNetConfig
from .layers import ResBlock2d, group_norm


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (Transformer positional encoding) of steps t (B,) -> (B, dim):
    [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]  # (B, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class FrameAdaptor(nn.Module):
    """z_i = S_i * z_i + B_i: frame i's own per-channel scale S_i and shift B_i (MagicVideo 3.3).

    Placed after a 2D convolution whose weights all frames share; S starts at 1 and B at 0.
    """

    def __init__(self, channels: int, max_frames: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(max_frames, channels))  # S, (T_max, C)
        self.shift = nn.Parameter(torch.zeros(max_frames, channels))  # B, (T_max, C)

    def forward(self, z: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """z (B*T, C, H, W); frame_index (T,), each frame's position in its clip."""
        clips = z.unflatten(0, (-1, len(frame_index)))  # (B*T, C, H, W) -> (B, T, C, H, W)
        scale = self.scale[frame_index, :, None, None]  # (T, C, 1, 1), broadcast over B, H, W
        shift = self.shift[frame_index, :, None, None]
        return (scale * clips + shift).flatten(0, 1)


def adapt(adaptor: nn.Module | None, z: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
    """Apply a frame-wise adaptor; in image mode there is none (None or nn.Identity): z passes."""
    return adaptor(z, frame_index) if isinstance(adaptor, FrameAdaptor) else z


def frame_adaptor(channels: int, max_frames: int | None) -> FrameAdaptor | None:
    return None if max_frames is None else FrameAdaptor(channels, max_frames)


class ResBlock(ResBlock2d):
    """The VAE's residual block conditioned on the step embedding, and in video mode a frame-wise
    adaptor after each of its convolutions.

    The embedding scales and shifts each channel just after the second normalisation (ADM's
    "scale-shift norm", Dhariwal & Nichol 2021): norm(h) * (1 + scale) + shift. Added before it, as
    in the first DDPM, a per-channel constant is subtracted again by a GroupNorm with one channel per
    group, which is what group_norm makes of 32 channels (32 groups): the block would never see the step.
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, max_frames: int | None):
        super().__init__(in_channels, out_channels)
        self.embedding_projection = nn.Linear(embedding_dim, 2 * out_channels)  # scale and shift
        self.adaptor1 = frame_adaptor(out_channels, max_frames)
        self.adaptor2 = frame_adaptor(out_channels, max_frames)
        self.adaptor_skip = None if isinstance(self.skip, nn.Identity) else frame_adaptor(out_channels, max_frames)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        h = adapt(self.adaptor1, self.conv1(F.silu(self.norm1(x))), frame_index)
        scale, shift = self.embedding_projection(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)  # (N, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = adapt(self.adaptor2, self.conv2(F.silu(h)), frame_index)
        return adapt(self.adaptor_skip, self.skip(x), frame_index) + h


class Level(nn.Module):
    """One resolution's ResBlocks, each followed by a spatial transformer where the level has
    attention, and in video mode a temporal attention beside each spatial transformer."""

    def __init__(self, channels_in: list[int], channels: int, embedding_dim: int, attention: bool,
                 num_heads: int, context_width: int, max_frames: int | None, temporal_text: bool = False):
        super().__init__()
        self.resblocks = nn.ModuleList(ResBlock(c, channels, embedding_dim, max_frames) for c in channels_in)
        self.transformers = nn.ModuleList(
            SpatialTransformer(channels, num_heads, context_width) if attention else nn.Identity()
            for _ in channels_in)
        self.temporal = nn.ModuleList(
            TemporalAttention(channels, num_heads, max_frames, context_width if temporal_text else None)
            if attention and max_frames is not None else nn.Identity()
            for _ in channels_in)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor, frame_index: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None, attention_mask: torch.Tensor | None, cache: FrameCache | None,
                skips: list[torch.Tensor] | None = None, saved: list[torch.Tensor] | None = None) -> torch.Tensor:
        """h (B*T, C, H, W) through every block. Going up, each block first takes the last of `skips`
        (popped) beside h; going down, each block's output is appended to `saved`."""
        for resblock, spatial, temporal in zip(self.resblocks, self.transformers, self.temporal):
            if skips is not None:
                h = torch.cat([h, skips.pop()], dim=1)  # (B*T, C + C_skip, H, W)
            h = block_input = resblock(h, embedding, frame_index)
            if isinstance(spatial, SpatialTransformer):
                h = spatial(block_input, context, context_mask)
            if isinstance(temporal, TemporalAttention):  # parallel to the spatial one, on the same input
                h = h + temporal(block_input, frame_index, context, context_mask, attention_mask, cache)
            if saved is not None:
                saved.append(h)
        return h


class UNet3D(nn.Module):
    """max_frames None: image mode. An integer: video mode for clips of up to max_frames frames."""

    def __init__(self, config: UNetConfig, latent_channels: int, context_width: int,
                 max_frames: int | None = None, condition_channels: int = 0):
        super().__init__()
        self.config, self.max_frames = config, max_frames
        self.latent_channels, self.context_width = latent_channels, context_width
        self.condition_channels = condition_channels  # input channels beside the latents (interp: 5)
        base = config.base_channels
        widths = [base * mult for mult in config.channel_mults]
        embedding_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, embedding_dim), nn.SiLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        if max_frames is not None:  # frame-rate conditioning, added to the step embedding
            self.fps_mlp = nn.Sequential(nn.Linear(base, embedding_dim), nn.SiLU(),
                                         nn.Linear(embedding_dim, embedding_dim))
            nn.init.zeros_(self.fps_mlp[-1].weight)
            nn.init.zeros_(self.fps_mlp[-1].bias)
        self.conv_in = nn.Conv2d(latent_channels + condition_channels, base, 3, padding=1)
        self.adaptor_in = frame_adaptor(base, max_frames)

        def level(inputs, width, attention):
            return Level(inputs, width, embedding_dim, attention, config.num_heads, context_width, max_frames,
                         config.temporal_text)

        # down path: remember the channels of every skip connection it leaves behind
        skips, channels = [base], base
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        self.downsample_adaptors = nn.ModuleList()
        for index, width in enumerate(widths):
            self.down.append(level([channels] + [width] * (config.num_res_blocks - 1), width,
                                   index in config.attention_levels))
            channels = width
            skips += [width] * config.num_res_blocks
            last = index == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            self.downsample_adaptors.append(nn.Identity() if last or max_frames is None
                                            else FrameAdaptor(width, max_frames))
            if not last:
                skips.append(width)
        self.middle = level([channels, channels], channels, True)
        self.middle.transformers[1] = nn.Identity()  # ResBlock, transformer, ResBlock
        self.middle.temporal[1] = nn.Identity()
        # up path: each ResBlock takes the previous output concatenated with one skip
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        self.upsample_adaptors = nn.ModuleList()
        for index, width in reversed(list(enumerate(widths))):
            inputs = []
            for _ in range(config.num_res_blocks + 1):
                inputs.append(channels + skips.pop())
                channels = width
            self.up.append(level(inputs, width, index in config.attention_levels))
            self.upsample.append(nn.Identity() if index == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)))
            self.upsample_adaptors.append(nn.Identity() if index == 0 or max_frames is None
                                          else FrameAdaptor(width, max_frames))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, latent_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.adaptor_out = frame_adaptor(latent_channels, max_frames)

    @property
    def is_video(self) -> bool:
        return self.max_frames is not None

    @classmethod
    def from_image(cls, image_unet: "UNet3D", max_frames: int, condition_channels: int = 0) -> "UNet3D":
        """Inflation: the video U-Net holding every weight of `image_unet` (copied), plus fresh
        adaptors, temporal attention and frame-rate embedding that start as the identity / zero; with
        condition_channels, conv_in's weights for those extra input channels start at zero."""
        if image_unet.is_video:
            raise ValueError("from_image takes an image-mode U-Net; this one is already a video U-Net")
        video = cls(image_unet.config, image_unet.latent_channels, image_unet.context_width, max_frames,
                    condition_channels)
        video.to(next(image_unet.parameters()).device)
        weights = image_unet.state_dict()
        # conv_in (base, C, 3, 3) -> (base, C + condition_channels, 3, 3), the new input channels' weights zero
        weights["conv_in.weight"] = F.pad(weights["conv_in.weight"], (0, 0, 0, 0, 0, condition_channels))
        missing, unexpected = video.load_state_dict(weights, strict=False)
        new = set(video.video_parameter_names())
        if unexpected or set(missing) != new:  # every image weight must find its place
            raise RuntimeError(f"inflation mismatch: unexpected {unexpected}, "
                               f"missing {sorted(set(missing) - new)}")
        return video

    def video_parameter_names(self) -> list[str]:
        """The parameters video mode adds: adaptors, temporal attention, frame-rate embedding."""
        video_modules = [name for name, module in self.named_modules()
                         if isinstance(module, (FrameAdaptor, TemporalAttention)) or name == "fps_mlp"]
        return [name for name, _ in self.named_parameters()
                if any(name.startswith(module + ".") for module in video_modules)]

    @property
    def downsampling(self) -> int:
        """The latent side must be divisible by this."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def forward(self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, fps: torch.Tensor | None = None,
                frame_index: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: FrameCache | None = None) -> torch.Tensor:
        """latents (B, C, T, H, W), t (B,) or a step per frame (B, T), context (B, L, D), context_mask
        (B, L), fps (B,) in video mode -> (B, C, T, H, W). (With condition_channels, the input holds
        those channels after the latents' C, and the output the latents' C alone.)

        A plain clip's frames sit at positions 0..T-1 and attend causally. Another layout passes each
        frame's position in its clip, frame_index (T,), which picks its adaptor values and position
        embedding, and the temporal attention's mask (T, T) (diffusion.twin_clip_layout). With a
        cache, the T frames are the next ones after the finished frames it holds, which they attend
        to as well (FrameCache)."""
        batch, _, num_frames, height, width = latents.shape
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(f"latent size {height}x{width} is not divisible by {self.downsampling}, "
                             f"which {len(self.config.channel_mults)} U-Net levels need")
        if t.shape not in ((batch,), (batch, num_frames)):
            raise ValueError(f"steps t of shape {tuple(t.shape)}: pass one per clip ({batch},) or one per "
                             f"frame ({batch}, {num_frames})")
        steps = t[:, None].expand(batch, num_frames) if t.ndim == 1 else t  # (B, T): a clip's frames share it
        embedding = self.time_mlp(timestep_embedding(steps.flatten(), self.config.base_channels))  # (B*T, E)
        if self.is_video:
            if fps is None:
                raise ValueError("a video U-Net needs the clips' frame rate: pass fps (B,)")
            if frame_index is None:
                first = 0 if cache is None else cache.num_frames  # the finished frames come first
                if not 1 <= first + num_frames <= self.max_frames:
                    raise ValueError(f"{first + num_frames} frames: this video U-Net has frame adaptors for "
                                     f"1 to {self.max_frames} frames")
                frame_index = torch.arange(first, first + num_frames, device=latents.device)
            elif (frame_index.shape != (num_frames,)
                  or not 0 <= frame_index.min() <= frame_index.max() < self.max_frames):
                raise ValueError(f"frame_index {frame_index.tolist()}: pass the position in its clip, 0 to "
                                 f"{self.max_frames - 1}, of each of the {num_frames} frames")
            fps_embedding = self.fps_mlp(timestep_embedding(fps, self.config.base_channels))  # (B, E)
            embedding = embedding + fps_embedding.repeat_interleave(num_frames, dim=0)  # -> (B*T, E)
        # every frame of a clip shares its clip's frame rate and text
        context = context.repeat_interleave(num_frames, dim=0)  # (B, L, D) -> (B*T, L, D)
        if context_mask is not None:
            context_mask = context_mask.repeat_interleave(num_frames, dim=0)

        conditions = (embedding, frame_index, context, context_mask, attention_mask, cache)  # what every level reads
        h = self.conv_in(latents.transpose(1, 2).flatten(0, 1))  # (B, C, T, H, W) -> (B*T, C, H, W)
        h = adapt(self.adaptor_in, h, frame_index)
        saved = [h]
        for level, downsample, adaptor in zip(self.down, self.downsample, self.downsample_adaptors):
            h = level(h, *conditions, saved=saved)
            if not isinstance(downsample, nn.Identity):
                h = adapt(adaptor, downsample(h), frame_index)
                saved.append(h)
        h = self.middle(h, *conditions)
        for level, upsample, adaptor in zip(self.up, self.upsample, self.upsample_adaptors):
            h = adapt(adaptor, upsample(level(h, *conditions, skips=saved)), frame_index)
        out = adapt(self.adaptor_out, self.conv_out(F.silu(self.norm_out(h))), frame_index)  # (B*T, C, H, W)
        return out.unflatten(0, (batch, num_frames)).transpose(1, 2)  # -> (B, C, T, H, W)


def set_trainable(unet: UNet3D, which: str) -> None:
    """Video stage: "temporal" trains only what inflation added (the paper's choice: adaptors,
    temporal attention, frame-rate embedding) and freezes the image weights; "all" trains everything."""
    if which not in ("temporal", "all"):
        raise ValueError(f"unet.video_trainable must be 'temporal' or 'all', got {which!r}")
    video_names = set(unet.video_parameter_names())
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(which == "all" or name in video_names)
