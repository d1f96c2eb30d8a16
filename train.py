"""Train tiny-magicvideo: python train.py [--preset P] [--stage S] [--section.key value ...]

Runs, in order, every stage that runs/<name>/ does not yet hold finished, resuming an interrupted
one from its last checkpoint: vae -> image -> video -> videovae -> interp. `--stage S` runs one. An
existing run takes its settings from its own config.json, so `python train.py --name NAME` continues
it; one train.py at a time holds a run (runs/<name>/lock).

Several processes, one per GPU (or CPU processes, gloo):

    torchrun --nproc_per_node N train.py [options]

Each process takes 1/N of every step's batch (train.batch_size and train.video_batch_size stay the
global batch, divisible by N) and DistributedDataParallel averages the gradients, so the weights are
those of one process; process 0 writes every file. A run may resume with another N. Several
machines (not tested here): torchrun --nnodes M --node_rank I --rdzv_backend c10d --rdzv_endpoint
HOST:PORT --nproc_per_node N train.py [options] on each, runs/ on a disk they share.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import typing
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from tiny_magicvideo.config import Config, DataConfig, parse_config
from tiny_magicvideo.data import (StepBatchSampler, VideoDataset, check_data_config, frame_rates, make_loader,
                                  video_to_frames)
from tiny_magicvideo.attention import both_ways
from tiny_magicvideo.diffusion import GaussianDiffusion, clip_windows
from tiny_magicvideo.layers import BatchShare, rand
from tiny_magicvideo.metrics import flicker, psnr
from tiny_magicvideo.pipeline import TextToVideo, fill_between, save_video, tile_clips
from tiny_magicvideo.runs import (STAGE_ORDER, WEIGHTS_FILES, RunInUse, RunLock, check_built_on,
                                  checkpoint_step, continue_run, dependent_stages, existing_run_config,
                                  inputs_of, load_image_model, load_run_config, load_vae, remove_stages,
                                  resolve_device, stale_stages, text_to_image_model, text_to_interp_model,
                                  text_to_video_model, train_command, write_text_atomically)
from tiny_magicvideo.text import prompt_words
from tiny_magicvideo.training import (Stage, TrainingDiverged, read_log, stage_seed, this_process, train_stage,
                                      wait_for_every_process, write_log)
from tiny_magicvideo.unet3d import set_trainable
from tiny_magicvideo.vae import AutoencoderKL, VideoVAE, measure_scaling_factor
from tiny_magicvideo.videos import VideoFiles


def fixed_clips(config: Config, split: str, count: int) -> torch.Tensor:
    """The same `count` clips of `split` every time: (count, 3, T, H, W)."""
    dataset = VideoDataset(config.data, split, num_clips=count)
    return torch.stack([dataset[i]["video"] for i in range(count)])


def training_batches(data: DataConfig, batch_size: int, start_step: int, num_steps: int):
    """The training clips' batches for steps start_step .. num_steps - 1: this process's share of each
    (all of it without torchrun)."""
    process = this_process()
    return make_loader(data, "train", batch_size, start_step=start_step, num_steps=num_steps, rank=process.rank,
                       world_size=process.world_size)


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
        return training_batches(single_frames(config.data), config.train.batch_size, start_step,
                                config.train.vae_steps)

    def loss(batch: dict, generator: torch.Generator):
        frames = batch["video"].to(device)[:, :, 0]  # (B, 3, 1, H, W) -> (B, 3, H, W)
        return vae.loss(frames, generator)

    def write_samples(ema_vae: AutoencoderKL, step: int) -> None:
        """A GIF of 8 validation clips, originals above their reconstructions."""
        reconstructed = ema_vae.reconstruct_video(preview)  # (B, 3, T, H, W)
        clips = video_to_frames(torch.cat([preview, reconstructed]))  # (2B, T, H, W, 3)
        save_video(tile_clips(clips, columns=len(preview)), run_dir / "samples" / f"vae_{step:06d}.gif")

    def finish(ema_vae: AutoencoderKL) -> None:
        """Measure the scaling factor and store it in config.json (before vae.pt, the stage's last
        file: a kill in between leaves the stage unfinished, and a resume measures it again)."""
        train_frames = fixed_clips(config, "train", 64).to(device).transpose(1, 2).flatten(0, 1)
        generator = torch.Generator(device).manual_seed(stage_seed(config.seed, "vae"))
        config.vae.scaling_factor = measure_scaling_factor(ema_vae, train_frames, generator)
        write_text_atomically(run_dir / "config.json", config.to_json())
        report_vae(ema_vae, config, run_dir, device)

    return Stage("vae", vae, loss, batches, config.train.vae_steps,
                 {"train.vae_learning_rate": config.train.vae_learning_rate}, write_samples=write_samples,
                 finish=finish)


def report_vae(vae: AutoencoderKL, config: Config, run_dir: Path, device: torch.device) -> None:
    """Print the reconstruction PSNR and draw the reconstruction grid."""
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


def sample_prompts(config: Config) -> list[str]:
    """The prompts of the stages' sample files: SAMPLE_PROMPTS for the moving shapes; for real video,
    eight captions of validation videos (their distinct captions in order, repeated to eight)."""
    if config.data.source == "shapes":
        return list(SAMPLE_PROMPTS)
    captions = sorted({video["caption"] for video in VideoFiles(config.data).videos_of("val")})
    return [captions[i % len(captions)] for i in range(len(SAMPLE_PROMPTS))]


def drop_captions(captions: list[str], config: Config, generator: torch.Generator | BatchShare,
                  device: torch.device) -> list[str]:
    """Classifier-free guidance: each caption becomes "" with probability diffusion.text_drop_prob."""
    dropped = rand((len(captions),), generator, device=device) < config.diffusion.text_drop_prob
    return ["" if drop else caption for drop, caption in zip(dropped.tolist(), captions)]


def encode_training_frames(vae: AutoencoderKL, config: Config,
                           device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """Every training frame's scaled latent, (N, 4, 1, h, w) on `device`, and its caption, made once
    when the image stage starts. The VAE is frozen and the image stage trains on its posterior mean,
    so a frame encoded again each time a batch draws it (6.4 times in the cpu preset: 4,000 steps of
    32 frames from 20,000) would give the same latent; the batches then index this tensor. Encoded in
    the same batches every time, so a resumed stage sees the latents an uninterrupted one sees."""
    latents, captions = [], []
    loader = make_loader(single_frames(config.data), "train", config.train.batch_size)  # one pass, in order
    with torch.no_grad():
        for batch in tqdm(loader, desc="stage image: encoding the training frames", dynamic_ncols=True,
                          disable=not this_process().is_main):
            latents.append(vae.encode_video(batch["video"].to(device)))  # (B, 3, 1, H, W) -> (B, 4, 1, h, w)
            captions += batch["caption"]
    return torch.cat(latents), captions


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

    def write_samples(ema_model: torch.nn.ModuleDict, step: int) -> None:
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config)
        images = pipeline(prompts, seed=0).frames[:, 0]  # (N, H, W, 3)
        draw_image_grid(images, prompts, run_dir / "samples" / f"image_{step:06d}.png")

    def finish(ema_model: torch.nn.ModuleDict) -> None:
        print(f"stage image: samples in {run_dir / 'samples'}; measure with "
              f"python benchmarks/image_quality.py --run {run_dir}")

    return Stage("image", model, loss, batches, config.train.image_steps,
                 {"train.learning_rate": config.train.learning_rate}, write_samples=write_samples, finish=finish)


def draw_image_grid(images: np.ndarray, titles, path: Path, columns: int = 4) -> None:
    from matplotlib.figure import Figure

    rows = -(-len(images) // columns)
    figure = Figure(figsize=(2.2 * columns, 2.5 * rows), layout="constrained")
    for axis, image, title in zip(figure.subplots(rows, columns, squeeze=False).flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=7)
        axis.axis("off")
    figure.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------
# Stage video: the image U-Net inflated (frame adaptors, temporal attention, frame rate) on clips.


def video_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = text_to_video_model(load_image_model(run_dir, device), config)  # the image stage's EMA weights
    text_encoder, unet = model["text_encoder"], model["unet"]
    prompts = sample_prompts(config)
    trainable = config.unet.video_trainable
    set_trainable(unet, trainable)
    text_encoder.requires_grad_(trainable == "all")
    if config.train.compile:
        unet.compile()
    diffusion = GaussianDiffusion(config.diffusion)
    # for the samples' low steps (diffusion.image_model_below): a copy of the image stage's model, as the
    # video stage trains the one it inflated
    expert = load_image_model(run_dir, device)

    def batches(start_step: int):
        return training_batches(config.data, config.train.video_batch_size, start_step, config.train.video_steps)

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

    def write_samples(ema_model: torch.nn.ModuleDict, step: int) -> None:
        """samples/video_<step>.gif: the fixed prompts, one row per frame rate the run trains on."""
        pipeline = TextToVideo(vae, ema_model["text_encoder"], ema_model["unet"], config, expert)
        clips = np.concatenate([pipeline(prompts, fps=fps, seed=0).frames for fps in frame_rates(config.data)])
        save_video(tile_clips(clips, columns=len(prompts)), run_dir / "samples" / f"video_{step:06d}.gif",
                   fps=config.data.fps)

    def finish(ema_model: torch.nn.ModuleDict) -> None:
        print(f"stage video: samples in {run_dir / 'samples'}; measure with "
              f"python benchmarks/video_quality.py --run {run_dir}; sample with "
              f"python sample.py --run {run_dir} --prompt \"{prompts[0]}\"")

    return Stage("video", model, loss, batches, config.train.video_steps, *inflated_rates(config, unet),
                 write_samples=write_samples, finish=finish)


def inflated_rates(config: Config, unet, new: frozenset[str] = frozenset()
                   ) -> tuple[dict, typing.Callable[[str], str]]:
    """(learning_rates, rate_option) of a stage that trains an inflated U-Net: the layers inflation
    added (and `new`, more parameter names) at train.video_learning_rate; with video_trainable all,
    the reused image weights and the text encoder at train.video_reused_learning_rate."""
    new_layers = {f"unet.{name}" for name in unet.video_parameter_names()} | set(new)
    rates = {"train.video_learning_rate": config.train.video_learning_rate,
             "train.video_reused_learning_rate": config.train.video_reused_learning_rate}
    return rates, lambda name: ("train.video_learning_rate" if name in new_layers
                                else "train.video_reused_learning_rate")


# ---------------------------------------------------------------------------------------------
# Stage videovae: the image VAE's decoder with temporal layers, fine-tuned on clips, encoder frozen.


def videovae_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    image_vae = load_vae(run_dir, device)
    video_vae = VideoVAE.from_image(image_vae)  # frozen encoder, decoder = image decoder + temporal
    preview = fixed_clips(config, "val", 8).to(device)
    with torch.no_grad():
        preview_image_decoder = image_vae.reconstruct_video(preview)

    def batches(start_step: int):
        return training_batches(config.data, config.train.video_batch_size, start_step,
                                config.train.videovae_steps)

    def loss(batch: dict, generator: torch.Generator):
        return video_vae.video_loss(batch["video"].to(device))

    def write_samples(ema_vae: VideoVAE, step: int) -> None:
        """A GIF of 8 validation clips: originals, image decoder, VideoVAE, top to bottom."""
        clips = torch.cat([preview, preview_image_decoder, ema_vae.reconstruct_video(preview)])
        save_video(tile_clips(video_to_frames(clips), columns=len(preview)),
                   run_dir / "samples" / f"videovae_{step:06d}.gif", fps=config.data.fps)

    def finish(ema_vae: VideoVAE) -> None:
        clips = fixed_clips(config, "val", 32).to(device)
        by_frame, by_clip = image_vae.reconstruct_video(clips), ema_vae.reconstruct_video(clips)
        print(f"stage videovae: on 32 validation clips, flicker {flicker(by_frame, clips):.5f} (image decoder) "
              f"-> {flicker(by_clip, clips):.5f} (VideoVAE), PSNR {psnr(by_frame, clips):.2f} -> "
              f"{psnr(by_clip, clips):.2f} dB; measure with python benchmarks/videovae_quality.py --run {run_dir}")

    return Stage("videovae", video_vae, loss, batches, config.train.videovae_steps,
                 {"train.vae_learning_rate": config.train.vae_learning_rate}, write_samples=write_samples,
                 finish=finish)


# ---------------------------------------------------------------------------------------------
# Stage interp: the image U-Net inflated again, the keyframes beside the noisy latents, fills frames.


def interp_stage(config: Config, run_dir: Path, device: torch.device) -> Stage:
    vae = load_vae(run_dir, device).requires_grad_(False)
    model = text_to_interp_model(load_image_model(run_dir, device), config)  # the image stage's EMA weights
    text_encoder, unet = model["text_encoder"], model["unet"]
    trainable = config.unet.video_trainable
    set_trainable(unet, trainable)
    unet.conv_in.requires_grad_(True)  # its new input channels read the keyframes
    text_encoder.requires_grad_(trainable == "all")
    if config.train.compile:
        unet.compile()
    diffusion, strides = GaussianDiffusion(config.diffusion), config.train.interp_strides
    # samples: validation clips at the highest trained rate, the one sampling fills up to by default
    fastest = dataclasses.replace(config.data, frame_strides=(min(config.data.frame_strides),))
    dataset = VideoDataset(fastest, "val", num_clips=8)
    preview = torch.stack([dataset[i]["video"] for i in range(8)]).to(device)  # (8, 3, T, H, W)
    preview_captions, preview_fps = [dataset[i]["caption"] for i in range(8)], max(frame_rates(config.data))

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

    def write_samples(ema_model: torch.nn.ModuleDict, step: int) -> None:
        """samples/interp_<step>.gif: 8 validation clips above the same clips' every S-th frame with the
        frames between filled, S the first of train.interp_strides."""
        stride = strides[0]
        count = (config.data.num_frames - 1) // stride * stride + 1  # frames from the first keyframe to the last
        keyframes = vae.encode_video(preview[:, :, :count:stride])
        filled = fill_between(ema_model, diffusion, keyframes, preview_captions, stride, preview_fps,
                              config.diffusion.guidance_scale, config.diffusion.num_inference_steps,
                              torch.Generator(device).manual_seed(0))
        clips = video_to_frames(torch.cat([preview[:, :, :count], vae.decode_video(filled).clamp(-1, 1)]))
        save_video(tile_clips(clips, columns=len(preview)), run_dir / "samples" / f"interp_{step:06d}.gif",
                   fps=preview_fps)

    def finish(ema_model: torch.nn.ModuleDict) -> None:
        print(f"stage interp: samples in {run_dir / 'samples'}; measure with python benchmarks/interpolation.py "
              f"--run {run_dir}; sample with python sample.py --run {run_dir} --interpolate {strides[0]} "
              f"--prompt \"{sample_prompts(config)[0]}\"")

    # as in the video stage, with conv_in (it has new input channels) among the new layers
    return Stage("interp", model, loss, batches, config.train.interp_steps,
                 *inflated_rates(config, unet, frozenset({"unet.conv_in.weight"})),
                 write_samples=write_samples, finish=finish)


# ---------------------------------------------------------------------------------------------


def stage_steps(config: Config, name: str) -> int:
    return getattr(config.train, f"{name}_steps")


def main(argv: list[str] | None = None) -> Path:
    """Train the run's unfinished stages; a bad option, file or state ends it with one line."""
    try:
        config, args = parse_config(argv, description=__doc__.splitlines()[0], extra_arguments=add_arguments,
                                    existing_run=existing_run_config)
        check_data_config(config.data)
        check_video_options(config)
        device = join_processes(resolve_device(config.device))
        if device.type == "cuda":  # float32 matmuls and convolutions on tensor cores (TF32, 10-bit mantissa)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        run_dir = Path(config.runs_dir) / config.name
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) if this_process().is_main else contextlib.nullcontext():
            train_run(config, args, run_dir, device)
    except (ValueError, OSError, RunInUse, TrainingDiverged) as error:
        sys.exit(f"error: {error}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return run_dir


def join_processes(device: torch.device) -> torch.device:
    """Under torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK), join its process group: NCCL
    between GPUs, one per process (cuda:LOCAL_RANK), gloo between CPU processes; processes other than
    0 print nothing (their errors still reach stderr). Returns the device this process trains on."""
    if "RANK" not in os.environ:
        return device
    if device.type == "mps":
        raise ValueError("torchrun does not run on mps here (no process group backend for it); use --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not this_process().is_main:
        sys.stdout = open(os.devnull, "w")
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog, parser.formatter_class = __doc__.split("\n\n", 1)[1], argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stage", choices=STAGE_ORDER, default=None,
                        help="run only this stage (default: every unfinished stage, in order)")
    parser.add_argument("--retrain", type=stage_list, default=(), metavar="STAGE,...",
                        help="delete these stages' weights and checkpoints, and those of every stage built "
                             "on them, and train them anew")


def stage_list(text: str) -> tuple[str, ...]:
    stages = tuple(text.split(",")) if text else ()
    unknown = [stage for stage in stages if stage not in STAGE_ORDER]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGE_ORDER)}")
    return stages


