"""Measure the text-to-video model: do sampled clips show the colour, shape and motion of their prompt?

    python benchmarks/video_quality.py --run runs/cpu [--clips 120] [--heldout_clips 60] [--num_inference_steps 25]
        [--guidance_scale G] [--unguided_below S] [--sampling frame_by_frame|joint] [--image_model_below S]
        [--seeds reporting|tuning] [--decoder video|image] [--device cpu|auto|cuda|mps]

Prompts "a <colour> <shape> moving <direction>": `--clips` of them cycle through the combinations
the model trained on, `--heldout_clips` through the held-out combinations it never saw
(data.held_out). Clip i is sampled at the run's frame rates in turn, in batches seeded by their
first clip's index (so the table is reproducible), with DDIM (`--num_inference_steps`, frame by frame unless the
run or `--sampling` says joint), the run's guidance scale (none below its unguided_below), and the
image model below the run's image_model_below. The attribute detector (metrics.py) reads each clip
back; the tables give the share of clips whose detected colour, shape and direction match the
prompt, and all three together, the share it could not read and why, how often the object's centre
jumps more than JUMP_PIXELS between two frames (and between the first two), then the detected speed
per frame rate (frame-rate conditioning at work). Clips are decoded as `sample.py` decodes them: by
the run's VideoVAE where it has one. Every share comes with its 95% Wilson interval and its count.
Seeds: `--seeds reporting` (the default) samples from a range that no setting was ever chosen on;
`--seeds tuning` from the range to choose settings on (metrics.sampling_seed). The same seeds draw
different noise on a GPU than on the CPU, so a table from each is a separate sample of the model.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict

import numpy as np

from tiny_magicvideo.data import frame_rates, split_combinations
from tiny_magicvideo.metrics import detect, sampling_seed, share_with_interval
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.shapes import plain_caption
from tiny_magicvideo.vae import VideoVAE

JUMP_PIXELS = 8  # a frame-to-frame step of the object's centre twice the fastest trained motion


def reason_kind(reason: str) -> str:
    """The detector's reason without its numbers: "several objects (up to 3 in a frame)" -> "several objects"."""
    return re.sub(r"\d+", "N", reason.split(":")[0].split(" (")[0])


