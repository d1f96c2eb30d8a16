"""Train tiny-magicvideo: python train.py [--preset P] [--stage S] [--section.key value ...]

Runs, in order, every stage that runs/<name>/ does not yet hold finished, resuming an interrupted
one from its last checkpoint: vae -> image -> video -> videovae (see DESIGN.md, "Stages").
`--stage S` runs one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from tiny_magicvideo.config import Config, DataConfig, parse_config
from tiny_magicvideo.data import (check_data_config, frame_rates, frames_to_video, make_loader,
                                  sample_clip, video_to_frames)
from tiny_magicvideo.diffusion import GaussianDiffusion
from tiny_magicvideo.metrics import flicker, psnr
from tiny_magicvideo.pipeline import (TextToVideo, load_image_model, save_video, text_to_image_model,
                                      text_to_video_model, tile_clips)
from tiny_magicvideo.training import (WEIGHTS_FILES, Stage, checkpoint_step, continue_run,
                                      resolve_device, train_stage, write_text_atomically)
from tiny_magicvideo.unet3d import set_trainable
from tiny_magicvideo.vae import AutoencoderKL, VideoVAE, load_vae, measure_scaling_factor

STAGE_ORDER = ("vae", "image", "video", "videovae")


def fixed_clips(config: Config, split: str, count: int) -> torch.Tensor:
    """The same `count` clips of `split` every time: (count, 3, T, H, W)."""
    return torch.stack([frames_to_video(sample_clip(config.data, split, i)[0]) for i in range(count)])


def single_frames(data: DataConfig) -> DataConfig:
    """The data of the image stages (vae, image): clips of one frame, the object anywhere in the
    frame, captions as for clips; a fraction 1 / num_frames of the rendering of whole clips."""
    return dataclasses.replace(data, num_frames=1)


# ---------------------------------------------------------------------------------------------
# Stage vae: the image autoencoder on single frames.


def vae_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = AutoencoderKL(config.vae)
    preview = fixed_clips(config, "val", 8).to(device)

    def batches(start_step: int):
        return make_loader(single_frames(config.data), "train", config.train.batch_size,
                           start_step=start_step, num_steps=config.train.vae_steps)

    def loss(batch: dict, generator: torch.Generator):
        frames = batch["video"].to(device)[:, :, 0]  # (B, 3, 1, H, W) -> (B, 3, H, W)
        return vae.loss(frames, generator)

    def write_samples(ema_vae: AutoencoderKL, step: int) -> None:
        """A GIF of 8 validation clips, originals above their reconstructions."""
        reconstructed = ema_vae.reconstruct_video(preview)  # (B, 3, T, H, W)
        clips = video_to_frames(torch.cat([preview, reconstructed]))  # (2B, T, H, W, 3)
        save_video(tile_clips(clips, columns=len(preview)), run_dir / "samples" / f"vae_{step:06d}.gif")

    return Stage("vae", vae, loss, batches, config.train.vae_steps, config.train.vae_learning_rate,
                 write_samples)


def finish_vae(vae: AutoencoderKL, config: Config, run_dir: Path, device: torch.device) -> None:
    """Measure the scaling factor, store it in config.json, draw the reconstruction grid."""
    train_frames = fixed_clips(config, "train", 64).to(device).transpose(1, 2).flatten(0, 1)
    config.vae.scaling_factor = measure_scaling_factor(vae, train_frames)
    write_text_atomically(run_dir / "config.json", config.to_json())

    val_frames = fixed_clips(config, "val", 64).to(device)[:, :, 0]  # first frame of each: (64, 3, H, W)
    with torch.no_grad():
        reconstructed = vae.decode(vae.encode(val_frames).mean).clamp(-1, 1)
    print(f"stage vae: scaling factor {config.vae.scaling_factor:.4f}; reconstruction PSNR on 64 "
          f"validation frames {psnr(reconstructed, val_frames):.2f} dB")
    draw_reconstructions(val_frames[:8], reconstructed[:8], run_dir / "vae_reconstructions.png")


def draw_reconstructions(originals: torch.Tensor, reconstructed: torch.Tensor, path: Path) -> None:
    """PNG grid: originals, reconstructions, and their absolute difference (x4 for visibility)."""
    from matplotlib.figure import Figure

    rows = {"original": originals, "reconstruction": reconstructed,
            "|difference| x 4": ((reconstructed - originals).abs() * 4 - 1).clamp(-1, 1)}
    figure = Figure(figsize=(1.6 * len(originals), 5.2), layout="constrained")
    axes = figure.subplots(len(rows), len(originals), squeeze=False)
    for row, (title, images) in enumerate(rows.items()):
        for column, image in enumerate(video_to_frames(images[:, :, None])[:, 0]):  # (N, H, W, 3)
            axes[row, column].imshow(image)
            axes[row, column].axis("off")
        axes[row, 0].set_title(title, loc="left", fontsize=9)
    figure.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Stage image: text encoder + U-Net on single frames, in the frozen VAE's latent space.

SAMPLE_PROMPTS = ("a red circle moving left", "a green square moving up", "a blue triangle moving right",
                  "a yellow ball sliding down", "a magenta box going left", "a cyan triangle drifting up",
                  "a white disc gliding right", "a green triangle moving up")


def drop_captions(captions: list[str], config: Config, generator: torch.Generator,
                  device: torch.device) -> list[str]:
    """Classifier-free guidance: each caption becomes "" with probability diffusion.text_drop_prob."""
    dropped = torch.rand(len(captions), generator=generator, device=device) < config.diffusion.text_drop_prob
    return ["" if drop else caption for drop, caption in zip(dropped.tolist(), captions)]


def image_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = text_to_image_model(config)
    text_encoder, unet = model["text_encoder"], model["unet"]
    diffusion = GaussianDiffusion(config.diffusion)

    def batches(start_step: int):
        return make_loader(single_frames(config.data), "train", config.train.batch_size, start_step=start_step,
                           num_steps=config.train.image_steps)

    def loss(batch: dict, generator: torch.Generator):
        frames = batch["video"].to(device)  # (B, 3, 1, H, W)
        with torch.no_grad():
            latents = vae.encode_video(frames)  # (B, 4, 1, h, w)
        context, mask = text_encoder(drop_captions(batch["caption"], config, generator, device))
        return diffusion.training_loss(lambda x, t: unet(x, t, context, mask), latents, generator), {}

    def write_samples(ema_model: torch.nn.ModuleDict, step: int) -> None:
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config)
        images = pipeline(list(SAMPLE_PROMPTS), seed=0).frames[:, 0]  # (N, H, W, 3)
        draw_image_grid(images, SAMPLE_PROMPTS, run_dir / "samples" / f"image_{step:06d}.png")

    return Stage("image", model, loss, batches, config.train.image_steps, config.train.learning_rate,
                 write_samples)


def draw_image_grid(images: np.ndarray, titles, path: Path, columns: int = 4) -> None:
    from matplotlib.figure import Figure

    rows = -(-len(images) // columns)
    figure = Figure(figsize=(2.2 * columns, 2.5 * rows), layout="constrained")
    for axis, image, title in zip(figure.subplots(rows, columns, squeeze=False).flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=7)
        axis.axis("off")
    figure.savefig(path, dpi=100)


def finish_image(model, config: Config, run_dir: Path, device: torch.device) -> None:
    print(f"stage image: samples in {run_dir / 'samples'}; measure with "
          f"python benchmarks/image_quality.py --run {run_dir}")


# ---------------------------------------------------------------------------------------------
# Stage video: the image U-Net inflated (frame adaptors, temporal attention, frame rate) on clips.


def video_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = text_to_video_model(load_image_model(run_dir, config, device), config)  # the image stage's EMA weights
    text_encoder, unet = model["text_encoder"], model["unet"]
    trainable = config.unet.video_trainable
    set_trainable(unet, trainable)
    text_encoder.requires_grad_(trainable == "all")
    diffusion = GaussianDiffusion(config.diffusion)
    # for the samples' low steps (diffusion.image_model_below): a copy of the image stage's model, as the
    # video stage trains the one it inflated
    expert = load_image_model(run_dir, config, device)

    def batches(start_step: int):
        return make_loader(config.data, "train", config.train.video_batch_size, start_step=start_step,
                           num_steps=config.train.video_steps)

    def loss(batch: dict, generator: torch.Generator):
        video, fps = batch["video"].to(device), batch["fps"].to(device)  # (B, 3, T, H, W), (B,)
        with torch.no_grad():
            latents = vae.encode_video(video)  # (B, 4, T, h, w)
        context, mask = text_encoder(drop_captions(batch["caption"], config, generator, device))
        steps = {"t_min": config.train.video_t_min, "t_min_share": config.train.video_t_min_share}
        if config.train.video_twin_clips:
            return diffusion.twin_training_loss(lambda x, t, **layout: unet(x, t, context, mask, fps=fps, **layout),
                                                latents, generator, **steps,
                                                frame1_weight=config.train.video_frame1_weight), {}
        return diffusion.training_loss(lambda x, t: unet(x, t, context, mask, fps=fps), latents, generator,
                                       clean_past=config.diffusion.past_frames == "clean", **steps), {}

    def write_samples(ema_model: torch.nn.ModuleDict, step: int) -> None:
        """samples/video_<step>.gif: the fixed prompts, one row per frame rate the run trains on."""
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config, expert)
        clips = np.concatenate([pipeline(list(SAMPLE_PROMPTS), fps=fps, seed=0).frames
                                for fps in frame_rates(config.data)])
        save_video(tile_clips(clips, columns=len(SAMPLE_PROMPTS)), run_dir / "samples" / f"video_{step:06d}.gif",
                   fps=config.data.fps)

    # with video_trainable all, the reused image weights and text encoder take their own rate
    new_layers = {f"unet.{name}" for name in unet.video_parameter_names()}
    return Stage("video", model, loss, batches, config.train.video_steps, config.train.video_learning_rate,
                 write_samples, learning_rates=lambda name: (config.train.video_learning_rate if name in new_layers
                                                             else config.train.video_reused_learning_rate))


def finish_video(model, config: Config, run_dir: Path, device: torch.device) -> None:
    print(f"stage video: samples in {run_dir / 'samples'}; measure with "
          f"python benchmarks/video_quality.py --run {run_dir}; sample with "
          f"python sample.py --run {run_dir} --prompt \"a red circle moving left\"")


# ---------------------------------------------------------------------------------------------
# Stage videovae: the image VAE's decoder with temporal layers, fine-tuned on clips, encoder frozen.


def videovae_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    image_vae = load_vae(run_dir, device)
    video_vae = VideoVAE.from_image(image_vae)  # frozen encoder, decoder = image decoder + temporal
    preview = fixed_clips(config, "val", 8).to(device)
    with torch.no_grad():
        preview_image_decoder = image_vae.reconstruct_video(preview)

    def batches(start_step: int):
        return make_loader(config.data, "train", config.train.video_batch_size, start_step=start_step,
                           num_steps=config.train.videovae_steps)

    def loss(batch: dict, generator: torch.Generator):
        return video_vae.video_loss(batch["video"].to(device))

    def write_samples(ema_vae: VideoVAE, step: int) -> None:
        """A GIF of 8 validation clips: originals, image decoder, VideoVAE, top to bottom."""
        clips = torch.cat([preview, preview_image_decoder, ema_vae.reconstruct_video(preview)])
        save_video(tile_clips(video_to_frames(clips), columns=len(preview)),
                   run_dir / "samples" / f"videovae_{step:06d}.gif", fps=config.data.fps)

    return Stage("videovae", video_vae, loss, batches, config.train.videovae_steps,
                 config.train.vae_learning_rate, write_samples)


def finish_videovae(video_vae: VideoVAE, config: Config, run_dir: Path, device: torch.device) -> None:
    clips = fixed_clips(config, "val", 32).to(device)
    with torch.no_grad():
        by_frame, by_clip = load_vae(run_dir, device).reconstruct_video(clips), video_vae.reconstruct_video(clips)
    print(f"stage videovae: on 32 validation clips, flicker {flicker(by_frame, clips):.5f} (image decoder) "
          f"-> {flicker(by_clip, clips):.5f} (VideoVAE), PSNR {psnr(by_frame, clips):.2f} -> "
          f"{psnr(by_clip, clips):.2f} dB; measure with python benchmarks/videovae_quality.py --run {run_dir}")


# ---------------------------------------------------------------------------------------------


def stage_steps(config: Config, name: str) -> int:
    return getattr(config.train, f"{name}_steps")


def main(argv: list[str] | None = None) -> Path:
    def add_stage(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--stage", choices=STAGE_ORDER, default=None,
                            help="run only this stage (default: every unfinished stage, in order)")

    config, args = parse_config(argv, description=__doc__.splitlines()[0], extra_arguments=add_stage)
    run_dir = Path(config.runs_dir) / config.name
    try:
        check_data_config(config.data)
        if config.train.video_twin_clips and config.diffusion.past_frames != "clean":
            raise ValueError("train.video_twin_clips trains on clean past frames, but diffusion.past_frames "
                             f"is {config.diffusion.past_frames!r}; add --diffusion.past_frames clean")
        # checked here, not at the video stage's first step, an hour in
        frame1_weight = config.train.video_frame1_weight
        if frame1_weight != 1.0 and not config.train.video_twin_clips:
            raise ValueError(f"train.video_frame1_weight {frame1_weight} weighs the twin clips' frame 1; "
                             "add --train.video_twin_clips true, or drop it")
        if frame1_weight <= 0:
            raise ValueError(f"train.video_frame1_weight {frame1_weight} must be positive; 1 weighs every frame alike")
        device = resolve_device(config.device)
        config = continue_run(run_dir, config)
    except ValueError as error:
        sys.exit(f"error: {error}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "config.json", config.to_json())
    torch.manual_seed(config.seed)  # the models' initial weights
    print(f"run {run_dir} (preset {config.preset}, device {device}): {config.data.num_frames} frames "
          f"of {config.data.image_size}x{config.data.image_size}")
    show_training_data(config, run_dir)

    stages = {"vae": (vae_stage, finish_vae), "image": (image_stage, finish_image),
              "video": (video_stage, finish_video), "videovae": (videovae_stage, finish_videovae)}
    for name in [args.stage] if args.stage else STAGE_ORDER:
        weights = run_dir / WEIGHTS_FILES[name]
        if checkpoint_step(weights) >= stage_steps(config, name):
            print(f"stage {name}: finished ({weights}); raise --train.{name}_steps to train on")
            continue
        make_stage, finish = stages[name]
        model = train_stage(make_stage(config, run_dir, device), config, run_dir, device)
        finish(model, config, run_dir, device)
    return run_dir


def show_training_data(config: Config, run_dir: Path) -> None:
    """samples/data.gif: 16 training clips, the data this run learns from."""
    clips = np.stack([sample_clip(config.data, "train", i)[0] for i in range(16)])
    save_video(tile_clips(clips, columns=4), run_dir / "samples" / "data.gif")


if __name__ == "__main__":
    main()
