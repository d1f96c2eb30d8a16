import pytest
import torch
from torch.distributions import Normal, kl_divergence

from tiny_magicvideo.config import VAEConfig
from tiny_magicvideo.vae import AutoencoderKL, DiagonalGaussian, measure_scaling_factor


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
