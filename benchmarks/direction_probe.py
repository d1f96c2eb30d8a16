"""Does the video model use the direction word? A probe that needs no sampling, only the loss.

    python benchmarks/direction_probe.py --run runs/cpu [--clips 64] [--t 950,850,700,500,300]

Validation clips are encoded by the run's VAE and noised to step t (the same noise for every
caption). The video U-Net's v-prediction loss, |v_theta(x_t, t, caption) - v|^2, is measured with
three captions for each clip:

    true      "a <colour> <shape> moving <direction>"       (what the clip shows)
    swapped   the same with the opposite direction           (left <-> right, up <-> down)
    empty     ""                                             (no text at all)

A model that has learned what the direction words mean predicts the object on the wrong path when
they are swapped, so its loss rises: the "swap gap" (swapped - true) / true. A model whose gap is
zero ignores the direction word, and its samples cannot follow it, however well it draws colour
and shape (the empty caption's gap shows how much the rest of the text is used). The line after the
table is the loss per frame with the true caption at the highest t: with causal temporal attention,
frame 0 sees only itself and frame k sees frames 0..k, so later frames should be easier.

That layout (every frame noised) is not the one a model trained with clean past frames samples in
(diffusion.past_frames clean). The second table uses that one: the clean clip beside its noisy twin
(diffusion.twin_clip_layout), so noisy frame k sees clean frames 0..k-1, and gives the swap gap frame
by frame. Once frames 0 and 1 are drawn, the clean past shows which way the object goes, so frame 1
is where the direction word must decide: its gap is the one sampling depends on.
"""

from __future__ import annotations

import argparse
import time

import torch

from tiny_magicvideo.data import frames_to_video, sample_clip
from tiny_magicvideo.diffusion import GaussianDiffusion, twin_clip_layout, twin_clips
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.shapes import MOTIONS, plain_caption

# each moving direction's opposite: the motion whose unit vector is its negation (static has none)
OPPOSITE = {name: other for name, (dx, dy) in MOTIONS.items() for other, vector in MOTIONS.items()
            if (dx, dy) != (0.0, 0.0) and vector == (-dx, -dy)}


def probe_captions(config, num_clips: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[str]]]:
    """Validation clips (B, 3, T, H, W), their frame rates (B,) and the three captions of each."""
    clips, fps, captions = [], [], {"true": [], "swapped": [], "empty": []}
    for index in range(num_clips):
        frames, _, attributes = sample_clip(config.data, "val", index)
        obj = attributes["objects"][0]
        if obj["direction"] not in OPPOSITE:
            continue  # a static object has no direction to swap
        clips.append(frames_to_video(frames))
        fps.append(attributes["fps"])
        captions["true"].append(plain_caption(obj['colour'], obj['shape'], obj['direction']))
        captions["swapped"].append(plain_caption(obj['colour'], obj['shape'], OPPOSITE[obj['direction']]))
        captions["empty"].append("")
    return torch.stack(clips), torch.tensor(fps), captions


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with a video stage, e.g. runs/cpu")
    parser.add_argument("--clips", type=int, default=64, help="validation clips (default 64)")
    parser.add_argument("--t", default="950,850,700,500,300", help="diffusion steps to probe, comma-separated")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    pipeline = TextToVideo.from_run(args.run, device=args.device, stage="video", decoder="image")
    unet, text_encoder, device = pipeline.unet, pipeline.text_encoder, pipeline.device
    diffusion = GaussianDiffusion(pipeline.config.diffusion)
    clips, fps, captions = probe_captions(pipeline.config, args.clips)
    latents = pipeline.vae.encode_video(clips.to(device))  # (B, C, T, h, w), the scaled latents
    fps = fps.to(device)
    contexts = {name: text_encoder(texts) for name, texts in captions.items()}
    steps = [int(value) for value in args.t.split(",")]
    print(f"{args.run}: {len(clips)} validation clips, v-prediction loss by caption\n")
    num_frames = latents.shape[2]
    frame_index, attention_mask = twin_clip_layout(num_frames, device)
    print("| t | true | direction swapped | swap gap | empty | empty gap |\n|---|---|---|---|---|---|")
    clean_past_rows = []
    for t_value in steps:
        generator = torch.Generator().manual_seed(t_value)
        noise = diffusion.noise(latents.shape, generator).to(device)  # as in training
        t = torch.full((len(clips),), t_value, device=device)
        x_t = diffusion.q_sample(latents, t, noise)
        target = diffusion.velocity(latents, t, noise)
        error = {name: (unet(x_t, t, context, mask, fps=fps) - target).pow(2)  # (B, C, T, h, w)
                 for name, (context, mask) in contexts.items()}
        loss = {name: value.mean().item() for name, value in error.items()}
        print(f"| {t_value} | {loss['true']:.5f} | {loss['swapped']:.5f} | "
              f"{100 * (loss['swapped'] - loss['true']) / loss['true']:+.2f}% | {loss['empty']:.5f} | "
              f"{100 * (loss['empty'] - loss['true']) / loss['true']:+.2f}% |")
        if t_value == steps[0]:
            per_frame = error["true"].mean(dim=(0, 1, 3, 4))  # (T,)
        # the same noisy frames, each beside the clean frames before it
        # (B, C, 2T-1, h, w): the clean clip but its last frame, then its noisy twin; steps 0, then t
        twin, twin_steps = twin_clips(latents, x_t, t[:, None].expand(-1, num_frames))
        frame_loss = {name: (unet(twin, twin_steps, *contexts[name], fps=fps, frame_index=frame_index,
                                  attention_mask=attention_mask)[:, :, num_frames - 1:] - target
                             ).pow(2).mean(dim=(0, 1, 3, 4))  # (T,)
                      for name in ("true", "swapped")}
        gaps = 100 * (frame_loss["swapped"] - frame_loss["true"]) / frame_loss["true"]
        clean_past_rows.append(f"| {t_value} | " + " | ".join(f"{gap:+.1f}%" for gap in gaps.tolist()) + " |")
    print(f"\nloss per frame, true caption, t = {steps[0]}: "
          + " ".join(f"{value:.4f}" for value in per_frame.tolist()))
    print("\nclean past frames (the twin layout): swap gap of noisy frame k, which sees clean frames 0..k-1\n")
    print("| t | " + " | ".join(f"frame {k}" for k in range(num_frames)) + " |")
    print("|---" * (num_frames + 1) + "|")
    print("\n".join(clean_past_rows))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
