"""Configuration: one dataclass per component, the presets, and command-line overrides.

Every number that shapes a run lives here, so that `config.json` in a run directory is enough to
rebuild it. The command line reaches every field as `--section.key value`:

    python train.py --preset cpu --data.num_frames 8 --train.batch_size 16

`python train.py --help` lists every option with its type and the chosen preset's default.
Sequences are written with commas: `--data.colours red,green,blue`; "" is the empty sequence.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class DataConfig:
    """The training clips: the procedural moving shapes (data.py), or real video files (videos.py)."""

    # shapes: the moving shapes, rendered on demand (no download). ucf101: a UCF-101 tree, folder: any
    # folder of captioned videos, both under data.root, decoded once into data.cache_dir (videos.py)
    source: Literal["shapes", "ucf101", "folder"] = "shapes"
    root: str = ""  # the videos' folder (source ucf101 or folder)
    classes: tuple[str, ...] = ()  # source ucf101: the class names to train on; "" for all of them
    cache_dir: str = "data/cache"  # decoded videos, one subfolder per setting that changes them
    image_size: int = 64  # frames are square, image_size x image_size pixels
    num_frames: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
    motions: tuple[str, ...] = ("left", "right", "up", "down")
    speed_range: tuple[float, float] = (1.0, 2.5)  # pixels per source frame, drawn uniformly
    # Frame-rate conditioning: a clip shows every s-th frame of its source motion for a stride s
    # drawn from frame_strides, so it plays at fps / s frames a second and moves s times as far
    # per frame. The U-Net is told the clip's frame rate.
    fps: float = 8.0  # frame rate of the source motion (stride 1)
    frame_strides: tuple[int, ...] = (1,)
    size_range: tuple[float, float] = (0.09, 0.14)  # object radius as a fraction of image_size
    two_objects_prob: float = 0.0  # share of clips with a second object
    speed_word_prob: float = 0.5  # share of captions that say "slowly" or "quickly"
    # "colour shape motion" combinations never shown in training, kept to measure generalisation.
    held_out: tuple[str, ...] = (
        "green triangle up",
        "red square left",
        "blue circle down",
        "yellow triangle right",
        "magenta square up",
    )
    num_train_clips: int = 20_000  # the length of an epoch; clips are rendered on demand
    num_val_clips: int = 500
    seed: int = 0
    num_workers: int = 2  # DataLoader worker processes


@dataclass
class VAEConfig:
    """The image autoencoder (vae.py): frames to 4-channel latents, downsample_factor smaller."""

    downsample_factor: Literal[4, 8] = 4
    latent_channels: int = 4
    base_channels: int = 16
    num_res_blocks: int = 1
    reconstruction_loss: Literal["l1", "mse"] = "mse"  # MSE reached 30 dB PSNR faster than L1 here
    kl_weight: float = 1e-6
    # 1 / std of the latents, measured after the VAE is trained (None until then).
    scaling_factor: Optional[float] = None
    # VideoVAE stage: weight of the frame-difference term beside the reconstruction loss
    temporal_loss_weight: float = 1.0
    # VideoVAE stage: the decoder's temporal blocks. false: the control (not the paper's VideoVAE),
    # the image decoder fine-tuned on the same clips without them, to tell what they add
    temporal_blocks: bool = True


@dataclass
class TextConfig:
    """The small transformer text encoder (text.py), our stand-in for CLIP's text tower."""

    max_length: int = 24  # tokens, padding included: two-object captions reach ~20 words
    # the words the tokenizer knows; "" for the moving shapes' caption grammar. train.py fills it from
    # the training captions for real video (data.source ucf101 or folder), so config.json holds it
    vocabulary: tuple[str, ...] = ()
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class UNetConfig:
    """The latent U-Net (unet3d.py), in image mode and, inflated, in video mode."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # resolution levels with spatial transformers
    num_heads: int = 4
    # video stage: "temporal" trains only what inflation adds (adaptors, temporal attention,
    # frame-rate embedding), as in the paper. "all": not in the paper; also fine-tunes the image
    # weights and the text encoder (as Make-A-Video, Singer et al. 2022, fine-tunes its spatial layers)
    video_trainable: Literal["temporal", "all"] = "temporal"
    # not in the paper (this project's): the temporal attention also cross-attends to the text
    # (TemporalAttention), so that the motion words reach the layers that mix frames directly
    temporal_text: bool = False


@dataclass
class DiffusionConfig:
    """Noise schedule, objective and sampler defaults (diffusion.py)."""

    schedule: Literal["linear", "scaled_linear", "cosine"] = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    text_drop_prob: float = 0.1  # classifier-free guidance: caption replaced by "" this often
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    # not in the paper: steps below this one are sampled without guidance, the conditional prediction
    # alone (guidance in a limited interval, Kynkaenniemi et al. 2024); 0: guidance at every step
    unguided_below: int = 0
    # video sampling: "joint" denoises all frames together, as the paper does. "frame_by_frame": not
    # in the paper; finishes frame 0, then frame 1 beside it, and so on, as the causal temporal
    # attention reads a clip (GaussianDiffusion.ddim_sample_frame_by_frame; autoregressive sampling as
    # in diffusion forcing, Chen et al. 2024), T times the U-Net calls
    video_sampling: Literal["frame_by_frame", "joint"] = "joint"
    # frame by frame, the finished frames beside frame k are shown "noised" to its step, as every
    # frame of a training clip is, or "clean": not in the paper; the video stage then trains with
    # clean leading frames (teacher forcing, as in diffusion forcing, Chen et al. 2024)
    past_frames: Literal["noised", "clean"] = "noised"
    # not in the paper: video steps below this one are denoised by the image stage's model, each frame
    # on its own, the steps from it up by the video model (two expert denoisers, eDiff-I, Balaji et
    # al. 2022). A video stage trained on t >= train.video_t_min only has never learned the lower
    # steps; by then the noisy frame already shows where the object is. 0: the video model throughout
    image_model_below: int = 0


@dataclass
class TrainConfig:
    """The shared training loop (training.py): one set of numbers per stage where they differ."""

    batch_size: int = 32  # frames for the vae and image stages
    video_batch_size: int = 8  # clips for the video and videovae stages
    learning_rate: float = 2e-4  # the image stage's U-Net
    video_learning_rate: float = 2e-4  # the video stage's new layers
    # the video stage with unet.video_trainable all: the reused image weights and the text encoder
    video_reused_learning_rate: float = 2e-4
    vae_learning_rate: float = 1e-3  # the autoencoder stages (vae, videovae)
    warmup_steps: int = 100  # the learning rate rises linearly from 0 over these steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    vae_steps: int = 2000
    image_steps: int = 6000
    video_steps: int = 6000
    videovae_steps: int = 2000
    # not in the paper (this project's): the video stage draws the diffusion step t from
    # video_t_min..T-1. The noisy frames show where the object goes at every lower t, so only the
    # noisiest steps teach the motion words (README); 0: every step, as in the paper
    video_t_min: int = 0
    # not in the paper (this project's, after diffusion forcing's teacher forcing): with
    # diffusion.past_frames clean, each clip beside its noisy twin, so that every frame is trained on
    # with its clean past at once (GaussianDiffusion.twin_training_loss; twice the frames a step)
    video_twin_clips: bool = False
    # not in the paper (this project's): frame 1's loss weighs this much, the other frames' 1. Beside
    # its clean past, frame k >= 2 sees which way the object goes; frame 1 learns it from the word alone
    video_frame1_weight: float = 1.0
    # the interp stage (MagicVideo's frame interpolation; unet3d, diffusion.interpolation_loss): clips
    # cut into windows of S+1 frames whose ends are keyframes, S from interp_strides (one S a step, in turn)
    interp_steps: int = 2000
    interp_strides: tuple[int, ...] = (2, 4)
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 500
    mixed_precision: bool = False  # bfloat16 autocast on CUDA
    compile: bool = False  # torch.compile the U-Net of the image and video stages (off until measured: README)


@dataclass
class Config:
    """A whole run: the component sections plus where and how it runs."""

    preset: str = "cpu"
    name: str = "cpu"  # the run directory is runs/<name>
    runs_dir: str = "runs"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Rebuild a Config from `to_dict()` output; unknown keys and wrong types are errors."""
        return _dataclass_from_dict(cls, _without_removed_options(values), where="config")

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


