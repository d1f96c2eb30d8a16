"""Draw the README's picture: one clip for each of 12 prompts, in a labelled grid, as a looping GIF.

    python benchmarks/gallery.py --run runs/cpu [--out docs/gallery.gif] [--decoder video|image]

Nine prompts of combinations the model trained on and three it never saw (data.held_out), sampled
with the run's own settings from one reporting seed (metrics.sampling_seed: no setting was chosen on
it, and the clips were not picked), so the picture shows what a student's run gives. Under each clip:
its prompt ("a <colour> <shape> moving <direction>", shortened), and what the attribute detector
reads back from it, so a clip that misses says so.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from tiny_magicvideo.data import split_combinations
from tiny_magicvideo.media import save_video
from tiny_magicvideo.metrics import detect, sampling_seed
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.shapes import plain_caption

TRAINED = [("red", "circle", "left"), ("green", "square", "down"), ("blue", "triangle", "right"),
           ("yellow", "circle", "up"), ("magenta", "triangle", "left"), ("cyan", "square", "right"),
           ("white", "circle", "down"), ("red", "triangle", "up"), ("blue", "square", "left")]
COLUMNS = 4


def labelled_frames(frames: np.ndarray, labels: list[str], scale: int) -> np.ndarray:
    """uint8 clips (N, T, H, W, 3) and N labels -> uint8 (T, height, width, 3): the clips in a grid with
    their labels beneath, one matplotlib drawing per frame."""
    import imageio.v3 as iio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, num_frames, height, width, _ = frames.shape
    rows = -(-count // COLUMNS)
    inches = width * scale / 100
    out = []
    for frame in range(num_frames):
        figure, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * inches * 1.35, rows * inches * 1.5),
                                    dpi=100, facecolor="white")
        for i, axis in enumerate(axes.flat):
            axis.axis("off")
            if i < count:
                axis.imshow(frames[i, frame], interpolation="nearest")
                axis.set_title(labels[i], fontsize=7, y=-0.32)
        figure.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.1, wspace=0.1, hspace=0.45)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", facecolor="white")
        plt.close(figure)
        out.append(iio.imread(buffer.getvalue())[..., :3])
    return np.stack(out)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/cpu", help="a run directory with a video stage")
    parser.add_argument("--out", default="docs/gallery.gif", help="the GIF to write")
    parser.add_argument("--decoder", choices=("video", "image"), default=None,
                        help="default: the VideoVAE where the run has one, as sample.py")
    parser.add_argument("--scale", type=int, default=2, help="each frame drawn this many times its size")
    args = parser.parse_args(argv)
    try:
        pipeline = TextToVideo.from_run(args.run, device="cpu", stage="video", decoder=args.decoder)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    held_out = split_combinations(pipeline.config.data, "heldout")[:3]
    combos = TRAINED + held_out
    prompts = [plain_caption(*combo) for combo in combos]
    frames = pipeline(prompts, seed=sampling_seed(0, reporting=True)).frames  # (12, T, H, W, 3)
    labels, right = [], 0
    for (colour, shape, motion), prompt, clip in zip(combos, prompts, frames):
        seen = detect(clip)
        hit = (seen.colour, seen.shape, seen.direction) == (colour, shape, motion)
        right += hit
        held = (colour, shape, motion) in held_out
        read = f"{seen.colour} {seen.shape} {seen.direction}" if not seen.reason else "unreadable"
        labels.append(f"{colour} {shape} {motion}{', held out' if held else ''}\nread: {read}")
        print(f"{prompt}{' (held out)' if held else ''}: the detector reads {read} ({'right' if hit else 'wrong'})")
    path = save_video(labelled_frames(frames, labels, args.scale), args.out, fps=pipeline.config.data.fps)
    print(f"{right} of {len(combos)} clips show all three; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


if __name__ == "__main__":
    main()
