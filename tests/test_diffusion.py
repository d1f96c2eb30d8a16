import math

import pytest
import torch

from tiny_magicvideo.config import DiffusionConfig
from tiny_magicvideo.diffusion import (GaussianDiffusion, classifier_free_guidance, clip_windows, keyframe_condition,
                                       keyframe_windows, make_betas, twin_clip_layout)


def test_schedules_match_their_definitions():
    linear = make_betas("linear", 1000, 1e-4, 0.02)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    assert torch.allclose(linear[1:] - linear[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    scaled = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert torch.allclose(scaled.sqrt(), torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64))
    cosine = make_betas("cosine", 1000, 0, 0)
    abar = torch.cumprod(1 - cosine, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 250, 500, 900):  # abar_t = f(t+1) / f(0) for steps counted from 0
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_betas("quadratic", 10, 0.1, 0.2)


def test_named_tensors_follow_their_formulas():
    d = GaussianDiffusion(DiffusionConfig())
    t = 500
    assert d.alphas_cumprod[t].item() == pytest.approx(torch.prod(1 - d.betas[:t + 1]).item())
    assert d.alphas_cumprod_prev[t] == d.alphas_cumprod[t - 1] and d.alphas_cumprod_prev[0] == 1
    # posterior q(x_{t-1} | x_t, x_0) by Bayes from two Gaussians, for scalars
    beta, abar, abar_prev = d.betas[t], d.alphas_cumprod[t], d.alphas_cumprod_prev[t]
    # prior x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev), likelihood x_t ~ N(sqrt(1-beta) x_{t-1}, beta)
    variance = 1 / (1 / (1 - abar_prev) + (1 - beta) / beta)
    assert d.posterior_variance[t].item() == pytest.approx(variance.item())
    assert d.posterior_mean_coef_x0[t].item() == pytest.approx((variance * abar_prev.sqrt() / (1 - abar_prev)).item())
    assert d.posterior_mean_coef_xt[t].item() == pytest.approx((variance * (1 - beta).sqrt() / beta).item())


def test_q_sample_has_the_marginal_mean_and_variance():
    d = GaussianDiffusion(DiffusionConfig())
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 300)
    x_t = d.q_sample(x0, t, torch.randn(20000, 1, generator=torch.Generator().manual_seed(0)))
    abar = d.alphas_cumprod[300].item()
    assert x_t.mean().item() == pytest.approx(2 * math.sqrt(abar), abs=0.02)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.03)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predictions_invert_to_x0_and_eps(prediction_type):
    d = GaussianDiffusion(DiffusionConfig(prediction_type=prediction_type))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    x_t = d.q_sample(x0, t, noise)
    output = noise if prediction_type == "epsilon" else d.velocity(x0, t, noise)
    x0_back, eps_back = d.predict_x0_and_eps(output, x_t, t)
    assert torch.allclose(x0_back, x0, atol=1e-3) and torch.allclose(eps_back, noise, atol=1e-4)


def gaussian_denoiser(d: GaussianDiffusion, mean: float, std: float):
    """The exact eps prediction for data N(mean, std^2): E[eps | x_t]."""
    def model(x, t):
        abar = d.at(d.alphas_cumprod, t, x)
        return (1 - abar).sqrt() * (x - abar.sqrt() * mean) / (abar * std ** 2 + 1 - abar)
    return model


def test_ddim_eta_zero_is_deterministic_and_reproduces_its_inversion():
    d = GaussianDiffusion(DiffusionConfig())
    model = gaussian_denoiser(d, mean=1.0, std=0.5)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    first = d.ddim_sample(model, noise, 50, eta=0.0, progress=False)
    again = d.ddim_sample(model, noise, 50, eta=0.0, generator=torch.Generator().manual_seed(9), progress=False)
    assert torch.equal(first, again)
    # DDIM inversion uses the noise estimate of the point it leaves, a first-order approximation:
    # its error shrinks in proportion to the step size, and is small with all 1,000 steps
    errors = {}
    for steps in (50, 200, 1000):
        sample = d.ddim_sample(model, noise, steps, progress=False)
        inverted = d.ddim_invert(model, sample, steps)
        errors[steps] = (inverted - noise).abs().max().item()
        round_trip = (d.ddim_sample(model, inverted, steps, progress=False) - sample).abs().max().item()
    assert errors[200] < errors[50] / 3 and errors[1000] < errors[200] / 3
    assert errors[1000] < 0.03 and round_trip < 0.015