SECTIONS = ("data", "vae", "text", "unet", "diffusion", "train")

# Options that were measured worse than the presets' choices and left the code (their findings are in
# docs/experiments.md), each with the value that turned it off: an older run's config.json that
# holds one at that value still loads; one that used it cannot be rebuilt by this code.
REMOVED_OPTIONS = {"unet.temporal_only_levels": [], "diffusion.frame_noise_correlation": 0.0,
                   "train.video_t_min_share": 1.0}


def _without_removed_options(values: dict) -> dict:
    """`values` (a config as a nested dict) less the REMOVED_OPTIONS left at their off value."""
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for dotted, off in REMOVED_OPTIONS.items():
        section, key = dotted.split(".")
        if isinstance(values.get(section), dict) and key in values[section]:
            value = values[section].pop(key)
            if (list(value) if isinstance(value, tuple) else value) != off:
                raise ValueError(f"config: {dotted} is {value!r}, an option this version no longer has (it "
                                 f"was measured worse, docs/experiments.md); this run cannot be rebuilt here: "
                                 f"start a new run with --name NEW")
    return values


# ---------------------------------------------------------------------------------------------
# Presets. Each one is a function of no arguments returning a fresh Config.


# The schedule, the prediction target and the guidance scale: MagicVideo builds on LDM and does not
# give them, so every preset takes what was measured on the cpu preset (README): the scaling factor
# gives the latents unit spread but not zero mean (the dark background encodes to a constant), and
# the scaled-linear schedule leaves sqrt(0.0047) of that mean at t = T, where sampling starts from
# pure noise. The cosine schedule leaves none; it pairs with v-prediction. Guidance 2 did best.
def latent_diffusion(**video_settings) -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", prediction_type="v_prediction", guidance_scale=2.0, **video_settings)


