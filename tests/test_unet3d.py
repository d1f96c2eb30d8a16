import dataclasses

import pytest
import torch

from tiny_magicvideo.attention import SpatialTransformer, TemporalAttention, both_ways
from tiny_magicvideo.config import UNetConfig
from tiny_magicvideo.diffusion import twin_clip_layout, twin_clips
from tiny_magicvideo.unet3d import FrameAdaptor, UNet3D, set_trainable, timestep_embedding

TINY = UNetConfig(base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_heads=2)


def test_timestep_embedding_is_the_sinusoid():
    t = torch.tensor([0, 10, 999])
    embedding = timestep_embedding(t, 8)
    frequencies = 10_000 ** (-torch.arange(4) / 4)
    assert torch.allclose(embedding[1], torch.cat([torch.cos(10 * frequencies), torch.sin(10 * frequencies)]))
    assert torch.allclose(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_unet_keeps_the_latent_shape_and_starts_at_zero():
    torch.manual_seed(0)
    unet = UNet3D(TINY, latent_channels=4, context_width=8)
    x = torch.randn(2, 4, 3, 8, 8)
    out = unet(x, torch.tensor([5, 500]), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape
    assert out.abs().max() == 0  # zero-initialised output convolution


def trained_a_little(config=TINY):
    torch.manual_seed(0)
    unet = UNet3D(config, latent_channels=4, context_width=8)
    for parameter in unet.parameters():  # move every weight off its initial value
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return unet


def test_image_mode_treats_every_frame_as_an_independent_image():
    unet = trained_a_little()
    x, context = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 5, 8)
    t = torch.tensor([100, 700])
    clip = unet(x, t, context)
    for frame in range(3):
        alone = unet(x[:, :, frame:frame + 1], t, context)
        assert torch.allclose(clip[:, :, frame:frame + 1], alone, atol=1e-5)


def changes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """More than rounding: outputs here are ~0.3 in size, float32 rounding ~1e-6."""
    return (a - b).abs().max().item() > 1e-2


def test_text_and_step_reach_the_output():
    unet = trained_a_little()
    x, t = torch.randn(1, 4, 1, 8, 8), torch.tensor([300])
    base = unet(x, t, torch.zeros(1, 5, 8))
    assert changes(base, unet(x, t, torch.ones(1, 5, 8)))
    # every channel count of TINY has one channel per GroupNorm group: the step must enter after the norm
    assert changes(base, unet(x, torch.tensor([301]), torch.zeros(1, 5, 8)))


def test_gradients_reach_every_parameter():
    unet = trained_a_little()
    unet(torch.randn(1, 4, 2, 8, 8), torch.tensor([10]), torch.randn(1, 5, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())


def test_latent_sizes_the_levels_cannot_halve_are_clear_errors():
    unet = UNet3D(UNetConfig(base_channels=16, channel_mults=(1, 2, 2), num_heads=2), 4, 8)
    with pytest.raises(ValueError, match="latent size 6x6 is not divisible by 4"):
        unet(torch.randn(1, 4, 1, 6, 6), torch.tensor([1]), torch.randn(1, 5, 8))


# ---------------------------------------------------------------------------------------------
# Video mode: frame-wise adaptors, directed temporal attention, frame-rate embedding, inflation.

FPS = torch.tensor([8.0, 4.0])


# unet.temporal_text: the temporal attention also cross-attends to the text
WITH_TEXT = dataclasses.replace(TINY, temporal_text=True)
VARIANTS = dict(argvalues=[TINY, WITH_TEXT], ids=["paper", "temporal_text"])


def video_trained_a_little(max_frames=4, config=TINY):
    """An inflated U-Net with every weight moved off its initial value (zero-init layers included),
    so that properties which only hold at initialisation cannot pass by accident."""
    video = UNet3D.from_image(trained_a_little(config), max_frames)
    torch.manual_seed(1)
    for parameter in video.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return video


def test_frame_adaptor_starts_as_the_identity_and_scales_each_frame_by_its_own_values():
    adaptor = FrameAdaptor(channels=3, max_frames=4)
    z = torch.randn(2 * 4, 3, 5, 5)  # (B*T, C, H, W)
    assert torch.equal(adaptor(z, torch.arange(4)), z)
    with torch.no_grad():
        adaptor.scale.copy_(torch.randn(4, 3))
        adaptor.shift.copy_(torch.randn(4, 3))
    out = adaptor(z, torch.arange(4)).unflatten(0, (2, 4))
    clips = z.unflatten(0, (2, 4))
    for i in range(4):  # z_i = S_i * z_i + B_i, per channel
        expected = adaptor.scale[i][:, None, None] * clips[:, i] + adaptor.shift[i][:, None, None]
        assert torch.allclose(out[:, i], expected)


def test_image_mode_has_no_video_parameters():
    unet = UNet3D(TINY, latent_channels=4, context_width=8)
    assert unet.video_parameter_names() == [] and not unet.is_video
    assert not any(isinstance(m, (FrameAdaptor, TemporalAttention)) for m in unet.modules())


@pytest.mark.parametrize("config", **VARIANTS)
def test_inflated_unet_gives_exactly_the_image_unets_output_frame_by_frame(config):
    image = trained_a_little(config)
    video = UNet3D.from_image(image, max_frames=4)
    # every image weight is reused unchanged
    video_state = video.state_dict()
    assert all(torch.equal(value, video_state[name]) for name, value in image.state_dict().items())
    x, t, context = torch.randn(2, 4, 4, 8, 8), torch.tensor([30, 800]), torch.randn(2, 5, 8)
    frame_by_frame = torch.cat([image(x[:, :, i:i + 1], t, context) for i in range(4)], dim=2)
    for fps in (FPS, torch.tensor([1.0, 30.0])):
        out = video(x, t, context, fps=fps)
        assert torch.equal(out, image(x, t, context))  # bit for bit, the same batch layout
        assert torch.allclose(out, frame_by_frame, atol=1e-5)  # (summation order differs by batch size)


@pytest.mark.parametrize("config", **VARIANTS)
def test_a_fresh_interp_model_is_the_image_model_on_the_noisy_channels(config):
    image = trained_a_little(config)
    interp = UNet3D.from_image(image, max_frames=5, condition_channels=5)
    assert torch.equal(interp.conv_in.weight[:, :4], image.conv_in.weight)
    assert interp.conv_in.weight[:, 4:].abs().max() == 0  # the keyframes' channels start at zero
    x, condition = torch.randn(2, 4, 5, 8, 8), torch.randn(2, 5, 5, 8, 8)
    t, context = torch.tensor([30, 800]), torch.randn(2, 5, 8)
    out = interp(torch.cat([x, condition], dim=1), t, context, fps=FPS, attention_mask=both_ways(5))
    assert out.shape == x.shape
    torch.testing.assert_close(out, image(x, t, context), rtol=0, atol=1e-5)  # (another conv sums 9 channels)


@pytest.mark.parametrize("config", **VARIANTS)
def test_changing_frame_k_leaves_the_whole_models_outputs_for_earlier_frames_unchanged(config):
    video = video_trained_a_little(max_frames=5, config=config)
    x, t, context = torch.randn(2, 4, 5, 8, 8), torch.tensor([30, 800]), torch.randn(2, 5, 8)
    out = video(x, t, context, fps=FPS)
    for k in range(5):
        changed = x.clone()
        changed[:, :, k] += torch.randn_like(changed[:, :, k])
        new = video(changed, t, context, fps=FPS)
        assert torch.allclose(new[:, :, :k], out[:, :, :k], atol=1e-5), k  # the past ignores frame k
        assert (new[:, :, k:] - out[:, :, k:]).flatten(3).abs().amax(-1).min() > 1e-4, k  # the future sees it


@pytest.mark.parametrize("config", **VARIANTS)
def test_each_noisy_twin_frame_gets_exactly_what_frame_by_frame_sampling_gives_it(config):
    """twin_clip_layout: the clean clip and its noisy twin in one pass; noisy frame k's output is the
    model's output for frame k of the plain clip [clean 0..k-1, noisy k] (what the sampler builds)."""
    video = video_trained_a_little(max_frames=4, config=config)
    clean, noisy = torch.randn(2, 4, 4, 8, 8), torch.randn(2, 4, 4, 8, 8)
    t, context = torch.tensor([[900, 30, 500, 999], [0, 700, 1, 250]]), torch.randn(2, 5, 8)
    frame_index, mask = twin_clip_layout(4)
    sequence, sequence_steps = twin_clips(clean, noisy, t)  # clean frames 0..2, then noisy frames 0..3
    twin = video(sequence, sequence_steps, context, fps=FPS, frame_index=frame_index, attention_mask=mask)
    for k in range(4):
        clip = torch.cat([clean[:, :, :k], noisy[:, :, k:k + 1]], dim=2)  # (B, C, k + 1, H, W)
        steps = torch.cat([torch.zeros(2, k, dtype=torch.long), t[:, k:k + 1]], dim=1)
        alone = video(clip, steps, context, fps=FPS)
        assert torch.allclose(twin[:, :, 3 + k], alone[:, :, -1], atol=1e-5), k  # noisy frame k
        assert torch.allclose(twin[:, :, :k], alone[:, :, :k], atol=1e-5), k  # the clean past
    with pytest.raises(ValueError, match=r"frame_index \[0, 1, 2, 4\]: pass the position in its clip, 0 to 3"):
        video(clean, t, context, fps=FPS, frame_index=torch.tensor([0, 1, 2, 4]))


def test_a_step_per_frame_reaches_that_frame_and_the_later_ones_only():
    video = video_trained_a_little(max_frames=4)
    x, t, context = torch.randn(2, 4, 4, 8, 8), torch.tensor([30, 800]), torch.randn(2, 5, 8)
    out = video(x, t, context, fps=FPS)
    assert torch.equal(video(x, t[:, None].expand(2, 4), context, fps=FPS), out)  # (B,) is (B, T) repeated
    per_frame = torch.tensor([[30, 30, 0, 30], [800, 800, 0, 800]])  # frame 2 clean
    new = video(x, per_frame, context, fps=FPS)
    assert torch.allclose(new[:, :, :2], out[:, :, :2], atol=1e-5)  # causal: the past ignores frame 2's step
    assert changes(new[:, :, 2:], out[:, :, 2:])
    with pytest.raises(ValueError, match=r"shape \(2, 3\): pass one per clip \(2,\) or one per frame \(2, 4\)"):
        video(x, per_frame[:, :3], context, fps=FPS)


def test_temporal_attention_sits_beside_the_spatial_transformers_only():
    video = UNet3D.from_image(UNet3D(TINY, latent_channels=4, context_width=8), max_frames=4)
    for level in [*video.down, video.middle, *video.up]:
        for spatial, temporal in zip(level.transformers, level.temporal):
            assert isinstance(spatial, SpatialTransformer) == isinstance(temporal, TemporalAttention)
    assert not any(isinstance(m, TemporalAttention) for m in video.down[0].temporal)  # level 0: no attention


def test_frame_rate_reaches_the_output_once_trained():
    video = video_trained_a_little()
    x, t, context = torch.randn(2, 4, 4, 8, 8), torch.tensor([30, 800]), torch.randn(2, 5, 8)
    assert changes(video(x, t, context, fps=FPS), video(x, t, context, fps=FPS * 2))


@pytest.mark.parametrize("config", **VARIANTS)
def test_gradients_reach_the_adaptors_temporal_attention_and_frame_rate_embedding(config):
    video = UNet3D.from_image(trained_a_little(config), max_frames=4)
    set_trainable(video, "temporal")
    trainable = {name for name, p in video.named_parameters() if p.requires_grad}
    assert trainable == set(video.video_parameter_names())
    assert any("adaptor" in n for n in trainable) and any("temporal" in n for n in trainable)
    assert any(n.startswith("fps_mlp") for n in trainable)
    assert any(".cross_attention." in n and ".temporal." in n for n in trainable) == config.temporal_text
    frozen = {name: p.detach().clone() for name, p in video.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in video.parameters() if p.requires_grad], lr=0.1)
    x, t, context = torch.randn(2, 4, 4, 8, 8), torch.tensor([30, 800]), torch.randn(2, 5, 8)
    for _ in range(2):  # the zero-initialised output layers pass gradients on once they have moved
        optimizer.zero_grad()
        (video(x, t, context, fps=FPS) - x).square().mean().backward()
        optimizer.step()
    for name, parameter in video.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None and torch.equal(parameter, frozen[name]), name
    set_trainable(video, "all")
    assert all(p.requires_grad for p in video.parameters())


def test_video_mode_requests_it_cannot_take_are_clear_errors():
    video = UNet3D.from_image(trained_a_little(), max_frames=4)
    x, t, context = torch.randn(1, 4, 5, 8, 8), torch.tensor([1]), torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="5 frames: this video U-Net has frame adaptors for 1 to 4"):
        video(x, t, context, fps=FPS[:1])
    with pytest.raises(ValueError, match="needs the clips' frame rate"):
        video(x[:, :, :4], t, context)
    with pytest.raises(ValueError, match="already a video U-Net"):
        UNet3D.from_image(video, 4)
    with pytest.raises(ValueError, match="'temporal' or 'all'"):
        set_trainable(video, "some")