def test_ddim_really_skips_steps():
    d = GaussianDiffusion(DiffusionConfig())
    calls = []
    d.ddim_sample(lambda x, t: calls.append(t[0].item()) or torch.zeros_like(x), torch.zeros(1, 1), 10,
                  progress=False)
    assert calls == d.ddim_timesteps(10).tolist() and len(calls) == 10 and calls[0] == 999 and calls[-1] == 0
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and 1000"):
        d.ddim_timesteps(0)


@pytest.mark.parametrize("sampler", ["ddim_eta_0", "ddim_eta_1", "ddpm"])
def test_samplers_with_the_exact_denoiser_recover_the_data_distribution(sampler):
    d = GaussianDiffusion(DiffusionConfig(schedule="linear", beta_start=1e-4, beta_end=0.02))
    model = gaussian_denoiser(d, mean=1.0, std=0.5)
    noise = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    # few-step DDIM is a discretisation (stochastic DDIM more so): they converge as steps grow
    if sampler == "ddpm":
        samples = d.ddpm_sample(model, noise, g, progress=False)
    elif sampler == "ddim_eta_0":
        samples = d.ddim_sample(model, noise, 250, eta=0.0, progress=False)
    else:
        samples = d.ddim_sample(model, noise, 1000, eta=1.0, generator=g, progress=False)
    assert samples.mean().item() == pytest.approx(1.0, abs=0.03)
    assert samples.std().item() == pytest.approx(0.5, abs=0.03)


