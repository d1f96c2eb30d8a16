"""The models of a run: built from its config, and loaded from its finished stages' weights files.

    stage      weights file    model
    vae        vae.pt          AutoencoderKL (vae.py)
    image      unet_image.pt   {"text_encoder": TextEncoder, "unet": UNet3D in image mode}
    video      unet.pt         the same pair, the U-Net inflated to clips (UNet3D.from_image)
    videovae   videovae.pt     VideoVAE: the image VAE's encoder, a decoder with temporal blocks
    interp     unet_interp.pt  the pair again, inflated with keyframe channels beside the latents

The stages (stages.py), the pipeline and the benchmarks build and read a run's models here, one way.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .config import Config
from .runs import WEIGHTS_FILES, load_run_config, load_weights, train_command
from .shapes import caption_vocabulary
from .text import TextEncoder
from .unet3d import UNet3D
from .vae import AutoencoderKL, VideoVAE

STAGE_MODELS = {"vae": "VAE", "image": "image model", "video": "video model", "videovae": "VideoVAE",
                "interp": "frame interpolation model"}


def text_vocabulary(config: Config) -> tuple[tuple[str, ...], str]:
    """The words the run's text encoder knows, and where they come from: text.vocabulary (the training
    captions' words, for real video), or the moving shapes' caption grammar."""
    words = config.text.vocabulary or tuple(caption_vocabulary())
    if config.text.vocabulary:
        return words, f"the training captions' {len(words)} words (text.vocabulary in the run's config.json)"
    return words, f"the caption grammar's {len(words)} words (tiny_magicvideo.shapes.caption_vocabulary())"


def text_to_image_model(config: Config) -> nn.ModuleDict:
    """The image stage's trainable pair, saved together in unet_image.pt."""
    return nn.ModuleDict({"text_encoder": TextEncoder(config.text, *text_vocabulary(config)),
                          "unet": UNet3D(config.unet, config.vae.latent_channels, config.text.width)})


def text_to_video_model(image_model: nn.ModuleDict, config: Config) -> nn.ModuleDict:
    """The video stage's pair, saved together in unet.pt: the same text encoder and the image U-Net
    inflated to clips of up to data.num_frames frames."""
    return nn.ModuleDict({"text_encoder": image_model["text_encoder"],
                          "unet": UNet3D.from_image(image_model["unet"], config.data.num_frames)})


def text_to_interp_model(image_model: nn.ModuleDict, config: Config) -> nn.ModuleDict:
    """The interp stage's pair, saved together in unet_interp.pt: the same text encoder and the image
    U-Net inflated with diffusion.keyframe_condition's latent_channels + 1 input channels beside the
    latents, for windows of up to data.num_frames frames."""
    unet = UNet3D.from_image(image_model["unet"], config.data.num_frames, config.vae.latent_channels + 1)
    return nn.ModuleDict({"text_encoder": image_model["text_encoder"], "unet": unet})


def finished_weights(run_dir: Path, stage: str) -> Path:
    """The weights file of a finished stage; a missing one is an error that says how to train it."""
    path = Path(run_dir) / WEIGHTS_FILES[stage]
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {STAGE_MODELS[stage]} ({path.name}): train it with "
                                f"{train_command(run_dir, '--stage', stage)}")
    return path


def with_run_weights(model: nn.Module, run_dir: Path, stage: str, device: torch.device | str) -> nn.Module:
    """`model` with the EMA weights of the run's finished `stage`, on `device`, in eval mode."""
    load_weights(model, finished_weights(run_dir, stage))
    return model.to(device).eval()


def load_vae(run_dir, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The trained VAE (EMA weights) of a run directory, with the run's scaling factor."""
    return with_run_weights(AutoencoderKL(load_run_config(run_dir).vae), run_dir, "vae", device)


def load_video_vae(run_dir, device: torch.device | str = "cpu") -> VideoVAE:
    """The trained VideoVAE (EMA weights) of a run directory (python train.py --stage videovae)."""
    return with_run_weights(VideoVAE(load_run_config(run_dir).vae), run_dir, "videovae", device)


def load_image_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The image stage's text encoder and U-Net (EMA weights, unet_image.pt)."""
    return with_run_weights(text_to_image_model(load_run_config(run_dir)), run_dir, "image", device)


def load_interp_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The interp stage's text encoder and frame interpolation U-Net (EMA weights, unet_interp.pt)."""
    config = load_run_config(run_dir)
    return with_run_weights(text_to_interp_model(text_to_image_model(config), config), run_dir, "interp", device)


def load_video_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The video stage's text encoder and inflated U-Net (EMA weights, unet.pt)."""
    config = load_run_config(run_dir)
    return with_run_weights(text_to_video_model(text_to_image_model(config), config), run_dir, "video", device)
