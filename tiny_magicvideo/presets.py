"""Presets: whole configs, each a function of no arguments that returns a fresh Config.

- smoke: every stage in about a minute on a CPU, for the tests and CI; quality is not judged.
- paper: MagicVideo as published, at the cpu preset's sizes: the first row of every comparison.
- cpu: the laptop tier, the paper preset plus the labelled changes that made its clips follow the
  motion words (README, the ladder from paper to cpu).
- gpu, ucf: the overnight tiers on one GPU, moving shapes or a UCF-101 subset.
- auto: the default, the measured cpu preset on whatever device there is.
"""

from __future__ import annotations

import dataclasses

from .config import Config, DataConfig, DiffusionConfig, TextConfig, TrainConfig, UNetConfig, VAEConfig


# MagicVideo builds on LDM and does not give its schedule: the cosine schedule leaves none of the
# latents' mean at t = T, where sampling starts from pure noise (scaled-linear leaves sqrt(0.0047) of
# it), and pairs with v-prediction; guidance scale 2 was chosen on tuning seeds (docs/experiments.md)
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
    # frames; the fewest steps that keep the shapes and the direction (docs/experiments.md). The
    # autoencoder (MagicVideo takes Stable Diffusion's, trained elsewhere) and the interp model at
    # 1,000 steps: half the minutes of 2,000, at 2 dB of reconstruction (docs/experiments.md, issue 38)
    config.train = TrainConfig(batch_size=32, learning_rate=5e-4, vae_steps=1000, image_steps=4000,
                               video_learning_rate=1e-3, video_steps=2000, videovae_steps=500, interp_steps=1000)
    return config


def cpu_preset() -> Config:
    """The laptop tier: the paper preset plus the changes that made its clips follow the motion words
    (README, the ladder from paper to cpu); about 50 minutes on 2 cores."""
    config = paper_preset()
    config.preset = config.name = "cpu"
    # the motion words reach the temporal attention directly, and every weight learns the motion
    config.unet = dataclasses.replace(config.unet, temporal_text=True, video_trainable="all")
    # frame by frame beside clean finished frames; the video stage trains on t >= 700 only, so the image
    # stage's model takes the steps below 700, unguided there, where the frame already shows the shape
    config.diffusion = latent_diffusion(video_sampling="frame_by_frame", past_frames="clean",
                                        image_model_below=700, unguided_below=700)
    # only the noisiest steps (t >= 700) teach the direction word; twin clips, 4 a step: 64 frames, as
    # 8 plain clips; frame 1, where the direction word decides, weighs 4 frames
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


def preset_default(name: str, option: str):
    """The value of `option` ("train.vae_steps") in preset `name`, a known-good value for a hint; auto's
    where `name` is no preset of this version (an older run's config.json)."""
    section, key = option.split(".")
    return getattr(getattr(get_preset(name if name in PRESETS else "auto"), section), key)