def test_classifier_free_guidance_batches_both_conditions_and_mixes():
    seen = []

    def model(x, t, label):
        seen.append(label.tolist())
        return x * 0 + label[:, None]

    guided = classifier_free_guidance(model, {"label": torch.tensor([2.0])}, {"label": torch.tensor([0.5])}, 3.0)
    out = guided(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    assert seen == [[0.5, 2.0]]  # one call, unconditional then conditional
    assert out.item() == pytest.approx(0.5 + 3.0 * (2.0 - 0.5))


def test_guidance_stops_below_unguided_below():
    seen = []

    def model(x, t, label):
        seen.append(label.tolist())
        return x * 0 + label[:, None]

    guided = classifier_free_guidance(model, {"label": torch.tensor([2.0])}, {"label": torch.tensor([0.5])}, 3.0,
                                      unguided_below=500)
    low = guided(torch.zeros(1, 1), torch.tensor([499]))
    assert seen == [[2.0]] and low.item() == 2.0  # the conditional model alone, one call
    high = guided(torch.zeros(1, 1), torch.tensor([500]))
    assert high.item() == pytest.approx(0.5 + 3.0 * (2.0 - 0.5))
    # frame by frame, a clip's steps (B, k + 1) hold the clean past at 0: the current frame's step decides
    assert guided(torch.zeros(1, 1), torch.tensor([[0, 0, 600]])).item() == pytest.approx(5.0)


@pytest.mark.slow
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_tiny_denoiser_trained_here_learns_a_2d_distribution(prediction_type):
    """Train an MLP on a correlated 2-D Gaussian; its samples must match the mean and covariance."""
    torch.manual_seed(0)
    mean = torch.tensor([1.0, -0.5])
    covariance = torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    data = torch.distributions.MultivariateNormal(mean, covariance)
    schedule = "cosine" if prediction_type == "v_prediction" else "scaled_linear"
    d = GaussianDiffusion(DiffusionConfig(schedule=schedule, prediction_type=prediction_type))
    net = torch.nn.Sequential(torch.nn.Linear(3, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                              torch.nn.SiLU(), torch.nn.Linear(128, 2))
    model = lambda x, t: net(torch.cat([x, t[:, None].float() / 1000], dim=1))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        loss = d.training_loss(model, data.sample((256,)), g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        samples = d.ddim_sample(model, torch.randn(4000, 2, generator=g), 250, progress=False)
    assert torch.allclose(samples.mean(0), mean, atol=0.07)
    assert torch.allclose(torch.cov(samples.T), covariance, atol=0.07)


def test_cosine_with_epsilon_prediction_warns():
    with pytest.warns(UserWarning, match="v_prediction"):
        GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="epsilon"))


def test_t_min_draws_only_the_noisiest_steps():
    d = GaussianDiffusion(DiffusionConfig())
    seen = []
    model = lambda x, t: seen.append(t) or torch.zeros_like(x)
    g = torch.Generator().manual_seed(0)
    d.training_loss(model, torch.zeros(4000, 2), g, t_min=700)
    d.training_loss(model, torch.zeros(4000, 2), g)
    noisy, every = seen
    assert noisy.min() == 700 and noisy.max() == 999
    assert every.min() < 50 and every.max() == 999


def test_twin_clip_layout_lets_noisy_frame_k_see_the_clean_past_and_itself():
    frame_index, mask = twin_clip_layout(4)  # clean frames 0..2, then noisy frames 0..3
    assert frame_index.tolist() == [0, 1, 2, 0, 1, 2, 3]
    for query in range(7):
        for key in range(7):
            if query < 3:  # clean frame i: clean frames 0..i
                allowed = key <= query
            else:  # noisy frame k = query - 3: clean frames 0..k-1 and itself
                allowed = key < query - 3 or key == query
            assert mask[query, key] == allowed, (query, key)


def test_twin_training_loss_shows_the_clean_clip_then_its_noisy_twin_a_step_per_frame():
    d = GaussianDiffusion(DiffusionConfig())  # epsilon prediction: the target is the noise
    x0 = torch.randn(256, 2, 6, 3, 3)  # (B, C, T, H, W)
    seen = []

    def model(x, t, frame_index, attention_mask):
        """Predicts 0 (loss = eps^2, about 1) on the noisy twin and an absurd value on the clean clip."""
        seen.append((x, t, frame_index, attention_mask))
        return torch.cat([torch.full_like(x[:, :, :5], 1e6), torch.zeros_like(x[:, :, 5:])], dim=2)

    loss = d.twin_training_loss(model, x0, torch.Generator().manual_seed(0), t_min=700)
    ((x, t, frame_index, attention_mask),) = seen
    assert x.shape == (256, 2, 11, 3, 3) and t.shape == (256, 11)  # clean frames 0..4, noisy frames 0..5
    assert torch.equal(x[:, :, :5], x0[:, :, :5]) and (t[:, :5] == 0).all()  # the clean clip, exactly
    assert t[:, 5:].min() >= 700 and len(t[0, 5:].unique()) > 1  # the twin: its own step per frame
    expected_index, expected_mask = twin_clip_layout(6)
    assert torch.equal(frame_index, expected_index) and torch.equal(attention_mask, expected_mask)
    abar = d.at(d.alphas_cumprod, t[:, 5:], x0)  # (B, 1, T, 1, 1)
    leftover_noise = (x[:, :, 5:] - abar.sqrt() * x0) / (1 - abar).sqrt()  # = eps
    assert abs(leftover_noise.std().item() - 1) < 0.05
    assert 0.8 < loss.item() < 1.2  # the clean clip's absurd predictions are not in the loss


@pytest.mark.parametrize("frame1_weight", [1.0, 5.0])
def test_frame1_weight_weighs_frame_1_against_the_other_frames(frame1_weight):
    d = GaussianDiffusion(DiffusionConfig())  # epsilon prediction: the target is the noise
    x0 = torch.randn(8, 2, 6, 3, 3)  # (B, C, T, H, W)

    def model(x, t, frame_index, attention_mask):
        """The exact noise of every noisy frame, but 1 too high on frame 1: only frame 1 has a loss, 1."""
        abar = d.at(d.alphas_cumprod, t[:, 5:], x0)
        eps = (x[:, :, 5:] - abar.sqrt() * x0) / (1 - abar).sqrt()  # invert q_sample
        eps[:, :, 1] += 1
        return torch.cat([torch.zeros_like(x0[:, :, :5]), eps], dim=2)

    loss = d.twin_training_loss(model, x0, torch.Generator().manual_seed(0), frame1_weight=frame1_weight)
    # weighted mean of the frame losses (0, 1, 0, 0, 0, 0) with weights (1, w, 1, 1, 1, 1)
    assert loss.item() == pytest.approx(frame1_weight / (5 + frame1_weight), rel=1e-3)


@pytest.mark.parametrize("clean_past", [False, True])
def test_frame_by_frame_sampling_shows_each_frame_the_finished_ones_at_the_step_or_clean(clean_past):
    d = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    noise = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)
    calls = []

    def causal_model(x, t):
        """A toy causal video denoiser: frame j's output is half the mean of frames 0..j."""
        calls.append((x.clone(), t.clone()))
        return 0.5 * x.cumsum(dim=2) / torch.arange(1, x.shape[2] + 1).view(1, 1, -1, 1, 1)

    video = d.ddim_sample_frame_by_frame(causal_model, noise, 6, progress=False, clean_past=clean_past)
    assert video.shape == noise.shape and len(calls) == 4 * 6  # 6 steps for each of the 4 frames
    for clip, t in calls:
        k = clip.shape[2] - 1  # the frame being drawn; frames 0..k-1 are finished
        assert t.shape == (2, k + 1)  # a step per frame
        past_steps = torch.zeros_like(t[:, :k]) if clean_past else t[:, k:].expand(-1, k)
        assert torch.equal(t[:, :k], past_steps)
        expected = d.q_sample(video[:, :, :k], past_steps, noise[:, :, :k])
        assert torch.allclose(clip[:, :, :k], expected, atol=1e-6)
    # frame 0 sees no other frame either way, so it is the same as in joint sampling
    joint = d.ddim_sample(causal_model, noise, 6, progress=False)
    assert torch.allclose(video[:, :, 0], joint[:, :, 0], atol=1e-6)
    assert not torch.allclose(video[:, :, 1:], joint[:, :, 1:], atol=1e-3)

    def framewise_model(x, t):  # no frame sees another: both orders must agree
        return 0.5 * x

    framewise_video = d.ddim_sample_frame_by_frame(framewise_model, noise, 6, progress=False, clean_past=clean_past)
    assert torch.allclose(framewise_video, d.ddim_sample(framewise_model, noise, 6, progress=False), atol=1e-6)


