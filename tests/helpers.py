"""What the tests share: train.py and sample.py run as a student runs them, `python train.py ARGS`,
but in this process, so that a test does not pay for importing torch again (the scripts are run,
never imported: they hold argument handling, and everything they call is the library's); and
reading back the GIFs, MP4s and PNGs they write."""

from __future__ import annotations

import runpy
import sys
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from tiny_magicvideo.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, argv: list[str]) -> None:
    """`python <script> <argv>` in this process: sys.exit in the script raises SystemExit here."""
    saved_argv, saved_format = sys.argv, warnings.formatwarning
    sys.argv = [str(ROOT / script), *argv]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv, warnings.formatwarning = saved_argv, saved_format


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The value that follows `name` in argv (the last one, as argparse takes it), or `default`."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == name]
    return values[-1] if values else default


def train(argv: list[str]) -> Path:
    """python train.py ARGV; returns the run directory, <--runs_dir>/<--name>."""
    run_script("train.py", argv)
    name = option(argv, "--name") or get_preset(option(argv, "--preset", "auto")).name
    return Path(option(argv, "--runs_dir", "runs")) / name


def sample(argv: list[str]) -> Path:
    """python sample.py ARGV; returns the clip it wrote (--out)."""
    run_script("sample.py", argv)
    return Path(option(argv, "--out", "sample.gif"))


def load_video(path: str | Path) -> np.ndarray:
    """A GIF, MP4 or PNG the project wrote, as uint8 frames (T, H, W, 3); a PNG is one frame."""
    frames = np.asarray(iio.imread(path, index=None))
    return np.ascontiguousarray((frames[None] if frames.ndim == 3 else frames)[..., :3])