def evaluate(pipeline: TextToVideo, combos: list[tuple[str, str, str]], num_clips: int, steps: int,
             scale: float, unguided_below: int, sampling: str, image_model_below: int, reporting: bool,
             batch_size: int = 20) -> tuple[dict, dict]:
    """(hits, speeds): hits[key] = [matches, clips]; speeds[fps] = detected px/frame of readable clips."""
    rates = frame_rates(pipeline.config.data)
    requests = [(combos[i % len(combos)], rates[i % len(rates)], i) for i in range(num_clips)]
    hits, speeds = defaultdict(lambda: [0, 0]), defaultdict(list)
    for first in range(0, num_clips, batch_size):
        for fps in rates:  # one pipeline call per frame rate and seed block
            chunk = [r for r in requests[first:first + batch_size] if r[1] == fps]
            if not chunk:
                continue
            prompts = [plain_caption(*combo) for combo, _, _ in chunk]
            clips = pipeline(prompts, num_inference_steps=steps, guidance_scale=scale, fps=fps,
                             seed=sampling_seed(chunk[0][2], reporting), sampling=sampling, image_model_below=image_model_below,
                             unguided_below=unguided_below).frames
            for ((colour, shape, motion), _, _), frames in zip(chunk, clips):
                detection = detect(frames)
                matches = {"colour": detection.colour == colour, "shape": detection.shape == shape,
                           "direction": detection.direction == motion}
                moves = np.hypot(*np.diff(detection.centres, axis=0).T)  # (T-1,) px, NaN where no object
                jumps = bool(np.nanmax(moves, initial=0) > JUMP_PIXELS)
                for key, ok in [*matches.items(), ("all three", all(matches.values())),
                                (f"all three at fps {fps:g}", all(matches.values())),
                                ("unreadable", detection.reason != ""),
                                (f"object jumps > {JUMP_PIXELS} px between frames", jumps),
                                # frame 0 sees no other frame (causal attention): is it the odd one out?
                                (f"object jumps > {JUMP_PIXELS} px between frames 0 and 1",
                                 bool(moves[0] > JUMP_PIXELS))]:
                    hits[key][0] += ok
                    hits[key][1] += 1
                if detection.reason:
                    hits[f"unreadable: {reason_kind(detection.reason)}"][0] += 1
                if detection.speed is not None:
                    speeds[fps].append(detection.speed)
    return hits, speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with a video stage, e.g. runs/cpu")
    parser.add_argument("--clips", type=int, default=120, help="clips of trained combinations")
    parser.add_argument("--heldout_clips", type=int, default=60, help="clips of held-out combinations")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the run's")
    parser.add_argument("--unguided_below", type=int, default=None,
                        help="no guidance below this step (default: the run's diffusion.unguided_below)")
    parser.add_argument("--sampling", choices=("frame_by_frame", "joint"), default=None,
                        help="frame by frame or all frames at once (default: the run's diffusion.video_sampling)")
    parser.add_argument("--image_model_below", type=int, default=None,
                        help="steps below this one are the image model's (default: the run's "
                             "diffusion.image_model_below; 0: the video model throughout)")
    parser.add_argument("--seeds", choices=("reporting", "tuning"), default="reporting",
                        help="reporting (the default): seeds no setting was chosen on; tuning: the seeds to "
                             "choose settings on (metrics.sampling_seed)")
    parser.add_argument("--decoder", choices=("video", "image"), default=None,
                        help="video: the run's VideoVAE, image: the image VAE frame by frame (default: the "
                             "VideoVAE where the run has one, as sample.py)")
    parser.add_argument("--device", default="cpu", help="cpu (the default), auto, cuda or mps")
    args = parser.parse_args()
    try:
        pipeline = TextToVideo.from_run(args.run, device=args.device, stage="video", decoder=args.decoder)
    except (FileNotFoundError, ValueError) as error:  # no such run, no video stage, no such device
        sys.exit(f"error: {error}")
    config = pipeline.config
    scale = config.diffusion.guidance_scale if args.guidance_scale is None else args.guidance_scale
    unguided = config.diffusion.unguided_below if args.unguided_below is None else args.unguided_below
    sampling = config.diffusion.video_sampling if args.sampling is None else args.sampling
    below = config.diffusion.image_model_below if args.image_model_below is None else args.image_model_below
    decoder = "VideoVAE" if isinstance(pipeline.vae, VideoVAE) else "image VAE"
    print(f"{args.run}: {config.data.num_frames} frames of {config.data.image_size}x{config.data.image_size}, "
          f"DDIM {args.num_inference_steps} steps ({sampling.replace('_', ' ')}), guidance scale {scale}"
          f"{f' from step {unguided} up' if unguided else ''}, "
          f"{f'the image model below step {below}' if below else 'the video model throughout'}, "
          f"decoded by the {decoder}, on {pipeline.device}, {args.seeds} seeds")

    # the trained combinations in a fixed shuffled order, so that fewer clips than combinations
    # still mix colours, shapes and motions
    trained = split_combinations(config.data, "val")
    trained = [trained[i] for i in np.random.default_rng(0).permutation(len(trained))]
    results = {}
    for name, combos, count in (("trained combinations", trained, args.clips),
                                ("held-out combinations", split_combinations(config.data, "heldout"),
                                 args.heldout_clips)):
        if count <= 0:
            continue
        start = time.perf_counter()
        results[name] = evaluate(pipeline, combos, count, args.num_inference_steps, scale, unguided, sampling, below,
                                 reporting=args.seeds == "reporting")
        seconds = time.perf_counter() - start
        print(f"{name}: {count} clips in {seconds:.0f} s ({seconds / count:.2f} s a clip)")

    names = list(results)
    print("\n| measure | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    keys = list(dict.fromkeys(key for hits, _ in results.values() for key in hits))
    # unreadable after the fps rows, then why (one row per kind of reason), then the jumps
    for key in sorted(keys, key=lambda key: (key.startswith("object jumps"), key.startswith("unreadable"))):
        cells = []
        for hits, _ in results.values():
            matches, count = hits.get(key, (0, 0))
            if key.startswith("unreadable: "):  # a reason is counted only where it occurs: share of all clips
                count = hits["unreadable"][1]
            cells.append(share_with_interval(matches, count) if count else "-")
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\n| frame rate | detected speed, px/frame (mean +- sd) | trained speeds |\n|---|---|---|")
    low, high = config.data.speed_range
    all_speeds = defaultdict(list)
    for _, speeds in results.values():
        for fps, values in speeds.items():
            all_speeds[fps] += values
    for fps, values in sorted(all_speeds.items()):
        stride = config.data.fps / fps
        print(f"| {fps:g} fps | {np.mean(values):.2f} +- {np.std(values):.2f} ({len(values)} clips) | "
              f"{low * stride:g} to {high * stride:g} |")


if __name__ == "__main__":
    main()
