"""The checks of a config: every value is checked when a config is made or loaded, so that a bad
one is a line naming it and the fix, not a traceback an hour into a run.

`check_config` is the one entry: the run's name, the clips (`check_data_config`, which
data.VideoDataset also calls for a DataConfig made by hand), the models' sizes, the training
loop's numbers, the diffusion schedule and sampler, and the video stage's options that only make
sense together. The models keep only assertions that no config can reach.
"""

from __future__ import annotations

import math

from .config import Config, DataConfig, DiffusionConfig, fields_of
from .shapes import COLOURS, MIN_RADIUS_PIXELS, MOTIONS, SHAPE_EXTENT, parse_combination


def check_config(config: Config) -> None:
    """Raise ValueError naming the first value the data, the models or the training loop cannot take."""
    for name, _, value in fields_of(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} is {value}; it must be a finite number")
    check_run_name(config.name, config.runs_dir)
    check_data_config(config.data)
    _check_models(config)
    _check_training(config)
    _check_diffusion(config.diffusion)
    _check_video_options(config)


def check_run_name(name: str, runs_dir: str) -> None:
    if name in ("", ".", "..") or any(separator in name for separator in "/\\") or name != name.strip():
        raise ValueError(f"--name {name!r} is not a run name: use a plain directory name such as cpu-2 "
                         f"(the run is written to {runs_dir}/<name>)")


def _at_least(minimum, **values) -> None:
    for key, value in values.items():
        if value < minimum:
            raise ValueError(f"{key} must be at least {minimum}, got {value}")


def _check_models(config: Config) -> None:
    """The VAE, text encoder and U-Net sizes, and the frame size they must divide."""
    vae, text, unet = config.vae, config.text, config.unet
    _at_least(1, **{"vae.base_channels": vae.base_channels, "vae.latent_channels": vae.latent_channels,
                    "text.width": text.width, "text.num_heads": text.num_heads, "text.max_length": text.max_length,
                    "unet.base_channels": unet.base_channels, "unet.num_heads": unet.num_heads,
                    "unet.num_res_blocks": unet.num_res_blocks})
    _at_least(0, **{"vae.kl_weight": vae.kl_weight, "vae.temporal_loss_weight": vae.temporal_loss_weight})
    if vae.scaling_factor is not None and not vae.scaling_factor > 0:
        raise ValueError(f"vae.scaling_factor must be positive, got {vae.scaling_factor}")
    if not unet.channel_mults or min(unet.channel_mults) < 1:
        raise ValueError(f"unet.channel_mults must be positive whole numbers, got {unet.channel_mults}")
    outside = [level for level in unet.attention_levels if not 0 <= level < len(unet.channel_mults)]
    if outside:
        raise ValueError(f"unet.attention_levels {outside} are not levels of the U-Net, whose levels are "
                         f"0 to {len(unet.channel_mults) - 1} (one per unet.channel_mults)")
    for key, width, heads in [("text.width", text.width, text.num_heads)] + [
            (f"unet.base_channels x {mult}", unet.base_channels * mult, unet.num_heads) for mult in unet.channel_mults]:
        if width % heads:
            raise ValueError(f"{key} = {width} does not split into {heads} attention heads; "
                             f"choose widths divisible by the number of heads")
    # the VAE shrinks frames by downsample_factor, and the U-Net halves the latents once per level below the first
    size, multiple = config.data.image_size, vae.downsample_factor * 2 ** (len(unet.channel_mults) - 1)
    if size % multiple:
        below, above = size // multiple * multiple, -(-size // multiple) * multiple
        raise ValueError(f"data.image_size {size} cannot be taken: the VAE makes latents "
                         f"{vae.downsample_factor}x smaller and the U-Net halves them "
                         f"{len(unet.channel_mults) - 1} times, so the size must be a multiple of {multiple}; "
                         f"use {above}" + (f" or {below}" if below else ""))


