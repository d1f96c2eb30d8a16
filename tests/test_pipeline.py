import re

import numpy as np
import pytest
import torch

import helpers
from helpers import load_video
from tiny_magicvideo.attention import FrameCache
from tiny_magicvideo.config import DiffusionConfig, UNetConfig
from tiny_magicvideo.diffusion import GaussianDiffusion, classifier_free_guidance
from tiny_magicvideo.media import save_strip
from tiny_magicvideo.pipeline import TextToVideo, two_experts, with_frame_cache
from tiny_magicvideo.unet3d import UNet3D
from tiny_magicvideo.vae import VideoVAE


def test_from_run_generates_clips_of_the_run_size(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    assert pipeline.unet.is_video
    output = pipeline(["a red circle moving left", "a blue square moving up"], num_inference_steps=3)
    assert output.frames.shape == (2, 4, 32, 32, 3) and output.frames.dtype == np.uint8
    assert output.latents.shape == (2, 4, 4, 8, 8)
    assert pipeline("a red circle", num_frames=2, num_inference_steps=2, fps=4.0).frames.shape == (1, 2, 32, 32, 3)


def test_the_image_model_of_a_run_still_loads(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu", stage="image")
    assert not pipeline.unet.is_video
    assert pipeline("a red circle moving left", num_inference_steps=2).frames.shape == (1, 1, 32, 32, 3)
    with pytest.raises(ValueError, match="num_frames=8.*single images"):
        pipeline("a red circle", num_frames=8)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_fixed_seed_gives_the_same_clips(smoke_run, eta):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")

    def sample(seed, fps=8.0):
        return pipeline("a red circle moving left", num_inference_steps=3, seed=seed, eta=eta, fps=fps).frames

    first = sample(7)
    assert np.array_equal(first, sample(7))
    assert not np.array_equal(first, sample(8))
    joint = pipeline("a red circle moving left", num_inference_steps=3, seed=7, eta=eta, sampling="joint").frames
    assert np.array_equal(joint, pipeline("a red circle moving left", num_inference_steps=3, seed=7, eta=eta,
                                          sampling="joint").frames)


def test_clean_past_frames_change_frame_by_frame_sampling_after_frame_0(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    assert pipeline.config.diffusion.past_frames == "noised"
    noised = pipeline("a red circle moving left", num_inference_steps=3, sampling="frame_by_frame").latents
    pipeline.config.diffusion.past_frames = "clean"  # as a run trained with --diffusion.past_frames clean
    clean = pipeline("a red circle moving left", num_inference_steps=3, sampling="frame_by_frame").latents
    assert torch.equal(clean[:, :, 0], noised[:, :, 0])  # frame 0 has no past
    assert not torch.allclose(clean[:, :, 1:], noised[:, :, 1:], atol=1e-4)


def test_the_image_model_takes_the_low_steps_where_the_run_says(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    assert pipeline.config.diffusion.image_model_below == 0 and pipeline.image_model is not None

    def sample(below, sampling="frame_by_frame"):
        return pipeline("a red circle moving left", num_inference_steps=3, sampling=sampling,
                        image_model_below=below).latents

    assert torch.equal(sample(None), sample(0))  # the run's setting
    for sampling in ("frame_by_frame", "joint"):  # of the 3 DDIM steps 999, 500 and 0, the last two
        assert not torch.allclose(sample(0, sampling), sample(600, sampling), atol=1e-3)
    # the image model throughout: no frame sees another, so the two sampling orders agree
    assert torch.allclose(sample(1000), sample(1000, "joint"), atol=1e-5)
    with pytest.raises(ValueError, match="image_model_below 1001 is not a step"):
        sample(1001)
    without = TextToVideo(pipeline.vae, pipeline.text_encoder, pipeline.unet, pipeline.config)
    with pytest.raises(ValueError, match="image_model_below=600: this pipeline has no image model"):
        without("a red circle", num_inference_steps=3, image_model_below=600)


@pytest.mark.parametrize("clean_past", [False, True])
def test_two_experts_hand_frame_k_alone_to_the_image_model_below_the_step(clean_past):
    d = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    noise = torch.randn(2, 3, 3, 5, 5, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    video_steps, image_calls = [], []

    def video_model(x, t):
        video_steps.append(int(t[0].max()))  # the step of the frame being drawn
        return 0.5 * x

    def image_model(x, t):
        image_calls.append((x.shape, t.tolist()))
        return 0.25 * x

    timesteps = d.ddim_timesteps(6).tolist()  # 999, 799, ..., 0
    d.ddim_sample_frame_by_frame(two_experts(video_model, image_model, 500), noise, 6, progress=False,
                                 clean_past=clean_past)
    assert video_steps == [s for s in timesteps if s >= 500] * 3  # each frame's noisiest steps
    assert image_calls == [((2, 3, 1, 5, 5), [s, s]) for s in timesteps if s < 500] * 3  # frame k on its own
    image_calls.clear()
    video_steps.clear()
    d.ddim_sample(two_experts(video_model, image_model, 500), noise, 6, progress=False)  # jointly: the whole clip
    assert video_steps == [s for s in timesteps if s >= 500]
    assert image_calls == [((2, 3, 3, 5, 5), [s, s]) for s in timesteps if s < 500]


def random_video_unet(temporal_text: bool) -> UNet3D:
    """A small inflated U-Net with every weight moved off its initial value, the temporal attention's
    zero output projection included, so that frames do see each other."""
    torch.manual_seed(0)
    config = UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_heads=2,
                        temporal_text=temporal_text)
    unet = UNet3D.from_image(UNet3D(config, latent_channels=4, context_width=8), max_frames=4)
    for parameter in unet.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return unet.eval()


@pytest.mark.parametrize("temporal_text", [False, True])
def test_the_frame_cache_gives_the_clip_of_the_uncached_sampler_with_guidance_and_both_experts(temporal_text):
    video_unet, image_unet = random_video_unet(temporal_text), UNet3D(
        UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_heads=2), 4, 8)
    d = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    g = torch.Generator().manual_seed(1)
    context, mask = torch.randn(2, 5, 8, generator=g), torch.tensor([[True] * 5, [True, True, False, False, False]])
    conditional = {"context": context, "context_mask": mask, "fps": torch.tensor([8.0, 4.0])}
    unconditional = {"context": torch.zeros(2, 5, 8), "context_mask": torch.ones(2, 5, dtype=torch.bool),
                     "fps": torch.tensor([8.0, 4.0])}
    noise = torch.randn(2, 4, 4, 8, 8, generator=g)  # (B, C, T, H, W)
    calls = []

    def sample(video_model, image_model_below):
        """Guided above step 400 (both conditions, 2B rows) and unguided below (B rows)."""
        video = classifier_free_guidance(video_model, conditional, unconditional, 2.0, unguided_below=400)
        image = classifier_free_guidance(image_unet, {"context": context, "context_mask": mask},
                                         {"context": unconditional["context"], "context_mask": mask}, 2.0)
        denoiser = two_experts(video, image, image_model_below) if image_model_below else video
        return d.ddim_sample_frame_by_frame(denoiser, noise, 5, progress=False, clean_past=True)

    def counted(x, t, **condition):
        calls.append(x.shape[2])  # frames computed
        return video_unet(x, t, **condition)

    for image_model_below in (0, 300):
        calls.clear()
        cached = sample(with_frame_cache(counted, FrameCache()), image_model_below)
        assert set(calls) == {1}  # frame k alone, and each finished frame recorded once
        uncached = sample(video_unet, image_model_below)
        assert torch.allclose(cached, uncached, atol=1e-4), (cached - uncached).abs().max()
    with pytest.raises(ValueError, match="past_frames clean"):  # noised finished frames change at every step
        conditioned = lambda x, t, **cache: video_unet(x, t, **conditional, **cache)
        d.ddim_sample_frame_by_frame(with_frame_cache(conditioned, FrameCache()), noise, 5, progress=False)


def test_unguided_below_changes_only_the_steps_below_it(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    assert pipeline.config.diffusion.unguided_below == 0

    def sample(unguided_below, guidance_scale=3.0):
        return pipeline("a red circle moving left", num_inference_steps=3, guidance_scale=guidance_scale,
                        unguided_below=unguided_below).latents

    assert torch.equal(sample(None), sample(0))  # the run's setting: guidance at every step
    assert not torch.allclose(sample(0), sample(600), atol=1e-3)  # of the steps 999, 500 and 0, the last two
    assert torch.equal(sample(1000), sample(0, guidance_scale=1.0))  # no guidance at all
    with pytest.raises(ValueError, match="unguided_below -1 is not a step"):
        sample(-1)


def test_frame_rate_changes_the_clip(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    slow, fast = (pipeline("a red circle moving left", num_inference_steps=3, fps=fps).latents for fps in (8.0, 4.0))
    assert not np.allclose(slow.numpy(), fast.numpy())


def test_bad_requests_are_clear_errors(smoke_run, tmp_path):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and 1000, got 0"):
        pipeline("a red circle", num_inference_steps=0)
    with pytest.raises(ValueError, match="num_frames=8: this model makes clips of 1 to 4 frames"):
        pipeline("a red circle", num_frames=8)
    for fps in (0, -1, float("inf"), float("nan"), 1e308):
        with pytest.raises(ValueError, match=re.escape(f"fps={fps}: the frame rate must be positive and at most "
                                                       "1000; this run trained on 8, 4")):
            pipeline("a red circle", fps=fps)
    for scale in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match=f"guidance_scale={scale}: use a finite number >= 0"):
            pipeline("a red circle", guidance_scale=scale)
    for eta in (float("nan"), 2.0):
        with pytest.raises(ValueError, match=f"eta={eta}: use a number from 0"):
            pipeline("a red circle", eta=eta)
    with pytest.raises(ValueError, match="sampling='backwards': use 'frame_by_frame' .* or 'joint'"):
        pipeline("a red circle", sampling="backwards")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextToVideo.from_run(tmp_path)
    with pytest.raises(ValueError, match="stage must be 'video' or 'image'"):
        TextToVideo.from_run(smoke_run, stage="audio")
    with pytest.raises(ValueError, match="decoder must be 'video' .* or 'image'"):
        TextToVideo.from_run(smoke_run, decoder="audio")


def test_interpolation_keeps_the_keyframe_clip_and_multiplies_frames_and_frame_rate(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    assert pipeline.interp_model is not None and pipeline.config.train.interp_strides == (2,)
    keyframes = pipeline("a red circle moving left", num_inference_steps=2, fps=4.0, seed=3)
    filled = pipeline("a red circle moving left", num_inference_steps=2, seed=3, interpolate=2)  # keyframes at 8 / 2
    assert (keyframes.fps, filled.fps) == (4.0, 8.0) and filled.frames.shape == (1, (4 - 1) * 2 + 1, 32, 32, 3)
    assert torch.equal(filled.latents[:, :, ::2], keyframes.latents)  # the keyframes, unchanged at frames 0, 2, 4, 6
    assert not torch.equal(filled.latents[:, :, 1], filled.latents[:, :, 0])
    assert pipeline("a red circle", num_inference_steps=2, fps=2.0, interpolate=2).fps == 4.0
    for stride in (0, 1, 3):
        with pytest.raises(ValueError, match=f"interpolate={stride}: this run's interp model fills the frames "
                                             "between keyframes 2 frames apart"):
            pipeline("a red circle", interpolate=stride)
    with pytest.raises(ValueError, match="interpolate=2 fills frames between keyframes: ask for num_frames 2 or more"):
        pipeline("a red circle", num_frames=1, interpolate=2)
    pipeline = TextToVideo.from_run(smoke_run, device="cpu", interpolation=False)  # as sample.py without --interpolate
    assert pipeline.interp_model is None
    with pytest.raises(ValueError, match="interpolate=2: this pipeline has no frame interpolation model; train the "
                                         "run's interp stage"):
        pipeline("a red circle", interpolate=2)


def test_a_clip_with_non_finite_values_is_an_error_not_black_frames(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    with torch.no_grad():
        pipeline.unet.conv_out.bias.fill_(float("inf"))  # weights that passed the load check, then broke
    with pytest.raises(ValueError, match="the sampled clip holds non-finite values"):
        pipeline("a red circle", num_inference_steps=2)


def test_the_video_vae_decodes_where_the_run_has_one(smoke_run):
    by_clip = TextToVideo.from_run(smoke_run, device="cpu")  # the default: the run's VideoVAE
    by_frame = TextToVideo.from_run(smoke_run, device="cpu", decoder="image")
    assert isinstance(by_clip.vae, VideoVAE) and not isinstance(by_frame.vae, VideoVAE)
    clip, frames = (p("a red circle moving left", num_inference_steps=2) for p in (by_clip, by_frame))
    assert torch.equal(clip.latents, frames.latents)  # the same diffusion, another decoder
    assert not np.array_equal(clip.frames, frames.frames)


def test_a_run_without_the_video_stage_is_a_clear_error(tmp_path):
    run_dir = helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--stage", "vae"])
    helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path), "--stage", "image"])
    assert not TextToVideo.from_run(run_dir).unet.is_video  # the image model, by default
    with pytest.raises(FileNotFoundError, match="no video model.*--stage video"):
        TextToVideo.from_run(run_dir, stage="video")
    with pytest.raises(FileNotFoundError, match="no VideoVAE.*--stage videovae"):
        TextToVideo.from_run(run_dir, decoder="video")


def test_save_strip_puts_frames_side_by_side(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    strip = load_video(save_strip(frames, tmp_path / "strip.png", gap=2))[0]
    assert strip.shape == (8, 3 * 10 + 2 * 2, 3)
    assert np.array_equal(strip[:, 12:22], frames[1])