def smoke_preset() -> Config:
    """Every stage in about a minute on a CPU: for tests and CI; quality is not judged."""
    config = Config(preset="smoke", name="smoke")
    config.data = DataConfig(
        image_size=32, num_frames=4, speed_range=(1.0, 2.0), frame_strides=(1, 2), size_range=(0.12, 0.16),
        num_train_clips=512, num_val_clips=32, num_workers=0,
    )
    config.vae = VAEConfig(base_channels=8)
    config.text = TextConfig(width=32, num_layers=1, num_heads=2)
    config.unet = UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_heads=2)
    config.diffusion = DiffusionConfig(num_inference_steps=4)
    config.train = TrainConfig(
        batch_size=4, warmup_steps=5, vae_steps=20, image_steps=20, video_steps=20, videovae_steps=20,
        interp_steps=20, interp_strides=(2,), log_every=5, sample_every=10, checkpoint_every=10,
    )
    return config


def paper_preset() -> Config:
    """MagicVideo as published, at the cpu preset's data, sizes and step counts: the video stage
    trains only the frame adaptors, the directed temporal attention and the frame-rate embedding
    (image weights and text encoder frozen), on every diffusion step of all-noisy clips; sampling
    denoises all frames jointly with the video model, guided at every step. The dataclass defaults
    are the paper's, so every field left alone here is."""
    config = Config(preset="paper", name="paper")
    # 1.5-2 px a frame at 8 fps (stride 1), 3-4 px a frame at 4 fps (stride 2)
    config.data = DataConfig(image_size=64, num_frames=8, speed_range=(1.5, 2.0), frame_strides=(1, 2))
    config.unet = UNetConfig(base_channels=32)
    config.diffusion = latent_diffusion()
    # the new layers start at zero and need a larger step than the image stage; 8 clips a step, 64
    # frames. Fewer steps in every stage (vae 1000, image 3500, video 1600) lost the shapes and the
    # direction (README). videovae_steps: 500 batches of 8 clips, 10.4 minutes on 2 CPU cores (README)
    config.train = TrainConfig(batch_size=32, learning_rate=5e-4, image_steps=4000, video_learning_rate=1e-3,
                               video_steps=2000, videovae_steps=500)
    return config


