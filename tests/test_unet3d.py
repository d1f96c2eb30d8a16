import pytest
import torch

from tiny_magicvideo.config import UNetConfig
from tiny_magicvideo.unet3d import UNet3D, timestep_embedding

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


def test_text_and_step_reach_the_output():
    unet = trained_a_little()
    x, t = torch.randn(1, 4, 1, 8, 8), torch.tensor([300])
    base = unet(x, t, torch.zeros(1, 5, 8))
    assert not torch.allclose(base, unet(x, t, torch.ones(1, 5, 8)))
    assert not torch.allclose(base, unet(x, torch.tensor([301]), torch.zeros(1, 5, 8)))


def test_gradients_reach_every_parameter():
    unet = trained_a_little()
    unet(torch.randn(1, 4, 2, 8, 8), torch.tensor([10]), torch.randn(1, 5, 8)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())


def test_latent_sizes_the_levels_cannot_halve_are_clear_errors():
    unet = UNet3D(UNetConfig(base_channels=16, channel_mults=(1, 2, 2), num_heads=2), 4, 8)
    with pytest.raises(ValueError, match="latent size 6x6 is not divisible by 4"):
        unet(torch.randn(1, 4, 1, 6, 6), torch.tensor([1]), torch.randn(1, 5, 8))
