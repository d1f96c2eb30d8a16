"""FLOPs of latent diffusion against the same U-Net in pixel space, per U-Net call and per clip.

    python benchmarks/flops.py [--num_inference_steps 25]

MagicVideo's claim (section 1): about 64x fewer FLOPs than VDM, by diffusing 8x smaller latents. This
prints (1) one U-Net call on one clip, in latent and in pixel space, at the presets' 64x64 frames with
the 4x and the 8x VAE and at the paper's own 256x256 frames with the 8x VAE; (2) what one generated
clip costs with each sampler: the default (frame by frame beside clean finished frames, with and
without the frame cache), the same two experts and guidance interval sampled jointly, and the paper's
way (the video model alone, jointly, guided at every step), in latent and in pixel space.

Counted by torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add of every matmul and
convolution (normalisations, activations and the softmax are not counted). The models sit on PyTorch's
meta device, shapes without data, so even the pixel U-Net at 256x256 costs no time or memory; their
weights do not change a FLOP count. Attention runs as its explicit formula (MultiHeadAttention.fused =
False), whose two matmuls the counter sees: it counts the fused kernel as 0 on the CPU.

Per clip, the real sampler runs (TextToVideo: guidance, two_experts, with_frame_cache, DDIM) with
stand-in U-Nets that price each call on the meta device and return zeros; the text encoder and the
decoder are counted once per clip.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode

from tiny_magicvideo.attention import FrameCache, explicit_attention
from tiny_magicvideo.config import Config
from tiny_magicvideo.models import text_vocabulary
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.text import TextEncoder
from tiny_magicvideo.unet3d import UNet3D
from tiny_magicvideo.vae import AutoencoderKL

PROMPT = "a red circle moving left"
GIGA = 1e9


def meta_unet(config: Config, channels: int, max_frames: int | None) -> UNet3D:
    """The run's U-Net on the meta device; channels: the latent's (4) or, in pixel space, RGB's (3)."""
    with torch.device("meta"):
        return explicit_attention(UNet3D(config.unet, channels, config.text.width, max_frames))


def call_flops(unet: UNet3D, rows: int, frames: int, size: int, context_length: int, past: int = 0) -> int:
    """FLOPs of one call on `rows` clips of `frames` frames of size x size, after `past` frames held
    in a FrameCache (counted without them: they were recorded by an earlier call)."""
    with torch.device("meta"):
        context = torch.zeros(rows, context_length, unet.context_width)
        mask = torch.ones(rows, context_length, dtype=torch.bool)
        fps = torch.zeros(rows) if unet.is_video else None
        cache = None
        if past:
            cache = FrameCache()
            with cache.record(past):
                unet(torch.zeros(rows, unet.latent_channels, past, size, size),
                     torch.zeros(rows, past, dtype=torch.long), context, mask, fps=fps, cache=cache)
        x = torch.zeros(rows, unet.latent_channels, frames, size, size)
        with FlopCounterMode(display=False) as counter:
            unet(x, torch.zeros(rows, frames, dtype=torch.long), context, mask, fps=fps, cache=cache)
    return counter.get_total_flops()


class PricedUNet:
    """Stands in for a U-Net in the sampler: adds what each call would cost to `flops`, returns zeros."""

    def __init__(self, unet: UNet3D):
        self.unet, self.flops, self.prices = unet, 0, {}
        self.is_video, self.max_frames = unet.is_video, unet.max_frames

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask=None, fps=None,
                 cache: FrameCache | None = None) -> torch.Tensor:
        key = (x.shape[0], x.shape[2], x.shape[-1], context.shape[1], 0 if cache is None else cache.num_frames)
        if key not in self.prices:
            self.prices[key] = call_flops(self.unet, *key)
        self.flops += self.prices[key]
        return torch.zeros_like(x)


def decoder_flops(config: Config, frames: int) -> int:
    """The image VAE's decoder on one clip, frame by frame."""
    with torch.device("meta"):
        vae = AutoencoderKL(config.vae)
        size = config.data.image_size // config.vae.downsample_factor
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.zeros(frames, config.vae.latent_channels, size, size))
    return counter.get_total_flops()


