"""Measure the text-to-image model: do sampled images show the colour and shape of their prompt?

    python benchmarks/image_quality.py --run runs/cpu [--samples_per_prompt 5] [--num_inference_steps 25]
        [--guidance_scale G] [--unguided_below S]

One prompt per colour x shape of the run's data config ("a red circle moving left", the motion
word cycling), `samples_per_prompt` seeds each, DDIM with `--num_inference_steps` steps and the run's guidance
scale (none below the run's unguided_below). The attribute detector (metrics.py) reads colour and
shape from each image; each share is printed with its 95% Wilson interval. `--seeds reporting` (the
default) samples from seeds no setting was chosen on, `--seeds tuning` from those to choose on.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from tiny_magicvideo.metrics import detect, sampling_seed, share_with_interval
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.shapes import plain_caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory, e.g. runs/cpu")
    parser.add_argument("--samples_per_prompt", type=int, default=5)
    parser.add_argument("--num_inference_steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the run's")
    parser.add_argument("--unguided_below", type=int, default=None,
                        help="no guidance below this step (default: the run's diffusion.unguided_below)")
    parser.add_argument("--seeds", choices=("reporting", "tuning"), default="reporting",
                        help="reporting (the default): seeds no setting was chosen on; tuning: the seeds to "
                             "choose settings on (metrics.sampling_seed)")
    args = parser.parse_args()
    pipeline = TextToVideo.from_run(args.run, device="cpu", stage="image", decoder="image")  # the image model
    data = pipeline.config.data
    combos = [(colour, shape) for colour in data.colours for shape in data.shapes]
    prompts = [plain_caption(colour, shape, data.motions[i % len(data.motions)])
               for i, (colour, shape) in enumerate(combos)]
    scale = pipeline.config.diffusion.guidance_scale if args.guidance_scale is None else args.guidance_scale
    unguided = pipeline.config.diffusion.unguided_below if args.unguided_below is None else args.unguided_below

    hits = defaultdict(lambda: [0, 0])  # key -> [matches, total]
    start = time.perf_counter()
    for index in range(args.samples_per_prompt):
        seed = sampling_seed(index, reporting=args.seeds == "reporting")
        images = pipeline(prompts, num_inference_steps=args.num_inference_steps, guidance_scale=scale, seed=seed,
                          unguided_below=unguided).frames
        for (colour, shape), image in zip(combos, images[:, 0]):
            detection = detect(image)
            for key, ok in (("colour", detection.colour == colour), ("shape", detection.shape == shape),
                            ("both", detection.colour == colour and detection.shape == shape),
                            ("unreadable", detection.reason != ""),
                            (f"colour {colour}", detection.colour == colour),
                            (f"shape {shape}", detection.shape == shape)):
                hits[key][0] += ok
                hits[key][1] += 1
    seconds = time.perf_counter() - start
    total = hits["colour"][1]
    print(f"{args.run}: {total} images ({len(prompts)} prompts x {args.samples_per_prompt} {args.seeds} seeds), "
          f"DDIM {args.num_inference_steps} steps, guidance scale {scale}"
          f"{f' from step {unguided} up' if unguided else ''}, "
          f"{seconds:.0f} s ({seconds / total:.2f} s an image on the CPU)\n")
    print("| measure | share (95% interval) of images |\n|---|---|")
    for key, (matches, count) in hits.items():
        print(f"| {key} | {share_with_interval(matches, count)} |")


if __name__ == "__main__":
    main()
