"""Measure a trained VAE: reconstruction PSNR on clips it never saw, and whether the attribute
detector reads the same colour, shape, direction and speed from the reconstructions.

    python benchmarks/vae_quality.py --run runs/cpu [--num_clips 200]

Clips come from the `val` split (training combinations, unseen clips) and the `heldout` split
(combinations never trained on). Every frame goes through encode (posterior mean) and decode.
"""

from __future__ import annotations

import argparse
import time

import torch

from tiny_magicvideo.data import frames_to_video, sample_clip, video_to_frames
from tiny_magicvideo.metrics import ATTRIBUTES, attribute_matches, detect, psnr
from tiny_magicvideo.models import load_vae
from tiny_magicvideo.runs import checkpoint_step, load_run_config


@torch.no_grad()
def evaluate(vae, config, split: str, num_clips: int) -> dict:
    originals = torch.stack([frames_to_video(sample_clip(config.data, split, i)[0])
                             for i in range(num_clips)])
    reconstructed = torch.cat([vae.reconstruct_video(originals[i:i + 16]) for i in range(0, num_clips, 16)])
    frames_psnr = psnr(reconstructed.transpose(1, 2).flatten(0, 1), originals.transpose(1, 2).flatten(0, 1))
    same = {name: 0 for name in (*ATTRIBUTES, "all")}
    for original, copy in zip(video_to_frames(originals), video_to_frames(reconstructed)):
        truth = detect(original)  # what the detector reads from the original is the reference
        reference = {"colour": truth.colour, "shape": truth.shape, "direction": truth.direction,
                     "speed": truth.speed}
        for name, agrees in attribute_matches(detect(copy), reference).items():
            same[name] += agrees
    return {"psnr": frames_psnr, **{name: count / num_clips for name, count in same.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory, e.g. runs/cpu")
    parser.add_argument("--num_clips", type=int, default=200)
    args = parser.parse_args()
    config = load_run_config(args.run)
    vae = load_vae(args.run)
    print(f"{args.run}: VAE trained {checkpoint_step(f'{args.run}/vae.pt')} steps, "
          f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, "
          f"{config.data.num_frames} frames of {config.data.image_size}x{config.data.image_size}, "
          f"scaling factor {config.vae.scaling_factor:.4f}\n")
    print("| clips | PSNR (dB) | same colour | same shape | same direction | same speed | all four | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for split in ("val", "heldout"):
        start = time.perf_counter()
        result = evaluate(vae, config, split, args.num_clips)
        print(f"| {args.num_clips} {split} | {result['psnr']:.2f} | "
              + " | ".join(f"{100 * result[name]:.1f}%" for name in (*ATTRIBUTES, "all"))
              + f" | {time.perf_counter() - start:.0f} |")


if __name__ == "__main__":
    main()