def cpu_preset() -> Config:
    """The laptop tier: the paper preset plus the changes that made its clips follow the motion words
    (README, the ladder from paper to cpu); about an hour on 2 cores."""
    config = paper_preset()
    config.preset = config.name = "cpu"
    # temporal_text: the motion words reach the temporal attention directly; video_trainable all:
    # with the image weights frozen the video model did worse on every measure (README)
    config.unet = dataclasses.replace(config.unet, temporal_text=True, video_trainable="all")
    # frame by frame beside clean finished frames; as the video stage trains on t >= 700 only, the image
    # stage's model takes the steps below 700, unguided: guided there, it pinched the squares' sides
    config.diffusion = latent_diffusion(video_sampling="frame_by_frame", past_frames="clean",
                                        image_model_below=700, unguided_below=700)
    # only the noisiest steps (t >= 700) teach the direction word; twin clips, 4 a step: 64 frames, as
    # 8 plain clips; frame 1, where the direction word decides, weighs 4 frames (README)
    config.train = dataclasses.replace(config.train, video_t_min=700, video_batch_size=4, video_twin_clips=True,
                                       video_frame1_weight=4.0)
    return config


def gpu_preset() -> Config:
    """The overnight tier on one GPU: 16-frame clips, a bigger model, mixed precision."""
    config = Config(preset="gpu", name="gpu")
    config.data = DataConfig(image_size=64, num_frames=16, speed_range=(0.6, 1.2), frame_strides=(1, 2),
                             num_train_clips=200_000, num_workers=8)
    config.vae = VAEConfig(base_channels=64, num_res_blocks=2)
    config.text = TextConfig(width=256, num_layers=4, num_heads=8)
    # temporal_text, video_trainable, video_t_min, past_frames, twin clips (frame 1 weighing 4) and
    # image_model_below as in the cpu preset, where they were measured; not yet on a GPU
    config.unet = UNetConfig(base_channels=128, channel_mults=(1, 2, 4), num_res_blocks=2, num_heads=8,
                             temporal_text=True, video_trainable="all")
    config.diffusion = latent_diffusion(video_sampling="frame_by_frame", past_frames="clean",
                                        image_model_below=700, unguided_below=700)
    config.train = TrainConfig(
        batch_size=64, vae_steps=20_000, image_steps=60_000, video_steps=60_000, video_t_min=700,
        video_batch_size=4, video_twin_clips=True, video_frame1_weight=4.0, videovae_steps=20_000,
        sample_every=5000, checkpoint_every=2000, mixed_precision=True,
    )
    return config


# ten UCF-101 classes whose motion fills the frame; --data.classes picks others
UCF_CLASSES = ("ApplyEyeMakeup", "Basketball", "BenchPress", "Biking", "Diving", "GolfSwing", "HorseRiding",
               "JumpRope", "PushUps", "WalkingWithDog")


def ucf_preset() -> Config:
    """The overnight tier on real video: the gpu preset's models on a 10-class UCF-101 subset
    (--data.root DIR, the folder holding UCF-101 or those classes of it; README). UCF-101 is filmed at
    25 fps; strides 2 and 4 make 16 frames span 1.2 or 2.4 seconds, at 12.5 and 6.25 fps."""
    config = gpu_preset()
    config.preset = config.name = "ucf"
    config.data = DataConfig(source="ucf101", classes=UCF_CLASSES, image_size=64, num_frames=16, fps=25.0,
                             frame_strides=(2, 4), num_train_clips=200_000, num_workers=8)
    return config


def auto_preset() -> Config:
    """`cpu` on any device, the measured preset (on a GPU its run takes minutes), until the `gpu`
    preset's quality has been measured; `--preset gpu` picks that one by name."""
    return cpu_preset()


PRESETS = {"smoke": smoke_preset, "paper": paper_preset, "cpu": cpu_preset, "gpu": gpu_preset, "ucf": ucf_preset,
           "auto": auto_preset}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# Checks: every value is checked where it is parsed, so that a bad one is a line naming it, not a
# traceback an hour into a run. (The moving-shapes data's own checks are data.check_data_config.)


def check_run_name(name: str, runs_dir: str) -> None:
    if name in ("", ".", "..") or any(separator in name for separator in "/\\") or name != name.strip():
        raise ValueError(f"--name {name!r} is not a run name: use a plain directory name such as cpu-2 "
                         f"(the run is written to {runs_dir}/<name>)")


