"""Frames to files: a GIF or MP4 of a clip, a PNG strip of its frames, tiled grids of clips, and the
PNG figures the stages draw. Frames are uint8 (T, H, W, 3), as everywhere on disk;
data.video_to_frames makes them from video tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from .data import video_to_frames


def tile_clips(clips: np.ndarray, columns: int, gap: int = 2) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> one uint8 (T, rows*(H+gap)-gap, columns*(W+gap)-gap, 3) grid."""
    count, num_frames, height, width, _ = clips.shape
    rows = math.ceil(count / columns)
    grid = np.zeros((num_frames, rows * (height + gap) - gap, columns * (width + gap) - gap, 3),
                    dtype=np.uint8)
    for i, clip in enumerate(clips):
        top, left = (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[:, top:top + height, left:left + width] = clip
    return grid


def save_video(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """Write uint8 (T, H, W, 3) frames as a looping GIF or an MP4, chosen by the file extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    elif suffix == ".mp4":
        # H.264 wants sides divisible by 2; pad with black rather than rescale
        pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    else:
        raise ValueError(f"cannot write {path.name!r}: use a .gif or .mp4 file name")
    return path


def save_strip(frames: np.ndarray, path: str | Path, gap: int = 2) -> Path:
    """Write uint8 (T, H, W, 3) frames side by side as one PNG, left to right in time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, tile_clips(frames[:, None], columns=len(frames), gap=gap)[0])
    return path


def draw_reconstructions(originals: torch.Tensor, reconstructed: torch.Tensor, path: Path) -> None:
    """PNG grid: originals, reconstructions, and their absolute difference (x4 for visibility)."""
    from matplotlib.figure import Figure  # here, not above: matplotlib takes 0.6 s to import, and sample.py needs none

    rows = {"original": originals, "reconstruction": reconstructed,
            "|difference| x 4": ((reconstructed - originals).abs() * 4 - 1).clamp(-1, 1)}
    figure = Figure(figsize=(1.6 * len(originals), 5.2), layout="constrained")
    axes = figure.subplots(len(rows), len(originals), squeeze=False)
    for row, (title, images) in enumerate(rows.items()):
        for column, image in enumerate(video_to_frames(images[:, :, None])[:, 0]):  # (N, H, W, 3)
            axes[row, column].imshow(image)
            axes[row, column].axis("off")
        axes[row, 0].set_title(title, loc="left", fontsize=9)
    figure.savefig(path, dpi=100)


def draw_image_grid(images: np.ndarray, titles: list[str], path: Path, columns: int = 4) -> None:
    """PNG grid of uint8 images (N, H, W, 3), each with its title above it."""
    from matplotlib.figure import Figure

    rows = -(-len(images) // columns)
    figure = Figure(figsize=(2.2 * columns, 2.5 * rows), layout="constrained")
    for axis, image, title in zip(figure.subplots(rows, columns, squeeze=False).flat, images, titles):
        axis.imshow(image)
        axis.set_title(title, fontsize=7)
        axis.axis("off")
    figure.savefig(path, dpi=100)
