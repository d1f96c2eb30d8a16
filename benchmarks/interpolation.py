"""Measure the frame interpolation model: keyframe clips against the same clips with frames filled between.

    python benchmarks/interpolation.py --run runs/cpu [--clips 100] [--stride 2] [--num_inference_steps 25]
        [--seeds reporting|tuning] [--device cpu|auto|cuda|mps]

Prompts "a <colour> <shape> moving <direction>" cycle through the combinations the run trained on.
Each batch is one TextToVideo call with interpolate=S: the keyframe clip (data.num_frames frames at
the default rate / S) and the interp model's S-1 frames between each pair ((T-1) S + 1 frames at
the default rate). The keyframe clip is those same keyframe latents decoded alone. For both kinds of
clip: the attribute detector's colour, shape, direction and all three, with 95% Wilson intervals and
counts; jitter (metrics.jitter: mean |x_{t+1} - 2 x_t + x_{t-1}| per pixel and frame); how straight
the object's path is (the RMS distance in pixels of its detected centres from their least-squares
line c_0 + v t, clips where it is found in every frame); the detected speed in pixels per frame
(filled clips should move 1/S as far a frame); and the share of clips whose object jumps more than
JUMP_PIXELS between two frames. Seeds as in video_quality.py (metrics.sampling_seed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from tiny_magicvideo.data import frames_to_video, split_combinations
from tiny_magicvideo.metrics import detect, jitter, sampling_seed, share_with_interval
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.shapes import plain_caption

JUMP_PIXELS = 8  # as video_quality.py: twice the fastest trained motion a frame
KINDS = ("keyframes", "filled")


def path_error(centres: np.ndarray) -> float | None:
    """RMS distance (px) of centres (T, 2) from their least-squares line c_0 + v t; None where the
    object is missing in a frame."""
    if np.isnan(centres).any():
        return None
    times = np.arange(len(centres), dtype=np.float64)[:, None]
    design = np.hstack([np.ones_like(times), times])  # (T, 2): [1, t]
    line, *_ = np.linalg.lstsq(design, centres, rcond=None)  # (2, 2): c_0 and v, per axis
    return float(np.sqrt(((centres - design @ line) ** 2).sum(axis=1).mean()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with video and interp stages")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--stride", type=int, default=None, help="S (default: the first of train.interp_strides)")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="DDIM steps (default: the run's)")
    parser.add_argument("--seeds", choices=("reporting", "tuning"), default="reporting")
    parser.add_argument("--batch_size", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    pipeline = TextToVideo.from_run(args.run, device=args.device)
    stride = pipeline.config.train.interp_strides[0] if args.stride is None else args.stride
    combos = split_combinations(pipeline.config.data, "train")
    hits = {kind: defaultdict(lambda: [0, 0]) for kind in KINDS}
    measures = {kind: defaultdict(list) for kind in KINDS}
    start, rate = time.perf_counter(), {}
    for first in range(0, args.clips, args.batch_size):
        chosen = [combos[i % len(combos)] for i in range(first, min(first + args.batch_size, args.clips))]
        output = pipeline([plain_caption(*combo) for combo in chosen], num_inference_steps=args.num_inference_steps,
                          seed=sampling_seed(first, args.seeds == "reporting"), interpolate=stride)
        clips = {"keyframes": pipeline.decode(output.latents[:, :, ::stride]), "filled": output.frames}
        rate = {"keyframes": output.fps / stride, "filled": output.fps}
        for kind, frames in clips.items():
            measures[kind]["jitter"].append(jitter(torch.stack([frames_to_video(clip) for clip in frames])))
            for (colour, shape, motion), clip in zip(chosen, frames):
                detection = detect(clip)
                matches = {"colour": detection.colour == colour, "shape": detection.shape == shape,
                           "direction": detection.direction == motion}
                moves = np.hypot(*np.diff(detection.centres, axis=0).T)
                for key, ok in [*matches.items(), ("all three", all(matches.values())),
                                (f"object jumps > {JUMP_PIXELS} px between frames",
                                 bool(np.nanmax(moves, initial=0) > JUMP_PIXELS))]:
                    hits[kind][key][0] += ok
                    hits[kind][key][1] += 1
                error = path_error(detection.centres)
                if error is not None:
                    measures[kind]["path"].append(error)
                if detection.speed is not None:
                    measures[kind]["speed"].append(detection.speed)
    print(f"{args.run}: {args.clips} clips, {args.seeds} seeds, keyframes {pipeline.config.data.num_frames} frames at "
          f"{rate['keyframes']:g} fps, filled (S = {stride}) {(pipeline.config.data.num_frames - 1) * stride + 1} "
          f"frames at {rate['filled']:g} fps; {time.perf_counter() - start:.0f} s")
    print("| | keyframe clips | filled clips |\n|---|---|---|")
    for key in hits["keyframes"]:
        print(f"| {key} | {share_with_interval(*hits['keyframes'][key])} | {share_with_interval(*hits['filled'][key])} |")
    summary = {kind: {name: statistics.mean(values) for name, values in measures[kind].items() if values}
               for kind in KINDS}
    print(f"| jitter | {summary['keyframes']['jitter']:.5f} | {summary['filled']['jitter']:.5f} |")
    for name, label in (("path", "path's RMS distance from a line, px"), ("speed", "speed, px per frame")):
        cells = [f"{summary[kind][name]:.2f} (of {len(measures[kind][name])})" if name in summary[kind] else "none"
                 for kind in KINDS]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    return {"hits": {kind: dict(hits[kind]) for kind in KINDS}, "summary": summary}


if __name__ == "__main__":
    main()
