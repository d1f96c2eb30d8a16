"""Measure the VideoVAE against the image decoder: flicker and PSNR on clips neither trained on,
and jitter on generated latents decoded both ways.

    python benchmarks/videovae_quality.py --run runs/cpu [--num_clips 128] [--generated 32] [--control DIR]

Real clips come from the `val` split (training combinations, clips never used in training) and the
`heldout` split (combinations never trained on); each goes through the frozen encoder (posterior
mean) and then the image decoder (frame by frame) or the VideoVAE's decoder (the whole clip).
flicker = mean |(x^_{t+1} - x^_t) - (x_{t+1} - x_t)| and PSNR are in metrics.py. Where the run has a
video model, `--generated` clips are sampled once (DDIM 25 steps, fixed seeds) and their latents
decoded by both decoders; with no original to compare with, the table gives their jitter,
mean |x_{t+1} - 2 x_t + x_{t-1}|, beside the jitter of real clips.

`--control DIR`: a run with the same vae.pt whose VideoVAE stage trained the control, the image
decoder fine-tuned on the same clips for the same steps without temporal blocks
(`--vae.temporal_blocks false --vae.temporal_loss_weight 0`): its row tells what the temporal
blocks add beyond more decoder training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tiny_magicvideo.data import frames_to_video, sample_clip, split_combinations
from tiny_magicvideo.metrics import flicker, jitter, psnr
from tiny_magicvideo.models import load_vae, load_video_vae
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.runs import checkpoint_step, load_run_config, read_record
from tiny_magicvideo.shapes import plain_caption


def in_batches(function, clips: torch.Tensor, size: int = 16) -> torch.Tensor:
    return torch.cat([function(clips[i:i + size]) for i in range(0, len(clips), size)])


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with a VideoVAE, e.g. runs/cpu")
    parser.add_argument("--num_clips", type=int, default=128, help="real clips per split")
    parser.add_argument("--generated", type=int, default=32, help="generated clips (0: none)")
    parser.add_argument("--control", default=None, help="a run whose VideoVAE stage trained the control decoder")
    args = parser.parse_args()
    config = load_run_config(args.run)
    decoders = {"image": load_vae(args.run), "VideoVAE": load_video_vae(args.run)}
    if args.control:
        encoders = {read_record(Path(run) / "vae.pt")["fingerprint"] for run in (args.run, args.control)}
        if len(encoders) > 1:
            sys.exit(f"error: {args.control} has another vae.pt than {args.run}: a control must share the encoder")
        control = load_run_config(args.control).vae
        decoders[f"control (temporal blocks {control.temporal_blocks}, temporal loss weight "
                 f"{control.temporal_loss_weight:g})"] = load_video_vae(args.control)
    print(f"{args.run}: VideoVAE trained {checkpoint_step(Path(args.run) / 'videovae.pt')} steps, "
          f"{config.data.num_frames} frames of {config.data.image_size}x{config.data.image_size}\n")
    print("| clips | decoder | flicker | PSNR (dB) | jitter (real clips: reference) | seconds |")
    print("|---|---|---|---|---|---|")
    for split in ("val", "heldout"):
        originals = torch.stack([frames_to_video(sample_clip(config.data, split, i)[0])
                                 for i in range(args.num_clips)])
        print(f"| {args.num_clips} {split} | none (the clips) | 0 | - | {jitter(originals):.5f} | - |")
        for name, vae in decoders.items():
            start = time.perf_counter()
            decoded = in_batches(vae.reconstruct_video, originals)
            print(f"| {args.num_clips} {split} | {name} | {flicker(decoded, originals):.5f} | "
                  f"{psnr(decoded, originals):.2f} | {jitter(decoded):.5f} | {time.perf_counter() - start:.0f} |")

    if args.generated and (Path(args.run) / "unet.pt").is_file():
        pipeline = TextToVideo.from_run(args.run, device="cpu", stage="video", decoder="image")
        combos = split_combinations(config.data, "val")
        prompts = [plain_caption(*combos[i % len(combos)]) for i in range(args.generated)]
        latents = in_batches(lambda batch: pipeline([prompts[int(i)] for i in batch], seed=int(batch[0]),
                                                    num_inference_steps=25).latents,
                             torch.arange(args.generated))
        for name, vae in decoders.items():
            decoded = in_batches(vae.decode_video, latents).clamp(-1, 1)
            print(f"| {args.generated} generated | {name} | - | - | {jitter(decoded):.5f} | - |")


if __name__ == "__main__":
    main()
