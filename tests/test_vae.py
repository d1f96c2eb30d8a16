import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from tiny_magicvideo.config import VAEConfig
from tiny_magicvideo.vae import AutoencoderKL, DiagonalGaussian, TemporalConvBlock, VideoVAE, measure_scaling_factor


@pytest.mark.parametrize("factor", [4, 8])
def test_latent_shapes_for_4x_and_8x(factor):
    vae = AutoencoderKL(VAEConfig(downsample_factor=factor, base_channels=8))
    images = torch.randn(2, 3, 64, 48)
    posterior = vae.encode(images)
    assert posterior.mean.shape == (2, 4, 64 // factor, 48 // factor)
    assert posterior.sample().shape == posterior.mean.shape
    assert vae.decode(posterior.mean).shape == images.shape


def test_sizes_the_vae_cannot_take_are_clear_errors():
    vae = AutoencoderKL(VAEConfig(downsample_factor=8, base_channels=8))
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(torch.randn(1, 3, 36, 36))
    with pytest.raises(ValueError, match="must be 4 or 8"):
        AutoencoderKL(VAEConfig(downsample_factor=2))


def test_kl_matches_the_closed_form_and_torch_distributions():
    torch.manual_seed(0)
    mean, log_variance = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    posterior = DiagonalGaussian(torch.cat([mean, log_variance], dim=1))
    reference = kl_divergence(Normal(mean, (0.5 * log_variance).exp()), Normal(0.0, 1.0))
    assert torch.allclose(posterior.kl(), reference.flatten(1).sum(1), rtol=1e-5)
    # KL of the prior against itself is zero
    assert posterior.kl().min() > 0
    assert DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl().item() == 0.0


def test_reparameterised_samples_have_the_posterior_statistics_and_gradients():
    mean = torch.full((1, 4, 32, 32), 2.0, requires_grad=True)
    log_variance = torch.full((1, 4, 32, 32), 2 * torch.tensor(0.5).log().item(), requires_grad=True)
    posterior = DiagonalGaussian(torch.cat([mean, log_variance], dim=1))
    samples = posterior.sample(torch.Generator().manual_seed(0))
    assert samples.mean().item() == pytest.approx(2.0, abs=0.03)
    assert samples.std().item() == pytest.approx(0.5, abs=0.03)
    samples.sum().backward()  # the trick: noise is an input, so gradients reach mean and sigma
    assert mean.grad is not None and log_variance.grad.abs().sum() > 0


def test_video_helpers_fold_frames_into_the_batch():
    vae = AutoencoderKL(VAEConfig(base_channels=8, scaling_factor=0.5)).eval()
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    latents = vae.encode_video(video)
    assert latents.shape == (2, 4, 5, 8, 8)
    frame_3 = vae.encode(video[:, :, 3]).mean * 0.5  # frame t of the clip is encoded alone
    assert torch.allclose(latents[:, :, 3], frame_3, atol=1e-6)
    decoded = vae.decode_video(latents)
    assert decoded.shape == video.shape
    assert torch.allclose(decoded[:, :, 3], vae.decode(frame_3 / 0.5), atol=1e-6)


def test_scaling_factor_must_be_measured_first_and_gives_unit_variance():
    vae = AutoencoderKL(VAEConfig(base_channels=8))
    with pytest.raises(ValueError, match="scaling_factor is not set"):
        vae.encode_video(torch.zeros(1, 3, 2, 32, 32))
    images = torch.rand(16, 3, 32, 32) * 2 - 1
    vae.config.scaling_factor = measure_scaling_factor(vae, images)
    with torch.no_grad():
        scaled = vae.encode(images).sample() * vae.config.scaling_factor
    assert scaled.std().item() == pytest.approx(1.0, abs=0.05)


def test_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(base_channels=8, kl_weight=0.01, reconstruction_loss="mse"))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    total, parts = vae.loss(images, torch.Generator().manual_seed(1))
    assert total.item() == pytest.approx(parts["reconstruction"] + 0.01 * parts["kl"], rel=1e-5)


# VideoVAE: the image encoder, frozen, and a decoder with temporal blocks that start at zero.


def _trained_like_vae(config: VAEConfig) -> AutoencoderKL:
    """An image VAE with non-trivial weights and a scaling factor, standing in for a trained one."""
    torch.manual_seed(0)
    vae = AutoencoderKL(config)
    config.scaling_factor = 0.7
    return vae.eval()