def _check_training(config: Config) -> None:
    """The training loop's batch sizes, step counts, rates and intervals."""
    train = config.train
    _at_least(1, **{"train.batch_size": train.batch_size, "train.video_batch_size": train.video_batch_size,
                    "train.log_every": train.log_every, "train.sample_every": train.sample_every,
                    "train.checkpoint_every": train.checkpoint_every})
    # 0 steps skips a stage (train.videovae_steps 0: no VideoVAE)
    _at_least(0, **{f"train.{key}": getattr(train, key) for key in
                    ("vae_steps", "image_steps", "video_steps", "videovae_steps", "interp_steps", "warmup_steps")})
    _at_least(0, **{"train.weight_decay": train.weight_decay,
                    "train.video_reused_learning_rate": train.video_reused_learning_rate})  # 0: frozen
    for key in ("learning_rate", "video_learning_rate", "vae_learning_rate", "grad_clip"):
        if not getattr(train, key) > 0:
            raise ValueError(f"train.{key} must be positive, got {getattr(train, key)}")
    if not 0 <= train.ema_decay <= 1:
        raise ValueError(f"train.ema_decay must be between 0 and 1, got {train.ema_decay}")
    bad_strides = [s for s in train.interp_strides if not 2 <= s <= config.data.num_frames - 1]
    if bad_strides or not train.interp_strides:
        raise ValueError(f"train.interp_strides {train.interp_strides}: each S fills S-1 frames between two "
                         f"keyframes in a window of S+1 frames, so use 2 to {config.data.num_frames - 1} "
                         f"(data.num_frames - 1), for example 2,4")


# the sampling options that name a diffusion step, and what their two ends, 0 and T, mean
STEP_OPTIONS = {"image_model_below": ("the video model throughout", "the image model throughout"),
                "unguided_below": ("guidance at every step", "no guidance")}


def check_step(name: str, step: int, num_steps: int) -> None:
    """diffusion.image_model_below or unguided_below (`name`, with or without the section) must lie
    in 0..num_steps; else a ValueError naming it and what the two ends mean."""
    at_zero, at_last = STEP_OPTIONS[name.split(".")[-1]]
    if not 0 <= step <= num_steps:
        raise ValueError(f"{name} {step} is not a step: use 0 ({at_zero}) to {num_steps} ({at_last})")


def _check_diffusion(diffusion: DiffusionConfig) -> None:
    """The schedule and the sampler's defaults."""
    _at_least(1, **{"diffusion.num_train_timesteps": diffusion.num_train_timesteps})
    _at_least(0, **{"diffusion.guidance_scale": diffusion.guidance_scale})
    if not 0 <= diffusion.text_drop_prob <= 1:
        raise ValueError(f"diffusion.text_drop_prob must be between 0 and 1, got {diffusion.text_drop_prob}")
    for name in STEP_OPTIONS:
        check_step(f"diffusion.{name}", getattr(diffusion, name), diffusion.num_train_timesteps)
    if not 1 <= diffusion.num_inference_steps <= diffusion.num_train_timesteps:
        raise ValueError(f"diffusion.num_inference_steps must be between 1 and {diffusion.num_train_timesteps}, "
                         f"got {diffusion.num_inference_steps}")
    if not 0 < diffusion.beta_start <= diffusion.beta_end < 1:
        raise ValueError(f"diffusion.beta_start {diffusion.beta_start} and beta_end {diffusion.beta_end} must "
                         f"satisfy 0 < beta_start <= beta_end < 1")