def test_the_losses_keep_the_schedule_the_noise_and_the_loss_in_float32_under_bfloat16_autocast():
    diffusion = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    seen = []

    def bfloat16_model(x_t, t, **layout):  # as a network under autocast: bfloat16 out, whatever comes in
        seen.append(x_t.dtype)
        return torch.zeros_like(x_t, dtype=torch.bfloat16)

    x0 = torch.randn(2, 4, 3, 8, 8, dtype=torch.bfloat16)  # latents a VAE made under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = diffusion.training_loss(bfloat16_model, x0, torch.Generator().manual_seed(0))
        twin = diffusion.twin_training_loss(bfloat16_model, x0, torch.Generator().manual_seed(0))
    assert plain.dtype == twin.dtype == torch.float32 and seen == [torch.float32, torch.float32]
    # a zero prediction: the loss is the mean square of the float32 target, v = sqrt(abar) eps - sqrt(1 - abar) x0
    generator = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    target = diffusion.velocity(x0.float(), t, noise)
    assert plain.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-6)


def test_windows_between_keyframes_and_their_condition():
    clip = torch.arange(2 * 9, dtype=torch.float32).reshape(2, 1, 9, 1, 1)  # frame f of clip b holds 9 b + f
    windows = clip_windows(clip, 4)  # (2 clips x 2 windows, 1, 5, 1, 1)
    assert windows[:, 0, :, 0, 0].tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [9, 10, 11, 12, 13],
                                               [13, 14, 15, 16, 17]]
    assert clip_windows(clip, 3).shape == (4, 1, 4, 1, 1) and clip_windows(clip[:, :, :8], 4).shape == (2, 1, 5, 1, 1)
    keyframes = clip[:, :, ::4]  # frames 0, 4, 8
    assert torch.equal(keyframe_windows(keyframes, 4)[:, :, [0, 4]], windows[:, :, [0, 4]])
    assert keyframe_windows(keyframes, 4)[:, :, 1:4].abs().max() == 0  # the frames to fill
    condition = keyframe_condition(windows)  # (4, 2, 5, 1, 1): the keyframe filled forward, then the mask
    assert condition[:, 0, :, 0, 0].tolist() == [[0, 0, 0, 0, 4], [4, 4, 4, 4, 8], [9, 9, 9, 9, 13],
                                                 [13, 13, 13, 13, 17]]
    assert condition[:, 1, :, 0, 0].tolist() == [[1, 0, 0, 0, 1]] * 4


