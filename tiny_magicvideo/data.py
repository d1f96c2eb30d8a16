"""Moving shapes: procedural text-video pairs, with no download.

Each clip shows one coloured shape (optionally two) gliding in a straight line over a plain dark
background, and comes with a caption from a small grammar ("a red circle moving left", "red ball
sliding to the left") and the attributes that made it (colour, shape, direction, speed, size).
Everything is a pure function of (seed, split, index): the same index always gives the same clip,
in any worker process, so a DataLoader needs no shared state.

Shapes are drawn from signed distance functions (SDFs): for each pixel centre p, sdf(p) is the
distance to the shape's outline, negative inside. The share of a pixel the shape covers is close to
clip(0.5 - sdf(p), 0, 1), which gives anti-aliased edges without supersampling.

VideoDataset serves these clips, or real video (data.source ucf101 or folder: videos.py), alike.

What can be drawn and the words for it are shapes.py's tables; the config's checks
(checks.check_data_config) make sure a DataConfig's clips fit their frames before any is drawn.

Conventions (docs/architecture.md): frames on disk are uint8 (T, H, W, 3); tensors are float
(C, T, H, W) in [-1, 1]. `frames_to_video` and `video_to_frames` are the only conversions between
the two (media.py writes video files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .checks import check_data_config
from .config import DataConfig
from .shapes import (ARTICLES, BACKGROUND, COLOURS, DIRECTION_WORDS, MOTION_VERBS, MOTIONS, SHAPE_EXTENT, SHAPE_WORDS,
                     SHAPES, SPEED_WORDS, STATIC_PHRASES, parse_combination)
from .videos import CachedVideos

SPLITS = {"train": 0, "val": 1, "heldout": 2}  # heldout: the held-out combinations only

# ---------------------------------------------------------------------------------------------
# The one conversion between frames (uint8, channels last) and video tensors (float, [-1, 1]).


def frames_to_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., T, H, W, 3) -> float32 (..., 3, T, H, W) in [-1, 1]."""
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim < 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames shaped (..., T, H, W, 3), got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    video = frames.float() / 127.5 - 1.0  # x = u / 127.5 - 1 maps 0..255 to -1..1
    return video.movedim(-1, -4)  # (..., T, H, W, C) -> (..., C, T, H, W)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (..., 3, T, H, W) in [-1, 1] -> uint8 (..., T, H, W, 3); values outside are clipped."""
    if video.ndim < 4 or video.shape[-4] != 3:
        raise ValueError(f"expected a video shaped (..., 3, T, H, W), got {tuple(video.shape)}")
    frames = ((video.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return frames.to(torch.uint8).movedim(-4, -1).numpy()  # (..., C, T, H, W) -> (..., T, H, W, C)


# ---------------------------------------------------------------------------------------------
# Rendering.


@dataclass
class ShapeObject:
    """One object of a clip: what it is and where it goes. Positions are in pixels."""

    colour: str
    shape: str
    direction: str
    speed: float  # pixels per frame of the clip
    radius: float  # pixels
    start: tuple[float, float]  # (x, y) of the centre in frame 0

    def centres(self, num_frames: int) -> np.ndarray:
        """(T, 2): the (x, y) centre in every frame, c_t = c_0 + t * speed * direction."""
        velocity = self.speed * np.array(MOTIONS[self.direction])
        return np.array(self.start) + np.arange(num_frames)[:, None] * velocity

    def attributes(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "direction": self.direction,
                "speed": self.speed, "radius": self.radius, "start": self.start}


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels) from points (x, y), relative to the centre, to the outline."""
    if shape == "circle":
        return np.hypot(x, y) - radius
    if shape == "square":  # box SDF: outside distance + inside distance
        half = 0.75 * radius  # corner at 0.75 * sqrt(2) r = 1.06 r, inside SHAPE_EXTENT
        dx, dy = np.abs(x) - half, np.abs(y) - half
        outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
        return outside + np.minimum(np.maximum(dx, dy), 0)
    if shape == "diamond":  # |x| + |y| = h, as a distance to the nearest edge line
        return (np.abs(x) + np.abs(y) - 1.2 * radius) / math.sqrt(2)
    if shape == "triangle":  # equilateral, pointing up, circumradius 1.2 r
        return _polygon_sdf(x, y, _regular_polygon(3, 1.2 * radius))
    if shape == "star":  # five points, pointing up, inner/outer radius 0.45
        outer = _regular_polygon(5, 1.3 * radius)
        inner = _regular_polygon(5, 0.45 * 1.3 * radius, rotation=math.pi / 5)
        vertices = np.stack([outer, inner], axis=1).reshape(10, 2)  # outer, inner, outer, ...
        return _polygon_sdf(x, y, vertices)
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def _regular_polygon(num_vertices: int, circumradius: float, rotation: float = 0.0) -> np.ndarray:
    """(N, 2) vertices in image coordinates, the first one straight up (y negative)."""
    angles = rotation + 2 * math.pi * np.arange(num_vertices) / num_vertices
    return circumradius * np.stack([np.sin(angles), -np.cos(angles)], axis=1)


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon: min distance to its edges, sign by crossings."""
    distance_sq = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        px, py = x - ax, y - ay
        # closest point on the edge a + s (b - a), with s clamped to [0, 1]
        s = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        distance_sq = np.minimum(distance_sq, (px - s * ex) ** 2 + (py - s * ey) ** 2)
        # even-odd rule: a horizontal ray from the point crosses this edge
        crosses = ((ay > y) != (by > y)) & (x < ax + (y - ay) * ex / (ey if ey else 1e-12))
        inside ^= crosses
    return np.where(inside, -1.0, 1.0) * np.sqrt(distance_sq)


def render_clip(objects: list[ShapeObject], num_frames: int, image_size: int) -> np.ndarray:
    """Draw the objects over the background: uint8 (T, H, W, 3), anti-aliased edges."""
    pixel_centres = np.arange(image_size) + 0.5
    canvas = np.empty((num_frames, image_size, image_size, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    for obj in objects:
        centres = obj.centres(num_frames)  # (T, 2)
        x = pixel_centres[None, None, :] - centres[:, 0, None, None]  # (T, 1, W)
        y = pixel_centres[None, :, None] - centres[:, 1, None, None]  # (T, H, 1)
        x, y = np.broadcast_arrays(x, y)  # (T, H, W) each
        coverage = np.clip(0.5 - shape_sdf(obj.shape, x, y, obj.radius), 0.0, 1.0)
        coverage = coverage[..., None].astype(np.float32)  # (T, H, W, 1)
        # "over" compositing: pixel = coverage * colour + (1 - coverage) * what was there
        canvas = coverage * np.array(COLOURS[obj.colour], np.float32) + (1 - coverage) * canvas
    return np.round(canvas).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Sampling clips and captions.


def all_combinations(config: DataConfig) -> list[tuple[str, str, str]]:
    return [(c, s, m) for c in config.colours for s in config.shapes for m in config.motions]


def split_combinations(config: DataConfig, split: str) -> list[tuple[str, str, str]]:
    """The (colour, shape, motion) combinations a split draws from."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    held_out = {parse_combination(combo) for combo in config.held_out}
    if split == "heldout":
        return sorted(held_out)
    return [combo for combo in all_combinations(config) if combo not in held_out]


def caption_for(objects: list[ShapeObject], speed_class: list[str | None],
                rng: np.random.Generator) -> str:
    """Caption from the grammar: [article] colour shape (verb [speed] direction | static phrase)."""
    phrases = []
    for obj, speed in zip(objects, speed_class):
        words = [rng.choice(ARTICLES), obj.colour, rng.choice(SHAPE_WORDS[obj.shape])]
        if obj.direction == "static":
            words.append(rng.choice(STATIC_PHRASES))
        else:
            words.append(rng.choice(MOTION_VERBS))
            if speed is not None:
                words.append(rng.choice(SPEED_WORDS[speed]))
            words.append(rng.choice(DIRECTION_WORDS[obj.direction]))
        phrases.append(" ".join(word for word in words if word))
    return " and ".join(phrases)


def frame_rates(config: DataConfig) -> list[float]:
    """The frame rates clips are shown at, one per stride: data.fps / s."""
    return [config.fps / stride for stride in config.frame_strides]


def sample_clip(config: DataConfig, split: str, index: int) -> tuple[np.ndarray, str, dict]:
    """The clip at `index` of `split`: (frames uint8 (T, H, W, 3), caption, attributes).

    attributes = {"num_objects": n, "objects": [ShapeObject.attributes(), ...], "stride": s,
    "fps": data.fps / s}; an object's speed there is in pixels per frame of this clip.
    """
    combos = split_combinations(config, split)
    rng = np.random.default_rng([config.seed, SPLITS[split], index])
    strides = config.frame_strides  # drawn only when there is a choice: one stride leaves the rng as it was
    stride = int(strides[rng.integers(len(strides))]) if len(strides) > 1 else strides[0]
    num_objects = 2 if rng.random() < config.two_objects_prob else 1
    for _ in range(100):  # redraw until two objects never overlap (one object: first try)
        objects = [_draw_object(config, *combos[rng.integers(len(combos))], stride, rng)
                   for _ in range(num_objects)]
        if num_objects == 1 or _apart(*objects, config.num_frames):
            break
    else:
        raise ValueError("could not place two separate objects; raise data.image_size or lower "
                         "data.size_range")
    low, high = config.speed_range
    speed_class = [  # "slowly" / "quickly" describe the source motion, whatever the frame rate
        None if obj.direction == "static" or rng.random() >= config.speed_word_prob
        else ("slow" if obj.speed / stride < (low + high) / 2 else "fast")
        for obj in objects
    ]
    frames = render_clip(objects, config.num_frames, config.image_size)
    caption = caption_for(objects, speed_class, rng)
    return frames, caption, {"num_objects": num_objects, "objects": [o.attributes() for o in objects],
                             "stride": stride, "fps": config.fps / stride}


def _draw_object(config: DataConfig, colour: str, shape: str, motion: str, stride: int,
                 rng: np.random.Generator) -> ShapeObject:
    """Draw size, speed and a start such that the whole path stays inside the frame; seen every
    `stride`-th source frame, the object moves stride x speed pixels a frame."""
    size = config.image_size
    radius = float(rng.uniform(*config.size_range)) * size
    speed = 0.0 if motion == "static" else stride * float(rng.uniform(*config.speed_range))
    margin = SHAPE_EXTENT[shape] * radius + 1
    travel = speed * (config.num_frames - 1) * np.array(MOTIONS[motion])  # (dx, dy)
    # the start range that keeps both ends of the path inside [margin, size - margin]
    low = margin - np.minimum(travel, 0)
    high = size - margin - np.maximum(travel, 0)
    if (high < low).any():  # a config built by hand, not through checks.check_data_config
        raise ValueError(f"a clip does not fit: a {shape} of radius {radius:.1f} px moving {motion} at {speed:.2f} "
                         f"px/frame for {config.num_frames} frames leaves a {size} px frame; lower "
                         f"data.speed_range or data.num_frames, or raise data.image_size")
    start = tuple(float(v) for v in rng.uniform(low, high))
    return ShapeObject(colour, shape, motion, speed, radius, start)


def _apart(a: ShapeObject, b: ShapeObject, num_frames: int) -> bool:
    gap = np.linalg.norm(a.centres(num_frames) - b.centres(num_frames), axis=1)
    return bool(gap.min() > SHAPE_EXTENT[a.shape] * a.radius + SHAPE_EXTENT[b.shape] * b.radius + 3)


# ---------------------------------------------------------------------------------------------
# PyTorch dataset and loader.


class VideoDataset(Dataset):
    """The clips of data.source as a Dataset: item i is {"video", "caption", "fps", "attributes"}.

    video: float (3, T, H, W) in [-1, 1]. The moving shapes' splits: "train" (training combinations),
    "val" (the same combinations, other clips) and "heldout" (the held-out combinations, for
    generalisation). Real video's (data.source ucf101 or folder, videos.py): "train" and "val".
    """

    def __init__(self, config: DataConfig, split: str = "train", num_clips: int | None = None):
        check_data_config(config)
        if config.source == "shapes":
            split_combinations(config, split)  # raises on an unknown split
            self.files = None
        else:
            self.files = CachedVideos(config)  # decodes the videos into the cache the first time
            self.files.videos_of(split)  # raises on an unknown split
        self.config, self.split = config, split
        default = config.num_train_clips if split == "train" else config.num_val_clips
        self.num_clips = default if num_clips is None else num_clips

    def __len__(self) -> int:
        return self.num_clips

    def clip(self, index: int) -> tuple[np.ndarray, str, dict]:
        """(frames uint8 (T, H, W, 3), caption, attributes): sample_clip, or CachedVideos.clip."""
        return sample_clip(self.config, self.split, index) if self.files is None else self.files.clip(self.split, index)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        frames, caption, attributes = self.clip(index)
        return {"video": frames_to_video(frames), "caption": caption, "fps": attributes["fps"],
                "attributes": attributes}


def collate_clips(items: list[dict]) -> dict:
    """Stack videos to (B, 3, T, H, W) and frame rates to (B,); captions and attributes stay lists."""
    return {"video": torch.stack([item["video"] for item in items]),
            "fps": torch.tensor([item["fps"] for item in items], dtype=torch.float32),
            "caption": [item["caption"] for item in items],
            "attributes": [item["attributes"] for item in items]}


class StepBatchSampler(Sampler):
    """Batch s holds clips s*B ... s*B + B - 1 of the dataset, wrapping around at its end.

    Procedural clips are already in random order, so nothing needs shuffling, and the batch at a
    step is a function of the step alone: a run resumed at `start_step` sees exactly the batches
    an uninterrupted run would. Without `num_steps`, one pass over the dataset (the last batch may
    be short). Under torchrun, process `rank` of `world_size` takes its B / world_size of each.
    """

    def __init__(self, num_clips: int, batch_size: int, start_step: int = 0, num_steps: int | None = None,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"a batch of {batch_size} cannot be shared by {world_size} processes; use a "
                             f"batch size divisible by {world_size} (train.batch_size, train.video_batch_size)")
        self.num_clips, self.batch_size, self.start_step = num_clips, batch_size, start_step
        self.wrap = num_steps is not None
        self.num_steps = math.ceil(num_clips / batch_size) if num_steps is None else num_steps
        self.share = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)

    def __iter__(self):
        for step in range(self.start_step, self.num_steps):
            first = step * self.batch_size
            end = first + self.batch_size if self.wrap else min(first + self.batch_size, self.num_clips)
            yield [i % self.num_clips for i in range(first, end)][self.share]

    def __len__(self) -> int:
        return max(self.num_steps - self.start_step, 0)


def make_loader(config: DataConfig, split: str = "train", batch_size: int = 32, num_workers: int | None = None,
                num_clips: int | None = None, start_step: int = 0, num_steps: int | None = None,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches of VideoDataset in step order (see StepBatchSampler), made by worker processes."""
    dataset = VideoDataset(config, split, num_clips)
    workers = config.num_workers if num_workers is None else num_workers
    sampler = StepBatchSampler(len(dataset), batch_size, start_step, num_steps, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_clips)
