"""The ladder from MagicVideo as published to the cpu preset: one video stage per row, each row adding
one change to the row above.

    python train.py --preset paper                                 # row 0's run, and the shared first stages
    python benchmarks/ladder.py --base runs/paper --row 3          # runs/ladder-3: row 3's video stage
    python benchmarks/ladder.py --base runs/paper --row 0 --seed 1 # runs/ladder-0-seed1: a second training
    python benchmarks/video_quality.py --run runs/ladder-3 --clips 100 --heldout_clips 40 --decoder image
    python benchmarks/ladder.py --list                             # the rows and their options

Every row starts from the base run's autoencoder and image stage (vae.pt, unet_image.pt and
config.json, copied), so the rows differ in their video stage alone; with the same seed, a row
trains the video stage that `python train.py --preset paper` plus the row's options would. Rows
marked "sampling" change only how clips are sampled: they take the row above's video model as it
is. The last row's options turn the paper preset into the cpu preset (tests/test_config.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROWS = [  # (change, options added to the row above, "train" or "sampling")
    ("MagicVideo as published (--preset paper)", [], "train"),
    ("the video stage fine-tunes every weight", ["--unet.video_trainable", "all"], "train"),
    ("the temporal attention also reads the prompt", ["--unet.temporal_text", "true"], "train"),
    ("two experts: the video model trains on t >= 700, the image model samples below",
     ["--train.video_t_min", "700", "--diffusion.image_model_below", "700"], "train"),
    ("frames sampled one after another", ["--diffusion.video_sampling", "frame_by_frame"], "sampling"),
    ("clean past frames, trained on twin clips (4 twins: 64 frames a step, as 8 clips)",
     ["--diffusion.past_frames", "clean", "--train.video_twin_clips", "true", "--train.video_batch_size", "4"],
     "train"),
    ("frame 1 weighs 4 frames in the loss", ["--train.video_frame1_weight", "4"], "train"),
    ("no guidance below step 700 (= the cpu preset)", ["--diffusion.unguided_below", "700"], "sampling"),
]


def row_options(row: int) -> list[str]:
    """The options of rows 1..row together: what row `row` adds to the paper preset."""
    return [option for _, options, _ in ROWS[1:row + 1] for option in options]


def run_name(row: int, seed: int) -> str:
    """runs/ladder-3, or runs/ladder-3-seed1 for a second training."""
    return f"ladder-{row}" + (f"-seed{seed}" if seed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="runs/paper", help="a run whose vae and image stages are finished")
    parser.add_argument("--row", type=int, help=f"0 to {len(ROWS) - 1}")
    parser.add_argument("--seed", type=int, default=0, help="the video stage's seed (default: the base run's, 0)")
    parser.add_argument("--list", action="store_true", help="print the rows and their options")
    args = parser.parse_args()
    if args.list or args.row is None:
        for row, (change, options, kind) in enumerate(ROWS):
            print(f"{row}: {change} [{kind}] {' '.join(options)}")
        return
    if not 0 <= args.row < len(ROWS):
        sys.exit(f"error: --row {args.row}: the rows are 0 to {len(ROWS) - 1}")
    from tiny_magicvideo.presets import get_preset

    base = Path(args.base)
    run_dir = base.parent / run_name(args.row, args.seed)
    if not (run_dir / "config.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        source, files = base, ["config.json", "vae.pt", "unet_image.pt"]
        above = base.parent / run_name(args.row - 1, args.seed)
        if ROWS[args.row][2] == "sampling" and (above / "unet.pt").is_file():
            # the row above's run and video model, sampled another way; without it (a second seed of
            # the last row, say) the video stage trains here, as the row above's would
            source = above
            files.append("unet.pt")
        for file in files:
            shutil.copy2(source / file, run_dir / file)
    # the paper preset's video steps, whatever the base run was asked for; no VideoVAE stage
    video_steps = str(get_preset("paper").train.video_steps)
    options = ["--runs_dir", str(run_dir.parent), "--name", run_dir.name, "--seed", str(args.seed),
               "--train.video_steps", video_steps, "--train.videovae_steps", "0", *row_options(args.row)]
    print(f"{ROWS[args.row][0]}: python train.py {' '.join(options)}")
    sys.exit(subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), *options]).returncode)


if __name__ == "__main__":
    main()
