"""Train tiny-magicvideo: python train.py [--preset P] [--section.key value ...]

Writes everything of a run under runs/<name>/ (see DESIGN.md, "A run directory").

The training stages (vae -> image -> video -> videovae) arrive with their issues. Until then this
command resolves the config, writes runs/<name>/config.json, and renders a grid of the training
clips with their captions to runs/<name>/samples/data.gif, so the data a run would see can be
watched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tiny_magicvideo.config import parse_config
from tiny_magicvideo.data import check_data_config, sample_clip, save_video, tile_clips


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a killed process never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> Path:
    config, _ = parse_config(argv, description=__doc__.splitlines()[0])
    try:
        check_data_config(config.data)
    except ValueError as error:
        sys.exit(f"error: {error}")
    run_dir = Path(config.runs_dir) / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "config.json", config.to_json())

    num_clips = 16
    clips = [sample_clip(config.data, "train", index) for index in range(num_clips)]
    grid = tile_clips(np.stack([frames for frames, _, _ in clips]), columns=4)
    path = save_video(grid, run_dir / "samples" / "data.gif", fps=8)
    print(f"preset {config.preset}: {config.data.num_frames} frames of "
          f"{config.data.image_size}x{config.data.image_size}; config in {run_dir / 'config.json'}")
    for row in range(0, num_clips, 4):
        print(" | ".join(caption for _, caption, _ in clips[row:row + 4]))
    print(f"wrote {path} (the training stages are not built yet: this shows the data)")
    return path


if __name__ == "__main__":
    main()
