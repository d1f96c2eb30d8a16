"""From a trained run to video files.

`TextToVideo` (a run directory -> generated frames) arrives with the text-to-video stage. Already
here: the video-file end of the pipeline, used by training samples, benchmarks and lessons.
GIF and MP4 are chosen by the file's extension; frames are uint8 (T, H, W, 3) as everywhere on disk.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np



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
    import imageio.v3 as iio

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


def load_video(path: str | Path) -> np.ndarray:
    """Read a GIF or video file as uint8 (T, H, W, 3); a missing or unreadable file is a clear error."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    try:
        frames = np.asarray(iio.imread(path, index=None))
    except Exception as error:  # imageio raises many types for corrupt files
        raise ValueError(f"cannot read {path} as a video ({error}); is the file complete?") from error
    if frames.ndim == 3:  # a single image or greyscale frames
        frames = frames[None] if frames.shape[-1] in (3, 4) else frames[..., None].repeat(3, -1)
    return np.ascontiguousarray(frames[..., :3])