def test_video_vae_decodes_exactly_like_the_image_vae_before_training():
    config = VAEConfig(base_channels=8)
    vae = _trained_like_vae(config)
    video_vae = VideoVAE.from_image(vae).eval()
    clips = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = vae.encode_video(clips)
        assert torch.equal(video_vae.encode_video(clips), latents)
        assert torch.equal(video_vae.decode_video(latents), vae.decode_video(latents))
    # and it is a real change of architecture: moved off zero, the temporal blocks change the output
    for name, parameter in video_vae.named_parameters():
        if ".temporal_" in name:
            parameter.data.normal_(0, 0.1)
    with torch.no_grad():
        assert not torch.allclose(video_vae.decode_video(latents), vae.decode_video(latents), atol=1e-3)


def test_the_control_decoder_has_no_temporal_blocks_and_decodes_each_frame_alone():
    """vae.temporal_blocks false: the image decoder, fine-tunable on clips, that never mixes frames."""
    image_vae = AutoencoderKL(dataclasses.replace(VAEConfig(base_channels=8), temporal_blocks=False))
    image_vae.config.scaling_factor = 0.7
    control = VideoVAE.from_image(image_vae)
    assert not any(".temporal_" in name for name, _ in control.named_parameters())
    for parameter in control.decoder.parameters():  # trained: still every frame on its own
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    latents = torch.randn(2, 4, 5, 4, 4)
    changed = latents.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        moved = (control.decode_video(changed) - control.decode_video(latents)).abs().amax(dim=(0, 1, 3, 4))
    assert moved[2] > 0 and moved[[0, 1, 3, 4]].max() == 0


def test_video_vae_freezes_the_encoder_and_trains_the_decoder():
    video_vae = VideoVAE.from_image(_trained_like_vae(VAEConfig(base_channels=8)))
    assert not any(p.requires_grad for p in video_vae.encoder.parameters())
    for name, parameter in video_vae.named_parameters():
        parameter.data.add_(0.01 * torch.randn_like(parameter))  # temporal blocks off zero
    loss, values = video_vae.video_loss(torch.rand(2, 3, 4, 16, 16) * 2 - 1)
    loss.backward()
    assert all(p.grad is None for p in video_vae.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in video_vae.decoder.parameters())
    assert set(values) == {"reconstruction", "temporal"}


def test_video_vae_loss_is_reconstruction_plus_weighted_frame_difference_term():
    config = VAEConfig(base_channels=8, temporal_loss_weight=0.5)
    video_vae = VideoVAE.from_image(_trained_like_vae(config))
    clips = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    loss, values = video_vae.video_loss(clips)
    with torch.no_grad():
        decoded = video_vae.decode_video(video_vae.encode_video(clips))
    reconstruction = ((decoded - clips) ** 2).mean()
    temporal = ((decoded[:, :, 1:] - decoded[:, :, :-1]) - (clips[:, :, 1:] - clips[:, :, :-1])).abs().mean()
    torch.testing.assert_close(loss, reconstruction + 0.5 * temporal)
    assert values["temporal"] == pytest.approx(temporal.item())


@pytest.mark.parametrize("num_frames", [1, 2, 7])
def test_video_vae_decodes_clips_of_any_length(num_frames):
    video_vae = VideoVAE.from_image(_trained_like_vae(VAEConfig(base_channels=8)))
    latents = torch.randn(2, 4, num_frames, 4, 4)
    with torch.no_grad():
        assert video_vae.decode_video(latents).shape == (2, 3, num_frames, 16, 16)


def test_temporal_block_mixes_only_neighbouring_frames_of_the_same_clip():
    block = TemporalConvBlock(8)
    block.conv.weight.data.normal_(0, 0.1)
    h = torch.randn(2 * 6, 8, 3, 3)  # 2 clips of 6 frames
    changed = h.clone()
    changed[2] += 1.0  # clip 0, frame 2
    difference = (block(changed, 6) - block(h, 6)).flatten(1).abs().amax(dim=1)
    assert difference[[1, 2, 3]].min() > 0  # frames 1, 2, 3 of clip 0 see it
    # GroupNorm statistics are per clip, so clip 1 (frames 6..11) is untouched
    assert difference[6:].max() == 0