def check_video_options(config: Config) -> None:
    """The video stage's options that only make sense together: checked here, not an hour in."""
    # sampling beside clean finished frames is what twin clips train for, and twin clips are how it is trained
    if config.train.video_twin_clips and config.diffusion.past_frames != "clean":
        raise ValueError("train.video_twin_clips trains on clean past frames, but diffusion.past_frames "
                         f"is {config.diffusion.past_frames!r}; add --diffusion.past_frames clean")
    if config.diffusion.past_frames == "clean" and not config.train.video_twin_clips:
        raise ValueError("diffusion.past_frames clean samples each frame beside clean finished ones, which the "
                         "video stage trains for with twin clips; add --train.video_twin_clips true")
    frame1_weight = config.train.video_frame1_weight
    if frame1_weight != 1.0 and not config.train.video_twin_clips:
        raise ValueError(f"train.video_frame1_weight {frame1_weight} weighs the twin clips' frame 1; "
                         "add --train.video_twin_clips true, or drop it")
    if frame1_weight <= 0:
        raise ValueError(f"train.video_frame1_weight {frame1_weight} must be positive; 1 weighs every frame alike")


def train_run(config: Config, args: argparse.Namespace, run_dir: Path, device: torch.device) -> None:
    """Inside the run's lock: every unfinished stage (or --stage), each seeded on its own. Under
    torchrun, process 0 prepares the run and the others then read its config.json."""
    process = this_process()
    if process.is_main:
        config = with_vocabulary(continue_run(run_dir, config))
        if args.retrain:
            retrained = dependent_stages(args.retrain)
            removed = remove_stages(run_dir, retrained)
            write_log(run_dir, [row for row in read_log(run_dir) if row["stage"] not in retrained])
            print(f"retraining {', '.join(retrained)}: removed {', '.join(removed) or 'no files (not started)'}")
        write_text_atomically(run_dir / "config.json", config.to_json())
        print(f"run {run_dir} (preset {config.preset}, device {device}, {process.world_size} process"
              f"{'es' if process.world_size > 1 else ''}): {config.data.num_frames} frames of "
              f"{config.data.image_size}x{config.data.image_size}")
        show_training_data(config, run_dir)  # (for real video, this builds the frame cache)
    wait_for_every_process()

    stages = {"vae": vae_stage, "image": image_stage, "video": video_stage, "videovae": videovae_stage,
              "interp": interp_stage}
    for name in [args.stage] if args.stage else STAGE_ORDER:
        if not process.is_main:  # as process 0 wrote it, with the scaling factor its VAE stage measured
            config = load_run_config(run_dir)
        weights, steps = run_dir / WEIGHTS_FILES[name], stage_steps(config, name)
        if steps == 0:
            print(f"stage {name}: skipped (train.{name}_steps 0)")
            continue
        if weights.is_file():  # built on weights that have changed since?
            check_built_on(run_dir, name, weights)
        if checkpoint_step(weights) >= steps:
            print(f"stage {name}: finished ({weights}, step {checkpoint_step(weights)}); raise "
                  f"--train.{name}_steps to train on")
            continue
        inputs_of(run_dir, name)  # every stage it is built on is finished, or a clear error
        torch.manual_seed(stage_seed(config.seed, name))  # its initial weights, whatever ran before
        train_stage(stages[name](config, run_dir, device), config, run_dir, device)
    stale = stale_stages(run_dir)
    if stale:  # e.g. after --stage vae --train.vae_steps N continued the VAE that later stages use
        print(f"note: {', '.join(stale)} were built on weights that have changed since; retrain them with "
              f"{train_command(run_dir, '--retrain', ','.join(stale))}")


def with_vocabulary(config: Config) -> Config:
    """Real video: text.vocabulary becomes the training captions' words, once, when the run starts,
    and config.json keeps it, so that sampling reads prompts with the same words. The moving shapes'
    captions come from a grammar whose words the tokenizer already knows."""
    if config.data.source == "shapes" or config.text.vocabulary:
        return config
    captions = VideoFiles(config.data).captions("train")
    words = tuple(sorted({word for caption in captions for word in prompt_words(caption)}))
    print(f"text.vocabulary: {len(words)} words from the captions of {config.data.root}")
    return dataclasses.replace(config, text=dataclasses.replace(config.text, vocabulary=words))


def show_training_data(config: Config, run_dir: Path) -> None:
    """samples/data.gif: 16 training clips, the data this run learns from."""
    dataset = VideoDataset(config.data, "train")
    clips = np.stack([dataset.clip(i)[0] for i in range(16)])
    save_video(tile_clips(clips, columns=4), run_dir / "samples" / "data.gif")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; run the same command again to resume from the last checkpoint")
