"""Seconds to generate one clip with a preset's default sampling settings, on this machine.

    python benchmarks/sampling_speed.py [--preset cpu] [--run DIR] [--clips 10] [--num_inference_steps S] [--no_cache]

Times TextToVideo on one prompt at a time (one 8-frame clip for the cpu preset): the text encoders,
every denoising step of the run's sampler (frame by frame with the frame cache, the two experts,
guidance above diffusion.unguided_below) and the decoder. Prints the mean and standard deviation of
--clips clips after one warm-up clip. Without --run the models hold random weights of the preset's
sizes: the same work as a trained run's, since no step's cost depends on the weights. Run it with
nothing else on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from tiny_magicvideo.models import text_to_image_model, text_to_video_model
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.vae import AutoencoderKL


def random_pipeline(preset: str) -> TextToVideo:
    """The preset's models with random weights (the VAE's scaling factor set to 1)."""
    config = get_preset(preset)
    config = dataclasses.replace(config, vae=dataclasses.replace(config.vae, scaling_factor=1.0))
    torch.manual_seed(0)
    image_model = text_to_image_model(config).eval()
    video_model = text_to_video_model(text_to_image_model(config), config).eval()
    return TextToVideo(AutoencoderKL(config.vae).eval(), video_model["text_encoder"], video_model["unet"], config,
                       image_model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="the preset whose sizes and settings to time (no --run)")
    parser.add_argument("--run", default=None, help="a trained run directory instead (its own settings)")
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--num_inference_steps", type=int, default=None,
                        help="DDIM steps (default: the preset's or run's)")
    parser.add_argument("--no_cache", action="store_true", help="frame by frame, recompute the finished frames")
    args = parser.parse_args(argv)
    pipeline = TextToVideo.from_run(args.run, device="cpu") if args.run else random_pipeline(args.preset)
    settings = pipeline.config.diffusion
    steps = settings.num_inference_steps if args.num_inference_steps is None else args.num_inference_steps
    print(f"{args.run or f'the {args.preset} preset, random weights'}: {pipeline.config.data.num_frames} frames of "
          f"{pipeline.config.data.image_size}x{pipeline.config.data.image_size}, {steps} "
          f"steps, {settings.video_sampling}, image model below {settings.image_model_below}, unguided below "
          f"{settings.unguided_below}, frame cache {'off' if args.no_cache else 'on'}; {torch.get_num_threads()} "
          f"threads")
    seconds = []
    for seed in range(args.clips + 1):  # the first clip warms up
        start = time.perf_counter()
        pipeline("a red circle moving left", seed=seed, num_inference_steps=steps, frame_cache=not args.no_cache)
        seconds.append(time.perf_counter() - start)
    print(f"one clip: {statistics.mean(seconds[1:]):.2f} +- {statistics.stdev(seconds[1:]):.2f} s "
          f"(mean and standard deviation of {args.clips} clips)")


if __name__ == "__main__":
    main()