def _check_video_options(config: Config) -> None:
    """The video stage's options that only make sense together."""
    train, diffusion = config.train, config.diffusion
    if not 0 <= train.video_t_min < diffusion.num_train_timesteps:
        raise ValueError(f"train.video_t_min {train.video_t_min} is not a step: use 0 to "
                         f"{diffusion.num_train_timesteps - 1}")
    # sampling beside clean finished frames is what twin clips train for, and twin clips are how it is trained
    if train.video_twin_clips and diffusion.past_frames != "clean":
        raise ValueError("train.video_twin_clips trains on clean past frames, but diffusion.past_frames "
                         f"is {diffusion.past_frames!r}; add --diffusion.past_frames clean")
    if diffusion.past_frames == "clean" and not train.video_twin_clips:
        raise ValueError("diffusion.past_frames clean samples each frame beside clean finished ones, which the "
                         "video stage trains for with twin clips; add --train.video_twin_clips true")
    frame1_weight = train.video_frame1_weight
    if frame1_weight != 1.0 and not train.video_twin_clips:
        raise ValueError(f"train.video_frame1_weight {frame1_weight} weighs the twin clips' frame 1; "
                         "add --train.video_twin_clips true, or drop it")
    if frame1_weight <= 0:
        raise ValueError(f"train.video_frame1_weight {frame1_weight} must be positive; 1 weighs every frame alike")


def check_data_config(config: DataConfig) -> None:
    """The clips: raise ValueError naming the bad value and the fix, before any clip is drawn (also
    called by data.VideoDataset, for a DataConfig made by hand)."""
    _at_least(1, **{"data.image_size": config.image_size, "data.num_frames": config.num_frames})
    if not config.frame_strides or min(config.frame_strides) < 1:
        raise ValueError(f"data.frame_strides must be whole numbers >= 1, got {config.frame_strides}")
    if not config.fps > 0:
        raise ValueError(f"data.fps must be positive, got {config.fps}")
    if config.source != "shapes":  # the rest is the moving shapes' own; videos.py checks data.root
        return
    for name, values, known in (("colours", config.colours, COLOURS), ("shapes", config.shapes, SHAPE_EXTENT),
                                ("motions", config.motions, MOTIONS)):
        if not values:
            raise ValueError(f"data.{name} is empty; give at least one of {', '.join(known)}")
        for value in values:
            if value not in known:
                raise ValueError(f"unknown {name[:-1]} {value!r} in data.{name}; "
                                 f"known {name}: {', '.join(known)}")
    low, high = config.size_range
    if not 0 < low <= high:
        raise ValueError(f"data.size_range must satisfy 0 < low <= high, got {config.size_range}")
    if low * config.image_size < MIN_RADIUS_PIXELS:
        need = math.ceil(MIN_RADIUS_PIXELS / low)
        raise ValueError(
            f"data.image_size {config.image_size} is too small for the shapes: the smallest object "
            f"would have a radius of {low * config.image_size:.1f} px (at least {MIN_RADIUS_PIXELS:g} "
            f"needed); use --data.image_size {need} or larger, or raise data.size_range")
    slow, fast = config.speed_range
    if not 0 <= slow <= fast:
        raise ValueError(f"data.speed_range must satisfy 0 <= low <= high, got {config.speed_range}")
    extent = max(SHAPE_EXTENT[s] for s in config.shapes) * high * config.image_size
    fastest = fast * max(config.frame_strides)
    travel = fastest * (config.num_frames - 1)
    if 2 * extent + travel + 2 > config.image_size:
        raise ValueError(
            f"a clip does not fit: {config.num_frames} frames at {fastest} px/frame (speed {fast} x "
            f"stride {max(config.frame_strides)}) travel {travel:.0f} px, plus an object "
            f"{2 * extent:.0f} px wide, in a {config.image_size} px frame; lower data.speed_range, "
            f"data.frame_strides or data.num_frames, or raise data.image_size")
    if not 0 <= config.two_objects_prob <= 1 or not 0 <= config.speed_word_prob <= 1:
        raise ValueError("data.two_objects_prob and data.speed_word_prob are probabilities in [0, 1]")
    combos = {(c, s, m) for c in config.colours for s in config.shapes for m in config.motions}
    for combo in config.held_out:
        if parse_combination(combo) not in combos:
            raise ValueError(f"held-out combination {combo!r} is not 'colour shape motion' from "
                             f"data.colours, data.shapes and data.motions; change data.held_out "
                             f"(--data.held_out \"red square up,...\", or \"\" for none)")
    if len(combos) == len(config.held_out):
        raise ValueError("data.held_out holds every combination: nothing is left to train on")
