"""The five training stages: what each trains, on what data, with which loss and rates.

    vae -> image -> video -> videovae -> interp          (STAGES, in training order)

- vae: the image autoencoder on single frames; at its end, the latents' scaling factor is measured.
- image: the text encoder and the U-Net in image mode on single frames, in the frozen VAE's latents.
- video: the image U-Net inflated (frame adaptors, temporal attention, frame rate) on clips.
- videovae: the image VAE's decoder with temporal blocks, fine-tuned on clips, the encoder frozen.
- interp: the image U-Net inflated again, the keyframes beside the noisy latents: it fills frames.

Each stage function builds a `training.Stage` (the model, its loss, its batches, its learning rates,
how it writes samples and what it does when it ends) and hands it to the one loop,
`training.train_stage`. `start_run` prepares a run directory and `train_unfinished` runs one stage
of it unless it is finished; train.py calls them in order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .attention import both_ways
from .config import Config, DataConfig
from .data import StepBatchSampler, VideoDataset, collate_clips, frame_rates, make_loader, video_to_frames
from .diffusion import GaussianDiffusion, clip_windows
from .distributed import BatchShare, rand, this_process
from .media import draw_image_grid, draw_reconstructions, save_video, tile_clips
from .metrics import flicker, psnr
from .models import load_image_model, load_vae, text_to_image_model, text_to_interp_model, text_to_video_model
from .pipeline import TextToVideo, fill_between
from .presets import preset_default
from .runs import (STAGE_INPUTS, WEIGHTS_FILES, check_built_on, checkpoint_step, continue_run, dependent_stages,
                   inputs_of, remove_stages, train_command, write_text_atomically)
from .text import prompt_words
from .training import Stage, read_log, stage_seed, train_stage, write_log
from .unet3d import UNet3D, set_trainable
from .vae import AutoencoderKL, VideoVAE, measure_scaling_factor
from .videos import CachedVideos

SAMPLE_PROMPTS = ("a red circle moving left", "a green square moving up", "a blue triangle moving right",
                  "a yellow ball sliding down", "a magenta box going left", "a cyan triangle drifting up",
                  "a white disc gliding right", "a green triangle moving up")


# ---------------------------------------------------------------------------------------------
# What the stages share.


def fixed_clips(data: DataConfig, split: str, count: int) -> dict:
    """The same `count` clips of `split` every time, collated: video (count, 3, T, H, W), caption, fps."""
    dataset = VideoDataset(data, split, num_clips=count)
    return collate_clips([dataset[i] for i in range(count)])


def single_frame_data(data: DataConfig) -> DataConfig:
    """The data of the image stages (vae, image): clips of one frame, the object anywhere in the
    frame, captions as for clips; a fraction 1 / num_frames of the rendering of whole clips."""
    return dataclasses.replace(data, num_frames=1)


def training_batches(data: DataConfig, batch_size: int, start_step: int, num_steps: int):
    """The training clips' batches for steps start_step .. num_steps - 1: this process's share of each
    (all of it without torchrun)."""
    process = this_process()
    return make_loader(data, "train", batch_size, start_step=start_step, num_steps=num_steps, rank=process.rank,
                       world_size=process.world_size)


def sample_prompts(config: Config) -> list[str]:
    """The prompts of the stages' sample files: SAMPLE_PROMPTS for the moving shapes; for real video,
    eight captions of validation videos (their distinct captions in order, repeated to eight)."""
    if config.data.source == "shapes":
        return list(SAMPLE_PROMPTS)
    captions = sorted({video["caption"] for video in CachedVideos(config.data).videos_of("val")})
    return [captions[i % len(captions)] for i in range(len(SAMPLE_PROMPTS))]


def drop_captions(captions: list[str], config: Config, generator: torch.Generator | BatchShare,
                  device: torch.device) -> list[str]:
    """Classifier-free guidance: each caption becomes "" with probability diffusion.text_drop_prob."""
    dropped = rand((len(captions),), generator, device=device) < config.diffusion.text_drop_prob
    return ["" if drop else caption for drop, caption in zip(dropped.tolist(), captions)]


def encode_training_frames(vae: AutoencoderKL, config: Config,
                           device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """Every training frame's scaled latent, (N, 4, 1, h, w) on `device`, and its caption, made once
    when the image stage starts: the VAE is frozen and the image stage trains on its posterior mean,
    so a frame encoded each time a batch draws it would give the same latent, and the batches index
    this tensor. Encoded in the same batches every time, so a resumed stage sees the same latents."""
    latents, captions = [], []
    loader = make_loader(single_frame_data(config.data), "train", config.train.batch_size)  # one pass, in order
    with torch.no_grad():
        for batch in tqdm(loader, desc="stage image: encoding the training frames", dynamic_ncols=True,
                          disable=not this_process().is_main):
            latents.append(vae.encode_video(batch["video"].to(device)))  # (B, 3, 1, H, W) -> (B, 4, 1, h, w)
            captions += batch["caption"]
    return torch.cat(latents), captions


def inflated_model(config: Config, run_dir: Path, device: torch.device,
                   inflate: Callable[[nn.ModuleDict, Config], nn.ModuleDict]) -> tuple[AutoencoderKL, nn.ModuleDict]:
    """What the video and interp stages start from: the frozen VAE, and the image stage's model (its
    EMA weights) inflated by `inflate`, its weights trainable as unet.video_trainable says."""
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = inflate(load_image_model(run_dir, device), config)
    set_trainable(model["unet"], config.unet.video_trainable)
    model["text_encoder"].requires_grad_(config.unet.video_trainable == "all")
    if config.train.compile:
        model["unet"].compile()  # in place: the weights' names stay those of the module
    return vae, model


def inflated_rates(config: Config, unet: UNet3D, new: frozenset[str] = frozenset()) -> dict:
    """Stage(learning_rates=..., rate_option=...) of a stage that trains an inflated U-Net: the layers
    inflation added (and `new`, more parameter names) at train.video_learning_rate; with
    video_trainable all, the reused image weights and the text encoder at train.video_reused_learning_rate."""
    new_layers = {f"unet.{name}" for name in unet.video_parameter_names()} | set(new)
    rates = {"train.video_learning_rate": config.train.video_learning_rate,
             "train.video_reused_learning_rate": config.train.video_reused_learning_rate}
    return {"learning_rates": rates, "rate_option": lambda name: ("train.video_learning_rate" if name in new_layers
                                                                   else "train.video_reused_learning_rate")}


# ---------------------------------------------------------------------------------------------
# The stages, in training order.


def vae_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = AutoencoderKL(config.vae)
    preview = fixed_clips(config.data, "val", 8)["video"].to(device)

    def loss(batch: dict, generator: torch.Generator):
        frames = batch["video"].to(device)[:, :, 0]  # (B, 3, 1, H, W) -> (B, 3, H, W)
        return vae.loss(frames, generator)

    def write_samples(ema_vae: AutoencoderKL, step: int) -> None:
        """A GIF of 8 validation clips, originals above their reconstructions."""
        clips = video_to_frames(torch.cat([preview, ema_vae.reconstruct_video(preview)]))  # (2B, T, H, W, 3)
        save_video(tile_clips(clips, columns=len(preview)), run_dir / "samples" / f"vae_{step:06d}.gif")

    def finish(ema_vae: AutoencoderKL) -> None:
        """Measure the scaling factor and store it in config.json (before vae.pt, the stage's last
        file: a kill in between leaves the stage unfinished, and a resume measures it again); print
        the reconstruction PSNR and draw the reconstructions."""
        train_frames = fixed_clips(config.data, "train", 64)["video"].to(device).transpose(1, 2).flatten(0, 1)
        generator = torch.Generator(device).manual_seed(stage_seed(config.seed, "vae"))
        config.vae.scaling_factor = measure_scaling_factor(ema_vae, train_frames, generator)
        write_text_atomically(run_dir / "config.json", config.to_json())
        val_frames = fixed_clips(config.data, "val", 64)["video"].to(device)[:, :, 0]  # first frames (64, 3, H, W)
        reconstructed = ema_vae.decode(ema_vae.encode(val_frames).mean).clamp(-1, 1)
        print(f"stage vae: scaling factor {config.vae.scaling_factor:.4f}; reconstruction PSNR on 64 "
              f"validation frames {psnr(reconstructed, val_frames):.2f} dB")
        draw_reconstructions(val_frames[:8], reconstructed[:8], run_dir / "vae_reconstructions.png")

    return Stage(name="vae", model=vae, loss=loss, num_steps=config.train.vae_steps,
                 batches=lambda start: training_batches(single_frame_data(config.data), config.train.batch_size,
                                                        start, config.train.vae_steps),
                 learning_rates={"train.vae_learning_rate": config.train.vae_learning_rate},
                 write_samples=write_samples, finish=finish)


def image_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = text_to_image_model(config)
    text_encoder, unet = model["text_encoder"], model["unet"]
    diffusion, prompts = GaussianDiffusion(config.diffusion), sample_prompts(config)
    if config.train.compile:
        unet.compile()  # in place: the weights' names stay those of the module

    def batches(start_step: int):
        if start_step >= config.train.image_steps:
            return
        latents, captions = encode_training_frames(vae, config, device)
        process = this_process()
        for indices in StepBatchSampler(len(captions), config.train.batch_size, start_step,
                                        config.train.image_steps, process.rank, process.world_size):
            yield {"latents": latents[indices], "caption": [captions[i] for i in indices]}

    def loss(batch: dict, generator: torch.Generator):
        context, mask = text_encoder(drop_captions(batch["caption"], config, generator, device))
        return diffusion.training_loss(lambda x, t: unet(x, t, context, mask), batch["latents"], generator), {}

    def write_samples(ema_model: nn.ModuleDict, step: int) -> None:
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config)
        images = pipeline(prompts, seed=0).frames[:, 0]  # (N, H, W, 3)
        draw_image_grid(images, prompts, run_dir / "samples" / f"image_{step:06d}.png")

    def finish(ema_model: nn.ModuleDict) -> None:
        print(f"stage image: samples in {run_dir / 'samples'}; measure with "
              f"python benchmarks/image_quality.py --run {run_dir}")

    return Stage(name="image", model=model, loss=loss, batches=batches, num_steps=config.train.image_steps,
                 learning_rates={"train.learning_rate": config.train.learning_rate},
                 write_samples=write_samples, finish=finish)


def video_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae, model = inflated_model(config, run_dir, device, text_to_video_model)
    text_encoder, unet = model["text_encoder"], model["unet"]
    diffusion, prompts = GaussianDiffusion(config.diffusion), sample_prompts(config)
    # the samples' low steps (diffusion.image_model_below) are the image stage's model's: a copy, as
    # the video stage trains the one it inflated
    expert = load_image_model(run_dir, device)

    def loss(batch: dict, generator: torch.Generator):
        video, fps = batch["video"].to(device), batch["fps"].to(device)  # (B, 3, T, H, W), (B,)
        with torch.no_grad():
            latents = vae.encode_video(video)  # (B, 4, T, h, w)
        context, mask = text_encoder(drop_captions(batch["caption"], config, generator, device))
        if config.train.video_twin_clips:  # each clip clean beside its noisy twin (diffusion.past_frames clean)
            return diffusion.twin_training_loss(lambda x, t, **layout: unet(x, t, context, mask, fps=fps, **layout),
                                                latents, generator, config.train.video_t_min,
                                                config.train.video_frame1_weight), {}
        return diffusion.training_loss(lambda x, t: unet(x, t, context, mask, fps=fps), latents, generator,
                                       config.train.video_t_min), {}

    def write_samples(ema_model: nn.ModuleDict, step: int) -> None:
        """samples/video_<step>.gif: the fixed prompts, one row per frame rate the run trains on."""
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config, expert)
        clips = np.concatenate([pipeline(prompts, fps=fps, seed=0).frames for fps in frame_rates(config.data)])
        save_video(tile_clips(clips, columns=len(prompts)), run_dir / "samples" / f"video_{step:06d}.gif",
                   fps=config.data.fps)

    def finish(ema_model: nn.ModuleDict) -> None:
        print(f"stage video: samples in {run_dir / 'samples'}; measure with "
              f"python benchmarks/video_quality.py --run {run_dir}; sample with "
              f"python sample.py --run {run_dir} --prompt \"{prompts[0]}\"")

    return Stage(name="video", model=model, loss=loss, num_steps=config.train.video_steps,
                 batches=lambda start: training_batches(config.data, config.train.video_batch_size, start,
                                                        config.train.video_steps),
                 **inflated_rates(config, unet), write_samples=write_samples, finish=finish)


def videovae_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    image_vae = load_vae(run_dir, device)
    video_vae = VideoVAE.from_image(image_vae)  # frozen encoder, decoder = image decoder + temporal
    preview = fixed_clips(config.data, "val", 8)["video"].to(device)
    with torch.no_grad():
        preview_image_decoder = image_vae.reconstruct_video(preview)

    def write_samples(ema_vae: VideoVAE, step: int) -> None:
        """A GIF of 8 validation clips: originals, image decoder, VideoVAE, top to bottom."""
        clips = torch.cat([preview, preview_image_decoder, ema_vae.reconstruct_video(preview)])
        save_video(tile_clips(video_to_frames(clips), columns=len(preview)),
                   run_dir / "samples" / f"videovae_{step:06d}.gif", fps=config.data.fps)

    def finish(ema_vae: VideoVAE) -> None:
        clips = fixed_clips(config.data, "val", 32)["video"].to(device)
        by_frame, by_clip = image_vae.reconstruct_video(clips), ema_vae.reconstruct_video(clips)
        print(f"stage videovae: on 32 validation clips, flicker {flicker(by_frame, clips):.5f} (image decoder) "
              f"-> {flicker(by_clip, clips):.5f} (VideoVAE), PSNR {psnr(by_frame, clips):.2f} -> "
              f"{psnr(by_clip, clips):.2f} dB; measure with python benchmarks/videovae_quality.py --run {run_dir}")

    return Stage(name="videovae", model=video_vae, num_steps=config.train.videovae_steps,
                 loss=lambda batch, generator: video_vae.video_loss(batch["video"].to(device)),
                 batches=lambda start: training_batches(config.data, config.train.video_batch_size, start,
                                                        config.train.videovae_steps),
                 learning_rates={"train.vae_learning_rate": config.train.vae_learning_rate},
                 write_samples=write_samples, finish=finish)


def interp_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae, model = inflated_model(config, run_dir, device, text_to_interp_model)
    text_encoder, unet = model["text_encoder"], model["unet"]
    unet.conv_in.requires_grad_(True)  # its new input channels read the keyframes
    diffusion, strides = GaussianDiffusion(config.diffusion), config.train.interp_strides
    # samples: validation clips at the highest trained rate, the one sampling fills up to by default
    fastest = dataclasses.replace(config.data, frame_strides=(min(config.data.frame_strides),))
    preview = fixed_clips(fastest, "val", 8)
    preview_fps = max(frame_rates(config.data))

    def batches(start_step: int):
        loader = training_batches(config.data, config.train.video_batch_size, start_step, config.train.interp_steps)
        for step, batch in enumerate(loader, start=start_step):
            yield {**batch, "stride": strides[step % len(strides)]}  # one S a step, in turn

    def loss(batch: dict, generator: torch.Generator):
        video, fps, stride = batch["video"].to(device), batch["fps"].to(device), batch["stride"]
        with torch.no_grad():
            windows = clip_windows(vae.encode_video(video), stride)  # (B*n, 4, S+1, h, w), n windows a clip
        per_clip = len(windows) // len(video)
        context, mask = text_encoder(drop_captions(batch["caption"], config, generator, device))
        every_frame = both_ways(stride + 1, device)
        return diffusion.interpolation_loss(  # a window: its clip's text and frame rate
            lambda x, t: unet(x, t, context.repeat_interleave(per_clip, 0), mask.repeat_interleave(per_clip, 0),
                              fps=fps.repeat_interleave(per_clip), attention_mask=every_frame), windows, generator), {}

    def write_samples(ema_model: nn.ModuleDict, step: int) -> None:
        """samples/interp_<step>.gif: 8 validation clips above the same clips' every S-th frame with the
        frames between filled, S the first of train.interp_strides."""
        stride, clips = strides[0], preview["video"].to(device)  # (8, 3, T, H, W)
        count = (config.data.num_frames - 1) // stride * stride + 1  # frames from the first keyframe to the last
        keyframes = vae.encode_video(clips[:, :, :count:stride])
        filled = fill_between(ema_model, diffusion, keyframes, preview["caption"], stride, preview_fps,
                              config.diffusion.guidance_scale, config.diffusion.num_inference_steps,
                              torch.Generator(device).manual_seed(0))
        frames = video_to_frames(torch.cat([clips[:, :, :count], vae.decode_video(filled).clamp(-1, 1)]))
        save_video(tile_clips(frames, columns=len(clips)), run_dir / "samples" / f"interp_{step:06d}.gif",
                   fps=preview_fps)

    def finish(ema_model: nn.ModuleDict) -> None:
        print(f"stage interp: samples in {run_dir / 'samples'}; measure with python benchmarks/interpolation.py "
              f"--run {run_dir}; sample with python sample.py --run {run_dir} --interpolate {strides[0]} "
              f"--prompt \"{sample_prompts(config)[0]}\"")

    # as in the video stage, with conv_in (it has new input channels) among the new layers
    return Stage(name="interp", model=model, loss=loss, batches=batches, num_steps=config.train.interp_steps,
                 **inflated_rates(config, unet, frozenset({"unet.conv_in.weight"})),
                 write_samples=write_samples, finish=finish)


STAGES = {"vae": vae_stage, "image": image_stage, "video": video_stage, "videovae": videovae_stage,
          "interp": interp_stage}


# ---------------------------------------------------------------------------------------------
# A run: prepared once, then each unfinished stage in turn.


def start_run(config: Config, run_dir: Path, device: torch.device, retrain: tuple[str, ...] = ()) -> Config:
    """Prepare runs/<name>/ (process 0's job): the config to continue it with (runs.continue_run),
    the vocabulary of real video's captions, the stages to retrain removed, config.json written, and
    samples/data.gif, the data it learns from (for real video, this builds the frame cache)."""
    config = with_vocabulary(continue_run(run_dir, config))
    if retrain:
        retrained = dependent_stages(retrain)
        removed = remove_stages(run_dir, retrained)
        write_log(run_dir, [row for row in read_log(run_dir) if row["stage"] not in retrained])
        print(f"retraining {', '.join(retrained)}: removed {', '.join(removed) or 'no files (not started)'}")
    write_text_atomically(run_dir / "config.json", config.to_json())
    processes = this_process().world_size
    print(f"run {run_dir} (preset {config.preset}, device {device}, {processes} process"
          f"{'es' if processes > 1 else ''}): {config.data.num_frames} frames of "
          f"{config.data.image_size}x{config.data.image_size}")
    dataset = VideoDataset(config.data, "train")
    clips = np.stack([dataset.clip(i)[0] for i in range(16)])
    save_video(tile_clips(clips, columns=4), run_dir / "samples" / "data.gif")
    return config


def with_vocabulary(config: Config) -> Config:
    """Real video: text.vocabulary becomes the training captions' words, once, when the run starts,
    and config.json keeps it, so that sampling reads prompts with the same words. The moving shapes'
    captions come from a grammar whose words the tokenizer already knows."""
    if config.data.source == "shapes" or config.text.vocabulary:
        return config
    captions = CachedVideos(config.data).captions("train")
    words = tuple(sorted({word for caption in captions for word in prompt_words(caption)}))
    print(f"text.vocabulary: {len(words)} words from the captions of {config.data.root}")
    return dataclasses.replace(config, text=dataclasses.replace(config.text, vocabulary=words))


def train_unfinished(name: str, config: Config, run_dir: Path, device: torch.device) -> None:
    """Train stage `name` of the run, resuming it, unless it is finished or has 0 steps; its initial
    weights and noise seeded from (run seed, stage name) alone, whatever ran before it."""
    weights, steps = run_dir / WEIGHTS_FILES[name], getattr(config.train, f"{name}_steps")
    if steps == 0:
        print(f"stage {name}: skipped (train.{name}_steps 0)")
        return
    if weights.is_file():  # built on weights that have changed since?
        check_built_on(run_dir, name, weights)
    if checkpoint_step(weights) >= steps:
        print(f"stage {name}: finished ({weights}, step {checkpoint_step(weights)}); raise "
              f"--train.{name}_steps to train on")
        return
    skipped = [stage for stage in STAGE_INPUTS[name] if getattr(config.train, f"{stage}_steps") == 0
               and not (run_dir / WEIGHTS_FILES[stage]).is_file()]
    if skipped:  # the next check would say "not finished" and suggest a command that skips it again
        option = f"train.{skipped[0]}_steps"
        raise ValueError(f"stage {name} is built on the {skipped[0]} stage, which {run_dir} has not trained: "
                         f"its config.json keeps {option} 0; train it with "
                         f"{train_command(run_dir, f'--{option}', str(preset_default(config.preset, option)))}")
    inputs_of(run_dir, name)  # every stage it is built on is finished, or a clear error
    torch.manual_seed(stage_seed(config.seed, name))  # its initial weights, whatever ran before
    train_stage(STAGES[name](config, run_dir, device), config, run_dir, device)