# the sampling options that name a diffusion step, and what their two ends, 0 and T, mean
STEP_OPTIONS = {"image_model_below": ("the video model throughout", "the image model throughout"),
                "unguided_below": ("guidance at every step", "no guidance")}


def check_step(name: str, step: int, num_steps: int) -> None:
    """diffusion.image_model_below or unguided_below (`name`, with or without the section) must lie
    in 0..num_steps; else a ValueError naming it and what the two ends mean."""
    at_zero, at_last = STEP_OPTIONS[name.split(".")[-1]]
    if not 0 <= step <= num_steps:
        raise ValueError(f"{name} {step} is not a step: use 0 ({at_zero}) to {num_steps} ({at_last})")


def check_config(config: Config) -> None:
    """Raise ValueError naming the first value the models or the training loop cannot take."""
    for name, _, value in _fields(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} is {value}; it must be a finite number")
    check_run_name(config.name, config.runs_dir)
    train, diffusion = config.train, config.diffusion

    def at_least(minimum, **values):
        for key, value in values.items():
            if value < minimum:
                raise ValueError(f"{key} must be at least {minimum}, got {value}")

    at_least(1, **{"train.batch_size": train.batch_size, "train.video_batch_size": train.video_batch_size,
                   "train.log_every": train.log_every, "train.sample_every": train.sample_every,
                   "train.checkpoint_every": train.checkpoint_every, "data.image_size": config.data.image_size,
                   "diffusion.num_train_timesteps": diffusion.num_train_timesteps,
                   "vae.base_channels": config.vae.base_channels, "vae.latent_channels": config.vae.latent_channels,
                   "text.width": config.text.width, "text.num_heads": config.text.num_heads,
                   "text.max_length": config.text.max_length, "unet.base_channels": config.unet.base_channels,
                   "unet.num_heads": config.unet.num_heads, "unet.num_res_blocks": config.unet.num_res_blocks})
    # 0 steps skips a stage (train.videovae_steps 0: no VideoVAE)
    at_least(0, **{f"train.{key}": getattr(train, key) for key in
                   ("vae_steps", "image_steps", "video_steps", "videovae_steps", "interp_steps", "warmup_steps")})
    bad_strides = [s for s in train.interp_strides if not 2 <= s <= config.data.num_frames - 1]
    if bad_strides or not train.interp_strides:
        raise ValueError(f"train.interp_strides {train.interp_strides}: each S fills S-1 frames between two "
                         f"keyframes in a window of S+1 frames, so use 2 to {config.data.num_frames - 1} "
                         f"(data.num_frames - 1), for example 2,4")
    at_least(0, **{"train.weight_decay": train.weight_decay, "vae.kl_weight": config.vae.kl_weight,
                   "vae.temporal_loss_weight": config.vae.temporal_loss_weight,
                   "diffusion.guidance_scale": diffusion.guidance_scale,
                   "train.video_reused_learning_rate": train.video_reused_learning_rate})  # 0: frozen
    for key in ("learning_rate", "video_learning_rate", "vae_learning_rate", "grad_clip"):
        if not getattr(train, key) > 0:
            raise ValueError(f"train.{key} must be positive, got {getattr(train, key)}")
    for key, value in (("train.ema_decay", train.ema_decay), ("diffusion.text_drop_prob", diffusion.text_drop_prob)):
        if not 0 <= value <= 1:
            raise ValueError(f"{key} must be between 0 and 1, got {value}")
    if not 0 <= train.video_t_min < diffusion.num_train_timesteps:
        raise ValueError(f"train.video_t_min {train.video_t_min} is not a step: use 0 to "
                         f"{diffusion.num_train_timesteps - 1}")
    for name in STEP_OPTIONS:
        check_step(f"diffusion.{name}", getattr(diffusion, name), diffusion.num_train_timesteps)
    if not 1 <= diffusion.num_inference_steps <= diffusion.num_train_timesteps:
        raise ValueError(f"diffusion.num_inference_steps must be between 1 and {diffusion.num_train_timesteps}, "
                         f"got {diffusion.num_inference_steps}")
    if not 0 < diffusion.beta_start <= diffusion.beta_end < 1:
        raise ValueError(f"diffusion.beta_start {diffusion.beta_start} and beta_end {diffusion.beta_end} must "
                         f"satisfy 0 < beta_start <= beta_end < 1")
    if config.vae.scaling_factor is not None and not config.vae.scaling_factor > 0:
        raise ValueError(f"vae.scaling_factor must be positive, got {config.vae.scaling_factor}")
    unet = config.unet
    if not unet.channel_mults or min(unet.channel_mults) < 1:
        raise ValueError(f"unet.channel_mults must be positive whole numbers, got {unet.channel_mults}")
    outside = [level for level in unet.attention_levels if not 0 <= level < len(unet.channel_mults)]
    if outside:
        raise ValueError(f"unet.attention_levels {outside} are not levels of the U-Net, whose levels are "
                         f"0 to {len(unet.channel_mults) - 1} (one per unet.channel_mults)")
    for key, width, heads in [("text.width", config.text.width, config.text.num_heads)] + [
            (f"unet.base_channels x {mult}", unet.base_channels * mult, unet.num_heads) for mult in unet.channel_mults]:
        if width % heads:
            raise ValueError(f"{key} = {width} does not split into {heads} attention heads; "
                             f"choose widths divisible by the number of heads")
    # the VAE shrinks frames by downsample_factor, and the U-Net halves the latents once per level below the first
    multiple = config.vae.downsample_factor * 2 ** (len(unet.channel_mults) - 1)
    if config.data.image_size % multiple:
        below, above = config.data.image_size // multiple * multiple, -(-config.data.image_size // multiple) * multiple
        raise ValueError(f"data.image_size {config.data.image_size} cannot be taken: the VAE makes latents "
                         f"{config.vae.downsample_factor}x smaller and the U-Net halves them "
                         f"{len(unet.channel_mults) - 1} times, so the size must be a multiple of {multiple}; "
                         f"use {above}" + (f" or {below}" if below else ""))


