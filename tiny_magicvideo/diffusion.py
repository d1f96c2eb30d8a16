"""Gaussian diffusion: noise schedules, the training loss, and the DDPM and DDIM samplers.

Forward process (DDPM, Ho et al. 2020, eq. 4): noise is added in T small steps,
    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s),
so a noisy sample of any step can be drawn at once: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

Training (DDPM Algorithm 1): a network sees x_t and t and predicts the noise eps (or the velocity
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, Salimans & Ho 2022); the loss is the mean squared error.

Sampling runs the process backwards from pure noise: DDPM ancestral sampling (Algorithm 2) takes
all T steps; DDIM (Song et al. 2021, eq. 12) takes `num_inference_steps` of them, deterministically
when eta = 0. Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an
unconditional prediction: eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond).

Timesteps here run 0 .. T-1; abar at "step -1" is 1 (clean data).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from tqdm import tqdm

from .attention import causal_mask
from .config import DiffusionConfig
from .distributed import BatchShare, randint, randn

# model(x_t, t) -> prediction (eps or v, the same shape as x_t); t is a (B,) tensor of steps, or for
# clips (B, C, T, H, W) a (B, T) tensor, a step per frame
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_betas(schedule: str, num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """beta_1 .. beta_T in float64."""
    if schedule == "linear":  # DDPM: evenly spaced variances
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if schedule == "scaled_linear":  # LDM / Stable Diffusion: evenly spaced standard deviations
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_steps, dtype=torch.float64) ** 2
    if schedule == "cosine":  # Nichol & Dhariwal 2021: abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi/2)
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        # beta_t = 1 - abar_t / abar_{t-1}, clipped so the last steps stay well defined
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {schedule!r}; use linear, scaled_linear or cosine")


class GaussianDiffusion:
    """The schedule's named tensors and the operations that use them."""

    def __init__(self, config: DiffusionConfig):
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        self.prediction_type = config.prediction_type
        betas = make_betas(config.schedule, config.num_train_timesteps, config.beta_start, config.beta_end)
        alphas = 1.0 - betas  # alpha_t = 1 - beta_t
        alphas_cumprod = torch.cumprod(alphas, dim=0)  # abar_t = prod_{s<=t} alpha_s
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        if config.schedule == "cosine" and config.prediction_type == "epsilon":
            warnings.warn("the cosine schedule ends at abar_T ~ 1e-8, where an epsilon prediction's "
                          "x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies its error ~10^4 times; "
                          "use --diffusion.prediction_type v_prediction with it")
        self.betas, self.alphas = betas, alphas
        self.alphas_cumprod, self.alphas_cumprod_prev = alphas_cumprod, alphas_cumprod_prev
        # posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, posterior_variance)  (DDPM eq. 7)
        self.posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        self.posterior_mean_coef_x0 = betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)
        self.posterior_mean_coef_xt = (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod)

    def at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, ...) to broadcast against `like`, in its dtype and device; per-frame
        steps t (B, T) of clips `like` (B, C, T, H, W) give (B, 1, T, 1, 1).

        t = -1 stands for "before step 0", where abar = 1.
        """
        padded = torch.cat([values.new_ones(1), values])  # index 0 is step -1
        picked = padded.to(like.device)[t.to(like.device) + 1].to(like.dtype)
        if t.ndim == 2:  # a step per frame, (B, T), against clips (B, C, T, H, W)
            return picked[:, None, :, None, None]
        return picked.reshape(-1, *([1] * (like.ndim - 1)))

    # ---- forward process and training --------------------------------------------------------

    @staticmethod
    def noise(shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """eps ~ N(0, I) of `shape`, every element independent (frames included)."""
        return randn(shape, generator, device=device, dtype=dtype)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        abar = self.at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        abar = self.at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def training_loss(self, model: Denoiser, x0: torch.Tensor,
                      generator: torch.Generator | BatchShare | None = None, t_min: int = 0) -> torch.Tensor:
        """DDPM Algorithm 1: t ~ U{0..T-1}, eps ~ N(0, I), loss = |target - model(x_t, t)|^2.

        t_min > 0 draws t from U{t_min..T-1}: the noisiest steps, where a video model must decide on
        its own where the object goes, because the noisy frames hardly show it (train.video_t_min).
        The schedule, the noise and the loss are float32 also where the model runs in bfloat16 (autocast).
        """
        x0 = x0.float()
        t = self.draw_steps((x0.shape[0],), t_min, generator, x0.device)
        noise = self.noise(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        target = noise if self.prediction_type == "epsilon" else self.velocity(x0, t, noise)
        return (model(x_t, t).float() - target).pow(2).mean()

    def draw_steps(self, shape: tuple[int, ...], t_min: int, generator: torch.Generator | BatchShare | None,
                   device: torch.device) -> torch.Tensor:
        """Steps t of `shape`, each drawn from U{t_min..T-1} (train.video_t_min, checked by check_config)."""
        return randint(t_min, self.num_train_timesteps, shape, generator, device=device)

    def twin_training_loss(self, model: Callable[..., torch.Tensor], x0: torch.Tensor,
                           generator: torch.Generator | BatchShare | None = None, t_min: int = 0,
                           frame1_weight: float = 1.0) -> torch.Tensor:
        """Training for frame-by-frame sampling beside clean finished frames (diffusion.past_frames
        clean; teacher forcing, as in diffusion forcing, Chen et al. 2024), every frame of a clip at
        once (train.video_twin_clips).

        The model sees each clip x0 (B, C, T, H, W) clean (step 0) followed by its noisy twin x_t, each
        frame at its own step t_k, as one sequence of 2T - 1 frames laid out by twin_clip_layout: noisy
        frame k sits at position k and attends to clean frames 0..k-1 and itself only. So it gets what
        frame-by-frame sampling with clean past frames gives frame k (but for the step-0 noise the
        sampler leaves on the finished frames, sqrt(1 - abar_0): 0.006 with the cosine schedule), and
        the loss covers every noisy frame: T conditionals p(x^k | x^0..x^{k-1}) for the price of 2T - 1
        frames (clean frame T-1, the past of no noisy frame, is left out: twin_clips). (Showing a
        plain clip's first k frames clean teaches one conditional a clip, and its later frames beside
        noisy ones, which sampling never asks for: docs/experiments.md.)
        model(x, t, frame_index=, attention_mask=) -> prediction, e.g. a closure over UNet3D.

        frame1_weight weighs frame 1's loss against the others' (1 each): the loss is the weighted mean
        of the frames' losses. Beside clean frames 0..k-1 that already move, frame k >= 2 can read the
        direction off its past; frame 1, beside a still frame 0, only from the text.
        """
        x0 = x0.float()  # the schedule, the noise and the loss in float32 (as training_loss)
        batch, _, num_frames = x0.shape[:3]
        t = self.draw_steps((batch, num_frames), t_min, generator, x0.device)  # (B, T), a step per frame
        noise = self.noise(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        frame_index, attention_mask = twin_clip_layout(num_frames, x0.device)
        twin, steps = twin_clips(x0, x_t, t)  # (B, C, 2T-1, H, W), (B, 2T-1)
        prediction = model(twin, steps, frame_index=frame_index, attention_mask=attention_mask)
        prediction = prediction[:, :, num_frames - 1:].float()  # the noisy twin's T frames
        target = noise if self.prediction_type == "epsilon" else self.velocity(x0, t, noise)
        frame_loss = (prediction - target).pow(2).mean(dim=(0, 1, 3, 4))  # (T,): each frame's loss
        weights = torch.ones_like(frame_loss)
        weights[1:2] = frame1_weight  # (a 1-frame clip has no frame 1)
        return (weights * frame_loss).sum() / weights.sum()

    def interpolation_loss(self, model: Denoiser, windows: torch.Tensor,
                           generator: torch.Generator | BatchShare | None = None) -> torch.Tensor:
        """The interp stage's loss. windows (N, C, S+1, H, W): stretches of clips whose first and last
        frames are the keyframes (clip_windows). Each is noised at one step t as in training_loss and
        shown beside keyframe_condition(windows) on the channel axis; the loss covers the S-1 frames
        between the keyframes, all that ddim_interpolate takes from the model."""
        windows = windows.float()
        t = self.draw_steps((windows.shape[0],), 0, generator, windows.device)
        noise = self.noise(windows.shape, generator, windows.device, windows.dtype)
        x_t = self.q_sample(windows, t, noise)
        prediction = model(torch.cat([x_t, keyframe_condition(windows)], dim=1), t).float()
        target = noise if self.prediction_type == "epsilon" else self.velocity(windows, t, noise)
        return (prediction - target)[:, :, 1:-1].pow(2).mean()

    def predict_x0_and_eps(self, model_output: torch.Tensor, x_t: torch.Tensor,
                           t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both readings of a prediction, whichever the network was trained to give."""
        abar = self.at(self.alphas_cumprod, t, x_t)
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()  # invert q_sample
        else:
            x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * model_output  # x_0 = sqrt(abar) x_t - sqrt(1-abar) v
            eps = (1 - abar).sqrt() * x_t + abar.sqrt() * model_output  # eps = sqrt(1-abar) x_t + sqrt(abar) v
        return x0, eps

    # ---- samplers -----------------------------------------------------------------------------

    @torch.no_grad()
    def ddpm_sample(self, model: Denoiser, noise: torch.Tensor, generator: torch.Generator | None = None,
                    progress: bool = True) -> torch.Tensor:
        """DDPM Algorithm 2: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z,
        with sigma_t^2 the posterior variance, over all T steps from x_T = noise."""
        x = noise
        for step in tqdm(range(self.num_train_timesteps - 1, -1, -1), desc="DDPM", disable=not progress):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            _, eps = self.predict_x0_and_eps(model(x, t), x, t)
            beta, alpha, abar = (self.at(v, t, x) for v in (self.betas, self.alphas, self.alphas_cumprod))
            x = (x - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
            if step > 0:
                z = self.noise(x.shape, generator, x.device, x.dtype)
                x = x + self.at(self.posterior_variance, t, x).sqrt() * z
        return x

    def ddim_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The steps DDIM visits, from T-1 down to 0, evenly spaced: (num_inference_steps,)."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"num_inference_steps must be between 1 and {self.num_train_timesteps}, "
                             f"got {num_inference_steps}")
        return torch.linspace(self.num_train_timesteps - 1, 0, num_inference_steps).round().long()

    @torch.no_grad()
    def ddim_sample(self, model: Denoiser, noise: torch.Tensor, num_inference_steps: int = 25,
                    eta: float = 0.0, generator: torch.Generator | None = None,
                    progress: bool = True) -> torch.Tensor:
        """DDIM (Song et al. eq. 12), from x_T = noise, visiting `num_inference_steps` steps:
        x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)."""
        timesteps = self.ddim_timesteps(num_inference_steps)
        previous = torch.cat([timesteps[1:], torch.tensor([-1])])  # step -1: clean data
        x = noise
        for step, prev_step in tqdm(list(zip(timesteps.tolist(), previous.tolist())), desc="DDIM",
                                    disable=not progress):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            t_prev = torch.full_like(t, prev_step)
            x0, eps = self.predict_x0_and_eps(model(x, t), x, t)
            abar, abar_prev = self.at(self.alphas_cumprod, t, x), self.at(self.alphas_cumprod, t_prev, x)
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0 and prev_step >= 0:
                x = x + sigma * self.noise(x.shape, generator, x.device, x.dtype)
        return x

    @torch.no_grad()
    def ddim_sample_frame_by_frame(self, model: Denoiser, noise: torch.Tensor, num_inference_steps: int = 25,
                                   eta: float = 0.0, generator: torch.Generator | None = None,
                                   progress: bool = True, clean_past: bool = False) -> torch.Tensor:
        """DDIM for a causal video model, one frame at a time: p(x^0) p(x^1 | x^0) ... p(x^k | x^<k).

        Frame k runs its own DDIM from x_T = noise[:, :, k], the finished frames 0..k-1 beside it,
        and frame k's prediction, which the causal attention bases on frames 0..k only, updates it.
        At each step t the model sees the finished frames as q_sample(x^j, s, eps^j), with their own
        starting noise eps^j, at s = t, as it saw every frame of a clip in training, or with clean_past
        at s = 0, as twin_training_loss showed them. Frames then agree with the finished ones before
        them; sampled jointly, frame 0 would follow its own noise alone, frames 1..k the consensus of
        frames 0..k, and they can part ways. Costs 1 + 2 + ... + T frame evaluations, not T.

        model(clip (B, C, k+1, H, W), steps (B, k+1)) is read at its last frame, frame k: a model may
        return that frame's prediction alone, (B, C, 1, H, W) (pipeline.two_experts and with_frame_cache do).
        """
        finished = noise[:, :, :0]  # (B, C, 0, H, W): no frame yet
        for k in tqdm(range(noise.shape[2]), desc="DDIM frame by frame", disable=not progress):
            previous_noise = noise[:, :, :k]
            start = torch.zeros(noise.shape[0], k, dtype=torch.long, device=noise.device)  # (B, k): step 0
            # clean finished frames look the same at every step of frame k: noised to step 0 once
            clean = self.q_sample(finished, start, previous_noise) if clean_past else None

            def frame_k(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                """x_t (B, C, 1, H, W), frame k at step t (B,) -> its prediction, frames 0..k-1 beside it."""
                past_steps = start if clean_past else t[:, None].expand(-1, k)  # (B, k)
                past = clean if clean_past else self.q_sample(finished, past_steps, previous_noise)
                steps = torch.cat([past_steps, t[:, None]], dim=1)  # (B, k + 1)
                return model(torch.cat([past, x_t], dim=2), steps)[:, :, -1:]

            frame = self.ddim_sample(frame_k, noise[:, :, k:k + 1], num_inference_steps, eta, generator,
                                     progress=False)
            finished = torch.cat([finished, frame], dim=2)
        return finished

    @torch.no_grad()
    def ddim_interpolate(self, model: Denoiser, keyframes: torch.Tensor, stride: int, num_inference_steps: int = 25,
                         eta: float = 0.0, generator: torch.Generator | None = None,
                         progress: bool = True) -> torch.Tensor:
        """Fill stride - 1 frames between each pair of neighbouring keyframes: (B, C, K, H, W) ->
        (B, C, (K-1) S + 1, H, W), keyframe j exactly at frame j S.

        The K-1 windows of S+1 frames (keyframe_windows; window j of clip b in row b (K-1) + j) run one
        DDIM as one batch, from noise, keyframe_condition beside them. At every step their keyframe
        positions hold the keyframes noised to that step, as in interpolation_loss, and at the end the
        keyframes themselves. model(x (N, C + C + 1, S+1, H, W), t (N,)) -> prediction (N, C, S+1, H, W)."""
        batch, _, count = keyframes.shape[:3]
        windows = keyframe_windows(keyframes, stride)  # (B*(K-1), C, S+1, H, W)
        condition = keyframe_condition(windows)
        noise = self.noise(windows.shape, generator, keyframes.device, keyframes.dtype)
        ends = [0, stride]  # the keyframes' positions in a window

        def beside_keyframes(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_t = x_t.clone()
            x_t[:, :, ends] = self.q_sample(windows[:, :, ends], t, noise[:, :, ends])
            return model(torch.cat([x_t, condition], dim=1), t)

        filled = self.ddim_sample(beside_keyframes, noise, num_inference_steps, eta, generator, progress)
        filled[:, :, ends] = windows[:, :, ends]
        # each window's frames 0..S-1, in order, then the last keyframe
        between = filled[:, :, :stride].unflatten(0, (batch, count - 1))  # (B, K-1, C, S, H, W)
        clip = between.transpose(1, 2).flatten(2, 3)  # (B, C, (K-1) S, H, W)
        return torch.cat([clip, keyframes[:, :, -1:]], dim=2)

    @torch.no_grad()
    def ddim_invert(self, model: Denoiser, x0: torch.Tensor, num_inference_steps: int = 25) -> torch.Tensor:
        """Run deterministic DDIM forwards, clean data -> x_T: the latent that ddim_sample with eta = 0
        maps back to x0 (up to discretisation error)."""
        timesteps = self.ddim_timesteps(num_inference_steps).flip(0)  # 0 .. T-1
        previous = torch.cat([torch.tensor([-1]), timesteps[:-1]])
        x = x0
        for step, prev_step in zip(timesteps.tolist(), previous.tolist()):
            t_prev = torch.full((x.shape[0],), prev_step, device=x.device, dtype=torch.long)
            t = torch.full_like(t_prev, step)
            # the noise estimate at the less noisy point stands in for the one at t
            x0_estimate, eps = self.predict_x0_and_eps(model(x, t_prev.clamp(min=0)), x, t_prev)
            abar = self.at(self.alphas_cumprod, t, x)
            x = abar.sqrt() * x0_estimate + (1 - abar).sqrt() * eps
        return x


def twin_clips(clean: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean clips (B, C, T, H, W) but their last frame, followed by their noisy twins at steps
    t (B, T): the sequence (B, C, 2T-1, H, W) and its steps (B, 2T-1), 0 on the clean frames.
    twin_clip_layout places and masks its frames. Noisy frame k attends to clean frames 0..k-1, so
    clean frame T-1 would be no noisy frame's past: it is left out, which changes no noisy frame's
    output (the temporal attention is the only layer that mixes frames) and saves 1 frame in 2T."""
    twin = torch.cat([clean[:, :, :-1], noisy], dim=2)
    steps = torch.cat([torch.zeros_like(t[:, :-1]), t], dim=1)
    return twin, steps


def twin_clip_layout(num_frames: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame_index (2T-1,), attention_mask (2T-1, 2T-1)) for twin_clips: clean frames 0..T-2 of a
    clip of T frames followed by its noisy twin, frames 0..T-1.

    Each frame sits at its position in the clip. Clean frame i attends to clean frames 0..i (causal,
    as in a plain clip); noisy frame k to clean frames 0..k-1 and to itself. For T = 3 (rows: the
    attending frame; 1: may attend):

              c0 c1 n0 n1 n2
        c0     1  .  .  .  .
        c1     1  1  .  .  .
        n0     .  .  1  .  .
        n1     1  .  .  1  .
        n2     1  1  .  .  1
    """
    past = num_frames - 1  # clean frames 0..T-2
    causal = causal_mask(past, device)  # (T-1, T-1): clean frame i sees clean frames 0..i
    before = torch.ones(num_frames, past, dtype=torch.bool, device=device).tril(-1)  # (T, T-1): noisy k, clean < k
    mask = torch.cat([torch.cat([causal, torch.zeros(past, num_frames, dtype=torch.bool, device=device)], dim=1),
                      torch.cat([before, torch.eye(num_frames, dtype=torch.bool, device=device)], dim=1)])
    return torch.cat([torch.arange(past, device=device), torch.arange(num_frames, device=device)]), mask


def clip_windows(clip: torch.Tensor, stride: int) -> torch.Tensor:
    """A clip (B, C, T, H, W) -> its n = (T-1) // S windows of S+1 frames that start at frames 0, S,
    2S, ..., neighbours sharing an end: (B*n, C, S+1, H, W), window j of clip b in row b n + j. The
    interp stage trains on them, the ends as keyframes."""
    windows = clip.unfold(2, stride + 1, stride)  # (B, C, n, H, W, S+1)
    return windows.permute(0, 2, 1, 5, 3, 4).flatten(0, 1)


def keyframe_windows(keyframes: torch.Tensor, stride: int) -> torch.Tensor:
    """Keyframes (B, C, K, H, W) -> the K-1 windows between neighbours, (B*(K-1), C, S+1, H, W):
    keyframe j first, keyframe j+1 last and zeros between, the S-1 frames to fill."""
    first, last = keyframes[:, :, :-1, None], keyframes[:, :, 1:, None]  # (B, C, K-1, 1, H, W)
    gap = torch.zeros_like(first).expand(-1, -1, -1, stride - 1, -1, -1)
    windows = torch.cat([first, gap, last], dim=3)  # (B, C, K-1, S+1, H, W)
    return windows.transpose(1, 2).flatten(0, 1)


def keyframe_condition(windows: torch.Tensor) -> torch.Tensor:
    """The interp model's condition for windows (N, C, S+1, H, W) whose first and last frames are
    keyframes: (N, C + 1, S+1, H, W), each frame's latest keyframe (filled forward: the first for
    frames 0..S-1, the last for frame S) and a channel that is 1 at the keyframes, 0 between. The
    later keyframe reaches the frames between through the temporal attention, which in this model
    attends both ways."""
    first, last = windows[:, :, :1], windows[:, :, -1:]
    filled = torch.cat([first.expand(-1, -1, windows.shape[2] - 1, -1, -1), last], dim=2)
    known = torch.zeros_like(windows[:, :1])  # (N, 1, S+1, H, W)
    known[:, :, [0, -1]] = 1.0
    return torch.cat([filled, known], dim=1)


def classifier_free_guidance(model: Callable[..., torch.Tensor], conditional: dict, unconditional: dict,
                             guidance_scale: float, unguided_below: int = 0) -> Denoiser:
    """A denoiser that runs `model(x_t, t, **condition)` on both conditions in one batch and mixes:
    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond). Scale 1 is the conditional model.

    Steps below `unguided_below` (the largest step in t decides) take the conditional prediction alone,
    at half the cost: guidance in a limited interval (Kynkaenniemi et al. 2024, arXiv 2404.07724).
    Late in sampling the noisy latent already shows what is drawn; guidance there only sharpens its
    edges past the data's (docs/experiments.md)."""
    both = {key: torch.cat([unconditional[key], conditional[key]]) for key in conditional}

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0 or (unguided_below > 0 and int(t.max()) < unguided_below):
            return model(x_t, t, **conditional)
        uncond, cond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    return guided
