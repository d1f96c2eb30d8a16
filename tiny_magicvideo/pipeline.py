"""From a trained run to frames and video files.

`TextToVideo.from_run(dir)` is how code outside training reads a run: prompt(s) -> text encoder ->
DDIM with classifier-free guidance in latent space, the video U-Net told the frame rate -> a
decoder -> uint8 frames (B, T, H, W, 3). The decoder is the VideoVAE's (whole clips, with temporal
layers) where the run has one, else the image VAE's (frame by frame). A run that has only finished
the image stage loads as a text-to-image model (num_frames = 1). With `interpolate=S` and the run's
interp stage, the keyframes are made at 1/S of the frame rate and the interp model fills the S-1
frames between each pair (`fill_between`, MagicVideo's frame interpolation).

The frames are written to files by media.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .attention import FrameCache, both_ways
from .checks import check_step
from .config import Config
from .data import frame_rates, video_to_frames
from .diffusion import Denoiser, GaussianDiffusion, classifier_free_guidance
from .distributed import resolve_device
from .models import load_image_model, load_interp_model, load_vae, load_video_model, load_video_vae
from .runs import WEIGHTS_FILES, check_built_on, load_run_config
from .text import TextEncoder, prompt_words
from .unet3d import UNet3D
from .vae import AutoencoderKL


# the highest frame rate a clip may be asked for: far above any trained rate, and far below where the
# sinusoidal embedding of the rate loses its meaning (its longest period is 10,000)
MAX_FPS = 1000.0


@dataclass
class VideoOutput:
    frames: np.ndarray  # uint8 (B, T, H, W, 3)
    latents: torch.Tensor  # (B, 4, T, h, w), scaled
    fps: float  # the clip's frame rate (what a video model was told)


def two_experts(video_denoiser: Denoiser, image_denoiser: Denoiser, image_model_below: int) -> Denoiser:
    """One denoiser from two (eDiff-I's expert denoisers, Balaji et al. 2022; not in the paper): the
    steps from image_model_below up are the video model's, the lower ones the image model's, each
    frame on its own. The largest step in t decides, so that frame by frame, where the finished
    frames sit at step 0 or at t, it is frame k's own step: the image model then sees frame k alone,
    the last frame of the clip, and returns its prediction alone, (B, C, 1, H, W), all that
    GaussianDiffusion.ddim_sample_frame_by_frame reads."""

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if int(t.max()) >= image_model_below:
            return video_denoiser(x_t, t)
        if t.ndim == 2:  # frame by frame: a step per frame (B, k + 1), frame k the last
            return image_denoiser(x_t[:, :, -1:], t[:, -1])
        return image_denoiser(x_t, t)  # jointly: the image U-Net takes each frame of the clip on its own

    return denoiser


def with_frame_cache(unet: UNet3D, cache: FrameCache) -> Callable[..., torch.Tensor]:
    """unet(x, t, **condition) for frame-by-frame sampling beside clean finished frames, computing
    only the newest frame: the clip x (B, C, k+1, H, W) holds finished frames 0..k-1 at step 0 and
    frame k; those not yet in the cache are recorded once (FrameCache), and the U-Net then runs on
    frame k alone beside them. Returns frame k's prediction, (B, C, 1, H, W), all that
    GaussianDiffusion.ddim_sample_frame_by_frame reads. The same prediction as unet on the whole clip
    (tests/test_pipeline.py), at 1/(k+1) of its cost."""

    def newest_frame(x: torch.Tensor, t: torch.Tensor, **condition) -> torch.Tensor:
        newest = x.shape[2] - 1  # frame k
        if t.ndim != 2 or bool((t[:, :newest] != 0).any()):
            raise ValueError("the frame cache keeps finished frames that never change: sample frame by frame "
                             "beside clean finished frames (diffusion.past_frames clean), or without the cache")
        if cache.num_frames < newest:  # frames finished since the last call
            recorded = slice(cache.num_frames, newest)
            with cache.record(newest - cache.num_frames):
                unet(x[:, :, recorded], t[:, recorded], cache=cache, **condition)
        return unet(x[:, :, newest:], t[:, newest:], cache=cache, **condition)

    return newest_frame


def fill_between(interp_model: nn.ModuleDict, diffusion: GaussianDiffusion, keyframes: torch.Tensor,
                 prompts: list[str], stride: int, fps: float, guidance_scale: float, num_inference_steps: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The interp model's stride - 1 frames between each pair of keyframes (B, C, K, h, w), scaled
    latents of clips at fps / stride: (B, C, (K-1) S + 1, h, w) at fps, the keyframes kept exactly
    (diffusion.ddim_interpolate), each window guided by its clip's prompt. The interp model's temporal
    attention attends both ways: a frame between two keyframes reads the later one too."""
    per_clip = keyframes.shape[2] - 1  # windows, one per pair of neighbouring keyframes
    window_prompts = [prompt for prompt in prompts for _ in range(per_clip)]  # window j of clip b: row b (K-1) + j
    context, mask = interp_model["text_encoder"](window_prompts)
    empty_context, empty_mask = interp_model["text_encoder"]([""] * len(window_prompts))
    rate = torch.full((len(window_prompts),), float(fps), device=keyframes.device)
    every_frame = both_ways(stride + 1, keyframes.device)

    def interp_unet(x: torch.Tensor, t: torch.Tensor, **condition) -> torch.Tensor:
        return interp_model["unet"](x, t, attention_mask=every_frame, **condition)

    denoiser = classifier_free_guidance(interp_unet, {"context": context, "context_mask": mask, "fps": rate},
                                        {"context": empty_context, "context_mask": empty_mask, "fps": rate},
                                        guidance_scale)
    return diffusion.ddim_interpolate(denoiser, keyframes, stride, num_inference_steps, generator=generator,
                                      progress=False)


class TextToVideo:
    """A run's models as one callable: prompts in, uint8 frames out.

    image_model: the image stage's text encoder and U-Net, to which a video model hands the steps
    below diffusion.image_model_below; interp_model: the interp stage's, for `interpolate` (from_run
    loads both with the video model, where the run has them)."""

    def __init__(self, vae: AutoencoderKL, text_encoder: TextEncoder, unet: UNet3D, config: Config,
                 image_model: nn.ModuleDict | None = None, interp_model: nn.ModuleDict | None = None):
        self.vae, self.text_encoder, self.unet, self.config = vae, text_encoder, unet, config
        self.image_model, self.interp_model = image_model, interp_model
        self.diffusion = GaussianDiffusion(config.diffusion)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", stage: str | None = None,
                 decoder: str | None = None, interpolation: bool = True) -> "TextToVideo":
        """Load a run's VAE, text encoder and U-Net (EMA weights) from its directory.

        stage: "video" (unet.pt), "image" (unet_image.pt), or None for the video model where the
        run has one and the image model otherwise. decoder: "video" (the VideoVAE, videovae.pt),
        "image" (the image VAE, vae.pt), or None for the VideoVAE where the run has one.
        interpolation: also load the interp model (interp.pt) where the run has one, for
        `interpolate`; False skips it (sample.py without --interpolate: half a second saved).
        """
        run_dir = Path(run_dir)
        config = load_run_config(run_dir)
        target = resolve_device(device)
        if stage is None:
            stage = "video" if (run_dir / WEIGHTS_FILES["video"]).is_file() else "image"
        if decoder is None:
            decoder = "video" if (run_dir / WEIGHTS_FILES["videovae"]).is_file() else "image"
        if stage not in ("video", "image"):
            raise ValueError(f"stage must be 'video' or 'image', got {stage!r}")
        if decoder not in ("video", "image"):
            raise ValueError(f"decoder must be 'video' (the VideoVAE) or 'image', got {decoder!r}")
        # weights built on another VAE or image model than the run holds now are refused
        interp = interpolation and stage == "video" and (run_dir / WEIGHTS_FILES["interp"]).is_file()
        for used in [stage] + (["videovae"] if decoder == "video" else []) + (["interp"] if interp else []):
            path = run_dir / WEIGHTS_FILES[used]
            if path.is_file():
                check_built_on(run_dir, used, path)
        image_model = load_image_model(run_dir, target)
        model = load_video_model(run_dir, target) if stage == "video" else image_model
        vae = load_video_vae(run_dir, target) if decoder == "video" else load_vae(run_dir, target)
        return cls(vae, model["text_encoder"], model["unet"], config, image_model if stage == "video" else None,
                   load_interp_model(run_dir, target) if interp else None)

    @property
    def device(self) -> torch.device:
        return self.vae.encoder.conv_in.weight.device

    @property
    def default_fps(self) -> float:
        """The frame rate a call conditions on unless told: the highest the run trained on, data.fps
        over the smallest of data.frame_strides (the slowest motion a frame)."""
        return max(frame_rates(self.config.data))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_frames: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 fps: float | None = None, seed: int = 0, eta: float = 0.0,
                 sampling: str | None = None, image_model_below: int | None = None,
                 unguided_below: int | None = None, progress: bool = False, frame_cache: bool = True,
                 interpolate: int | None = None) -> VideoOutput:
        """Generate one clip per prompt. Defaults: the run's num_frames (1 for an image model), its
        num_inference_steps, guidance_scale, video_sampling ("frame_by_frame" or "joint"),
        image_model_below (steps below it are the image model's, 0: none) and unguided_below (steps
        below it go without guidance, 0: none), and fps = default_fps, the highest rate it trained on.
        frame_cache: frame by frame beside clean finished frames, compute each frame alone beside
        their kept keys and values (with_frame_cache; the same clip, within float rounding).
        interpolate=S: num_frames keyframes at fps (default: default_fps / S), then S-1 frames filled
        between each pair by the interp model: (num_frames - 1) S + 1 frames at S fps."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        defaults = self.config.diffusion  # the run's
        steps = defaults.num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        sampling = defaults.video_sampling if sampling is None else sampling
        unguided = defaults.unguided_below if unguided_below is None else unguided_below
        below = defaults.image_model_below if image_model_below is None else image_model_below
        self._check_prompts(prompts)
        self._check_settings(scale, eta, sampling, unguided, below)
        if interpolate is not None:
            self._check_interpolation(interpolate)
            fps = self.default_fps / interpolate if fps is None else fps
        num_frames, condition = self._frames_and_rate(len(prompts), num_frames, fps)
        if interpolate is not None and num_frames < 2:
            raise ValueError(f"interpolate={interpolate} fills frames between keyframes: ask for num_frames 2 or more")
        cached = frame_cache and sampling == "frame_by_frame" and defaults.past_frames == "clean" and self.unet.is_video
        denoiser = self.denoiser(prompts, condition, scale, unguided, below if self.unet.is_video else 0,
                                 FrameCache() if cached else None)

        latent_size = self.config.data.image_size // self.config.vae.downsample_factor
        generator = torch.Generator(self.device).manual_seed(seed)
        noise = self.diffusion.noise((len(prompts), self.config.vae.latent_channels, num_frames, latent_size,
                                      latent_size), generator, self.device)
        if sampling == "frame_by_frame":  # one frame (an image): the two samplers are the same
            latents = self.diffusion.ddim_sample_frame_by_frame(denoiser, noise, steps, eta, generator, progress,
                                                                clean_past=defaults.past_frames == "clean")
        else:
            latents = self.diffusion.ddim_sample(denoiser, noise, steps, eta, generator, progress)
        rate = float(condition["fps"][0]) if condition else self.default_fps
        if interpolate is not None:
            rate *= interpolate
            latents = fill_between(self.interp_model, self.diffusion, latents, prompts, interpolate, rate, scale, steps,
                                   generator)
        return VideoOutput(frames=self.decode(latents), latents=latents, fps=rate)

    @staticmethod
    def _check_prompts(prompts: list[str]) -> None:
        """A prompt with text but no word the tokenizer reads (emoji, digits) would be sampled as the empty,
        unconditional prompt: an error instead. The empty prompt "" itself asks for that, and is taken."""
        for prompt in prompts:
            if prompt.strip() and not prompt_words(prompt):
                raise ValueError(f"prompt {prompt!r} has no words the text encoder reads (it reads runs of the "
                                 f"letters a-z), so it would sample as the empty prompt; describe the clip in "
                                 f"words, for example \"a red circle moving left\"")

    def _check_settings(self, scale: float, eta: float, sampling: str, unguided_below: int,
                        image_model_below: int) -> None:
        if not 0 <= scale < math.inf:
            raise ValueError(f"guidance_scale={scale}: use a finite number >= 0 (1: the conditional prediction "
                             f"alone, 0: the unconditional one; this run's default is "
                             f"{self.config.diffusion.guidance_scale:g})")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta={eta}: use a number from 0 (deterministic DDIM) to 1 (DDPM-like noise)")
        if sampling not in ("frame_by_frame", "joint"):
            raise ValueError(f"sampling={sampling!r}: use 'frame_by_frame' (each frame after the finished "
                             f"ones, as the causal attention reads a clip) or 'joint' (all frames at once)")
        check_step("unguided_below", unguided_below, self.diffusion.num_train_timesteps)
        check_step("image_model_below", image_model_below, self.diffusion.num_train_timesteps)

    def _check_interpolation(self, stride: int) -> None:
        strides = self.config.train.interp_strides
        if self.interp_model is None:
            raise ValueError(f"interpolate={stride}: this pipeline has no frame interpolation model; train the run's "
                             f"interp stage (python train.py --name NAME --stage interp) and load it with from_run")
        if stride not in strides:
            raise ValueError(f"interpolate={stride}: this run's interp model fills the frames between keyframes "
                             f"{', '.join(map(str, strides))} frames apart (train.interp_strides); use one of those")

    def _frames_and_rate(self, batch: int, num_frames: int | None, fps: float | None) -> tuple[int, dict]:
        """The clip length and the U-Net's frame-rate condition {"fps": (B,)} ({} for an image model)."""
        data = self.config.data
        if not self.unet.is_video:
            if num_frames not in (None, 1):
                raise ValueError(f"num_frames={num_frames}: this is a text-to-image model (the run has "
                                 f"no video stage yet), it makes single images (num_frames=1)")
            return 1, {}
        num_frames = data.num_frames if num_frames is None else num_frames
        if not 1 <= num_frames <= self.unet.max_frames:
            raise ValueError(f"num_frames={num_frames}: this model makes clips of 1 to "
                             f"{self.unet.max_frames} frames (data.num_frames of its run)")
        fps = self.default_fps if fps is None else fps
        if not 0 < fps <= MAX_FPS:
            raise ValueError(f"fps={fps}: the frame rate must be positive and at most {MAX_FPS:g}; this run "
                             f"trained on {', '.join(f'{rate:g}' for rate in frame_rates(data))}")
        return num_frames, {"fps": torch.full((batch,), float(fps), device=self.device)}

    def denoiser(self, prompts: list[str], condition: dict, guidance_scale: float, unguided_below: int = 0,
                 image_model_below: int = 0, cache: FrameCache | None = None) -> Denoiser:
        """The U-Net's prediction for `prompts` with classifier-free guidance; with image_model_below
        > 0, the image model's below that step (two_experts); with a cache, the video U-Net's
        frame by frame through with_frame_cache."""

        def guided(text_encoder: TextEncoder, unet: Callable[..., torch.Tensor], condition: dict) -> Denoiser:
            context, mask = text_encoder(prompts)
            empty_context, empty_mask = text_encoder([""] * len(prompts))
            return classifier_free_guidance(unet, {"context": context, "context_mask": mask, **condition},
                                            {"context": empty_context, "context_mask": empty_mask, **condition},
                                            guidance_scale, unguided_below)

        video_unet = self.unet if cache is None else with_frame_cache(self.unet, cache)
        video_denoiser = guided(self.text_encoder, video_unet, condition)
        if image_model_below == 0:
            return video_denoiser
        if self.image_model is None:
            raise ValueError(f"image_model_below={image_model_below}: this pipeline has no image model for the "
                             f"low steps; load it with TextToVideo.from_run, or pass "
                             f"image_model=load_image_model(run_dir) (tiny_magicvideo.runs)")
        image_denoiser = guided(self.image_model["text_encoder"], self.image_model["unet"], {})
        return two_experts(video_denoiser, image_denoiser, image_model_below)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (B, 4, T, h, w) -> uint8 frames (B, T, H, W, 3); non-finite values are an error."""
        video = self.vae.decode_video(latents)
        if not torch.isfinite(video).all():  # would be saved as black frames
            raise ValueError("the sampled clip holds non-finite values (NaN or inf): the weights or the sampling "
                             "settings (guidance_scale, num_inference_steps) are broken; nothing was written")
        return video_to_frames(video.clamp(-1, 1))
