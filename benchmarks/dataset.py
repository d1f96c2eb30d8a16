"""Measure the moving-shapes dataset and its attribute detector.

    python benchmarks/dataset.py [--num_clips 1000] [--num_frames 16] [--image_size 64]

Prints the time to render the clips (one process, then through the DataLoader's worker
processes) and the detector's agreement with the ground truth, per attribute, on those clips.
"""

from __future__ import annotations

import argparse
import time

from tiny_magicvideo.config import DataConfig
from tiny_magicvideo.data import make_loader, sample_clip
from tiny_magicvideo.metrics import agreement, detect
from tiny_magicvideo.shapes import COLOURS, MOTIONS, SHAPES


def measure(config: DataConfig, num_clips: int, label: str) -> None:
    start = time.perf_counter()
    clips = [sample_clip(config, "train", index) for index in range(num_clips)]
    render_seconds = time.perf_counter() - start
    start = time.perf_counter()
    detections = [detect(frames) for frames, _, _ in clips]
    detect_seconds = time.perf_counter() - start
    scores = agreement(detections, [attributes["objects"][0] for _, _, attributes in clips])
    print(f"| {label} | {num_clips} | {render_seconds:.1f} s | {detect_seconds:.1f} s | "
          + " | ".join(f"{100 * scores[name]:.1f}%" for name in ("colour", "shape", "direction", "speed", "all"))
          + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_clips", type=int, default=1000)
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    args = parser.parse_args()
    default = DataConfig(num_frames=args.num_frames, image_size=args.image_size)
    everything = DataConfig(num_frames=args.num_frames, image_size=args.image_size,
                            shapes=SHAPES, colours=tuple(COLOURS), motions=tuple(MOTIONS))
    print(f"{args.num_clips} clips of {args.num_frames} frames at {args.image_size}x{args.image_size}\n")
    print("| vocabulary | clips | render (1 process) | detect | colour | shape | direction | speed | all |")
    print("|---|---|---|---|---|---|---|---|---|")
    measure(default, args.num_clips, "default (3 shapes, 7 colours, 4 motions)")
    measure(everything, args.num_clips, "all (5 shapes, 8 colours, 9 motions)")

    for workers in (0, 2):
        loader = make_loader(default, batch_size=50, num_workers=workers,
                             num_clips=args.num_clips)
        start = time.perf_counter()
        for _ in loader:
            pass
        print(f"\nDataLoader, {workers} worker processes: {args.num_clips} clips as tensors in "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