# ---------------------------------------------------------------------------------------------
# Command line: one `--section.key` option per field, typed from the dataclass annotations.


def build_parser(defaults: Config, description: str = "") -> argparse.ArgumentParser:
    """A parser whose options are the fields of `defaults`, each defaulting to its value there."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--preset", default="auto", choices=list(PRESETS),
                        help="the base configuration that the options below override (default: auto = "
                             "cpu, the measured preset; paper = MagicVideo as published). An existing run "
                             "keeps its own: python train.py --name NAME continues it")
    for name, value_type, default in _fields(defaults):
        if name == "preset":
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(f"--{name}", dest=name, default=default, metavar=_type_name(value_type),
                            type=_converter(value_type), help=f"(default: {shown})")
    return parser


def parse_config(argv: list[str] | None = None, description: str = "",
                 extra_arguments: typing.Callable[[argparse.ArgumentParser], None] | None = None,
                 existing_run: typing.Callable[[str], Config | None] | None = None,
                 ) -> tuple[Config, argparse.Namespace]:
    """Parse `--preset P --section.key value ...` into a checked Config (plus the namespace for extras).

    `extra_arguments(parser)` may add options that are not config fields (train.py's --stage).
    `existing_run(run_dir)` returns the config of the run in <runs_dir>/<name>, or None where there
    is none yet: an existing run's own settings are then the defaults, so that continuing it needs
    no preset or option repeated (train.py). An unknown option is an error that names it and
    suggests the nearest real one; a bad value is a ValueError that names it (check_config).
    """
    early_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ("--preset", "--name", "--runs_dir"):
        early_parser.add_argument(option)
    early = early_parser.parse_known_args(argv)[0]
    try:
        defaults = get_preset(early.preset or "auto")
    except ValueError as error:
        early_parser.error(str(error))
    if existing_run is not None:
        name = defaults.name if early.name is None else early.name
        runs_dir = defaults.runs_dir if early.runs_dir is None else early.runs_dir
        check_run_name(name, runs_dir)
        saved = existing_run(f"{runs_dir}/{name}")
        if saved is not None:
            if early.preset is not None and defaults.preset != saved.preset:
                raise ValueError(f"run {name!r} was made with preset {saved.preset!r}, not {early.preset!r}: "
                                 f"drop --preset to continue it with its own settings, or start a new run "
                                 f"with --name NEW")
            saved.name, saved.runs_dir = name, runs_dir  # where it is now, should it have been moved
            defaults = saved
    parser = build_parser(defaults, description)
    if extra_arguments is not None:
        extra_arguments(parser)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [option for action in parser._actions for option in action.option_strings]
        bad = next((word for word in unknown if word.startswith("-")), unknown[0])
        close = difflib.get_close_matches(bad.split("=")[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see --help for every option"
        parser.error(f"unknown option {bad!r}{hint}")
    values = {name: getattr(namespace, name) for name, *_ in _fields(defaults) if name != "preset"}
    config = _dataclass_from_dict(Config, _unflatten(values) | {"preset": defaults.preset}, "config")
    check_config(config)
    return config, namespace


def _fields(config: Config):
    """(dotted name, type, value) for every field of the config, sections flattened."""
    hints = typing.get_type_hints(Config)
    for top in dataclasses.fields(Config):
        value = getattr(config, top.name)
        if top.name in SECTIONS:
            section_hints = typing.get_type_hints(type(value))
            for sub in dataclasses.fields(value):
                yield f"{top.name}.{sub.name}", section_hints[sub.name], getattr(value, sub.name)
        else:
            yield top.name, hints[top.name], value


def _unflatten(values: dict) -> dict:
    nested: dict = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if key:
            nested.setdefault(section, {})[key] = value
        else:
            nested[section] = value
    return nested


def _type_name(value_type) -> str:
    origin, args = typing.get_origin(value_type), typing.get_args(value_type)
    if origin is Literal:
        return "{" + ",".join(str(arg) for arg in args) + "}"
    if origin is typing.Union:  # Optional[X]
        return f"{_type_name(args[0])}|none"
    if origin is tuple:
        item = args[0].__name__
        return f"{item},{item},..." if args[-1] is Ellipsis else ",".join(a.__name__ for a in args)
    return value_type.__name__.upper()


def _converter(value_type):
    """A function str -> value for argparse; its __name__ appears in argparse's type errors."""

    def convert(text: str):
        return _coerce(text, value_type, where=None, from_text=True)

    convert.__name__ = _type_name(value_type)
    return convert


def _coerce(value, value_type, where: str | None, from_text: bool = False):
    """Turn `value` into `value_type`, or raise.

    from_text: `value` is command-line text, so "8" may become 8 and "red,blue" a tuple; a JSON
    value must already have the right type (lists become tuples).
    """
    origin, args = typing.get_origin(value_type), typing.get_args(value_type)
    problem = None
    if origin is typing.Union:
        if value is None or (from_text and value.lower() == "none"):
            return None
        return _coerce(value, args[0], where, from_text)
    if origin is Literal:
        for choice in args:
            if value == choice or (from_text and value == str(choice)):
                return choice
        problem = f"expected one of {', '.join(map(str, args))}"
    elif origin is tuple:
        items = (value.split(",") if value else []) if from_text else value
        if not isinstance(items, (list, tuple)):
            problem = "expected a list"
        else:
            item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
            if len(item_types) != len(items):
                problem = f"expected {len(item_types)} values, got {len(items)}"
            else:
                return tuple(_coerce(item, t, where, from_text) for item, t in zip(items, item_types))
    elif value_type is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        problem = "expected true or false"
    elif value_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and value.strip().lstrip("-").replace("_", "").isdigit():
            return int(value)
        problem = "expected an integer"
    elif value_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problem = "expected a number"
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
    elif value_type is str:
        if isinstance(value, str):
            return value
        problem = "expected a string"
    else:
        raise TypeError(f"config fields of type {value_type} are not supported")
    message = f"{problem}, got {value!r}"
    # argparse turns a ValueError into "invalid <type> value: ..." naming the option itself.
    raise ValueError(message if where is None else f"{where}: {message}")


def _dataclass_from_dict(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
    instance = cls()
    for key, value in values.items():
        value_type = hints[key]
        if dataclasses.is_dataclass(value_type):
            value = _dataclass_from_dict(value_type, value, f"{where}.{key}")
        else:
            value = _coerce(value, value_type, f"{where}.{key}")
        setattr(instance, key, value)
    return instance