def test_ddim_interpolate_keeps_the_keyframes_and_fills_s_minus_1_frames_between_each_pair():
    diffusion = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    keyframes = torch.randn(2, 4, 3, 6, 6)  # 2 clips of 3 keyframes
    seen = []

    def model(x, t):  # x: the noisy windows, then the condition (4 + 5 channels)
        seen.append(x)
        return torch.tanh(x[:, :4] + x[:, 4:8])

    clip = diffusion.ddim_interpolate(model, keyframes, 3, num_inference_steps=4,
                                      generator=torch.Generator().manual_seed(1), progress=False)
    assert clip.shape == (2, 4, (3 - 1) * 3 + 1, 6, 6)
    assert torch.equal(clip[:, :, ::3], keyframes)  # exactly, at frames 0, 3, 6
    assert len(seen) == 4 and seen[0].shape == (2 * 2, 9, 4, 6, 6)
    # at every step the keyframes' positions hold the keyframes noised to that step, not the model's guess
    noise = torch.randn((4, 4, 4, 6, 6), generator=torch.Generator().manual_seed(1))  # the windows' starting noise
    ends = keyframe_windows(keyframes, 3)[:, :, [0, 3]]
    for x, step in zip(seen, diffusion.ddim_timesteps(4).tolist()):
        noised = diffusion.q_sample(ends, torch.full((4,), step), noise[:, :, [0, 3]])
        torch.testing.assert_close(x[:, :4, [0, 3]], noised)


def test_the_interpolation_loss_covers_only_the_frames_between_the_keyframes():
    diffusion = GaussianDiffusion(DiffusionConfig(schedule="cosine", prediction_type="v_prediction"))
    windows = torch.randn(3, 4, 5, 4, 4)
    generator = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (3,), generator=generator)
    target = diffusion.velocity(windows, t, torch.randn(windows.shape, generator=generator))

    def right_between_wrong_at_the_ends(x, t):
        assert torch.equal(x[:, 4:], keyframe_condition(windows))  # the condition on the channel axis
        prediction = target.clone()
        prediction[:, :, [0, -1]] += 5.0
        return prediction

    loss = diffusion.interpolation_loss(right_between_wrong_at_the_ends, windows, torch.Generator().manual_seed(0))
    assert loss.item() == 0.0