def clip_flops(config: Config, steps: int, **sampling) -> dict[str, float]:
    """GFLOPs of one clip: the video and image U-Nets' calls, the text encoder, the decoder."""
    config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, scaling_factor=1.0))
    torch.manual_seed(0)
    text_encoder = explicit_attention(TextEncoder(config.text, *text_vocabulary(config)).eval())
    video, image = (PricedUNet(meta_unet(config, config.vae.latent_channels, max_frames))
                    for max_frames in (config.data.num_frames, None))
    pipeline = TextToVideo(AutoencoderKL(config.vae), text_encoder, video, config,
                           {"text_encoder": text_encoder, "unet": image})
    with FlopCounterMode(display=False) as text_counter:  # the text encoder runs for real: it is small
        text_encoder([PROMPT]), text_encoder([""])  # as the pipeline calls it: the prompt, then the empty one
    pipeline(PROMPT, num_inference_steps=steps, **sampling)
    encoders = 2 if image.flops else 1  # the video model's text encoder, and the image model's where it runs
    return {"video U-Net": video.flops / GIGA, "image U-Net": image.flops / GIGA,
            "text": encoders * text_counter.get_total_flops() / GIGA,
            "decoder": decoder_flops(config, config.data.num_frames) / GIGA}


def per_call_table() -> None:
    print("## One U-Net call on one clip, no guidance\n")
    print("| setting | U-Net | frames | latent positions per frame | latent GFLOPs | pixel GFLOPs | pixel / latent |")
    print("|---|---|---|---|---|---|---|")
    settings = [("cpu preset, 64x64, 4x VAE", "cpu", 64, 4), ("cpu preset, 64x64, 8x VAE", "cpu", 64, 8),
                ("gpu preset, 64x64, 4x VAE", "gpu", 64, 4), ("the paper's 256x256, 8x VAE (gpu U-Net)", "gpu", 256, 8)]
    for name, preset, image_size, factor in settings:
        config = get_preset(preset)
        frames = config.data.num_frames
        latent = call_flops(meta_unet(config, 4, frames), 1, frames, image_size // factor, config.text.max_length)
        pixel = call_flops(meta_unet(config, 3, frames), 1, frames, image_size, config.text.max_length)
        print(f"| {name} | {preset} | {frames} | {(image_size // factor) ** 2} | {latent / GIGA:,.2f} | "
              f"{pixel / GIGA:,.1f} | {pixel / latent:.1f}x |")


def per_clip_table(steps: int) -> None:
    print(f"\n## One clip, {steps} DDIM steps (GFLOPs)\n")
    print("| preset | sampler | video U-Net | image U-Net | text + decoder | total | / joint, same experts |")
    print("|---|---|---|---|---|---|---|")
    for preset in ("cpu", "gpu"):
        config = get_preset(preset)
        run = config.diffusion
        experts = {"image_model_below": run.image_model_below, "unguided_below": run.unguided_below}
        samplers = {
            "default: frame by frame, frame cache": dict(sampling="frame_by_frame", **experts),
            "frame by frame, no cache": dict(sampling="frame_by_frame", frame_cache=False, **experts),
            "joint, same experts and guidance interval": dict(sampling="joint", **experts),
            "the paper's: joint, video model alone, guided throughout": dict(sampling="joint", image_model_below=0,
                                                                           unguided_below=0)}
        results = {name: clip_flops(config, steps, **sampling) for name, sampling in samplers.items()}
        joint = sum(results["joint, same experts and guidance interval"].values())
        for name, parts in results.items():
            total = sum(parts.values())
            print(f"| {preset} | {name} | {parts['video U-Net']:,.1f} | {parts['image U-Net']:,.1f} | "
                  f"{parts['text'] + parts['decoder']:,.2f} | {total:,.1f} | {total / joint:.2f}x |")
        frames, size = config.data.num_frames, config.data.image_size
        pixel = steps * call_flops(meta_unet(config, 3, frames), 2, frames, size, config.text.max_length) / GIGA
        paper = sum(results["the paper's: joint, video model alone, guided throughout"].values())
        print(f"| {preset} | the paper's, the same U-Net in pixel space | {pixel:,.1f} | 0 | 0 | {pixel:,.1f} | "
              f"{pixel / joint:.2f}x (x{pixel / paper:.1f} the paper's in latent space) |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_inference_steps", type=int, default=25, help="DDIM steps per clip (the presets' 25)")
    args = parser.parse_args(argv)
    per_call_table()
    per_clip_table(args.num_inference_steps)


if __name__ == "__main__":
    main()
