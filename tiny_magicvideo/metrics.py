"""Measures: does a clip show what its prompt asked for?

The attribute detector reads colour, shape, direction and speed of the one object in a
moving-shapes clip from its pixels alone, with no learned weights, so that it can judge generated
videos without being fooled the way a learned classifier could be:

1. background: the median colour of the frame borders;
   foreground: pixels whose colour differs from it by more than a threshold.
2. objects: connected foreground regions in each frame. No region in some frame, two sizeable
   regions, or one that fills a quarter of the frame, and the answer is "unknown" with the
   reason, never a confident guess.
3. colour: the hue of the object's interior pixels, matched to the nearest named colour.
4. shape: geometry of the object's soft coverage mask (its fill of the bounding box, how far its
   centroid sits below the middle, its width/height), matched to the same features of each shape
   drawn at the same size by data.py's renderer.
5. direction and speed: a least-squares line through the centroid trajectory, c_t = c_0 + v t;
   speed = |v| in pixels per frame, direction = v rounded to the nearest of 8 compass directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .data import ShapeObject, render_clip
from .shapes import BACKGROUND, COLOURS, SHAPES

UNKNOWN = "unknown"
FOREGROUND_THRESHOLD = 40.0  # max channel difference from the background, 0..255
MIN_OBJECT_PIXELS = 6  # smaller regions are specks, not objects
SPECK_FRACTION = 0.2  # regions under this share of the largest one are ignored as specks
MAX_OBJECT_FRACTION = 0.25  # a region covering more of the frame is not an object but a mess
STATIC_SPEED = 0.3  # pixels per frame: slower than this counts as standing still
# Compass directions counter-clockwise from "right", in 45-degree steps (y points up here).
COMPASS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


@dataclass
class Detection:
    """What the detector read from a clip; any attribute it could not read is UNKNOWN / None."""

    colour: str = UNKNOWN
    shape: str = UNKNOWN
    direction: str = UNKNOWN
    speed: float | None = None  # pixels per frame
    num_objects: int = 0  # objects seen per frame (the most frequent count)
    reason: str = ""  # why something is unknown, empty when everything was read
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (T, 2) x, y; NaN if none


def detect(frames: np.ndarray) -> Detection:
    """Read the object's attributes from uint8 frames (T, H, W, 3), or one image (H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    pixels = frames.astype(np.float32)
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    background = np.median(border.reshape(-1, 3), axis=0)  # (3,)
    foreground = np.abs(pixels - background).max(axis=-1) > FOREGROUND_THRESHOLD  # (T, H, W)

    labels = _connected_components(foreground)  # (T, H, W), 0 = background
    object_masks, counts = _object_masks(labels)  # (T, H, W) bool, (T,) objects per frame
    num_objects = int(np.bincount(counts).argmax())
    detection = Detection(num_objects=num_objects,
                          centres=np.full((len(frames), 2), np.nan))
    if counts.max() == 0:
        detection.reason = "no object"
        return detection
    if counts.max() > 1:
        detection.reason = f"several objects (up to {counts.max()} in a frame)"
        return detection
    if counts.min() == 0:
        detection.reason = f"the object is missing in {int((counts == 0).sum())} of {len(counts)} frames"
        return detection
    largest_share = object_masks.mean(axis=(1, 2)).max()
    if largest_share > MAX_OBJECT_FRACTION:
        detection.reason = f"no distinct object: one region covers {largest_share:.0%} of a frame"
        return detection

    colour_rgb = _interior_colour(pixels, object_masks, background)
    detection.colour = classify_colour(colour_rgb)
    coverage = _coverage(pixels, object_masks, background, colour_rgb)  # (T, H, W) in [0, 1]
    features = np.median([shape_features(c) for c in coverage], axis=0)
    detection.shape = classify_shape(features, area=float(np.median(coverage.sum(axis=(1, 2)))))
    detection.centres = np.array([_centroid(c) for c in coverage])
    if len(frames) > 1:
        detection.direction, detection.speed = read_motion(detection.centres)
    readable = ("colour", "shape", "direction") if len(frames) > 1 else ("colour", "shape")
    unread = [name for name in readable if getattr(detection, name) == UNKNOWN]
    if unread:
        detection.reason = f"could not read {', '.join(unread)}"
    return detection


def _connected_components(mask: np.ndarray) -> np.ndarray:
    """Label 8-connected regions of each frame of a (T, H, W) bool mask.

    Every foreground pixel starts with its own id; repeatedly taking the largest id among its
    3x3 neighbours spreads each region's largest id over the whole region.
    """
    mask_t = torch.from_numpy(mask)[:, None].float()  # (T, 1, H, W)
    ids = torch.arange(1, mask.size + 1, dtype=torch.float32).reshape(mask_t.shape) * mask_t
    while True:
        spread = F.max_pool2d(ids, kernel_size=3, stride=1, padding=1) * mask_t
        if torch.equal(spread, ids):
            return ids[:, 0].long().numpy()
        ids = spread


def _object_masks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the largest region's mask and how many regions are big enough to be objects."""
    sizes = [np.bincount(frame.ravel())[1:] for frame in labels]  # pixels per id, id 0 dropped
    largest = max((s.max() for s in sizes if s.size), default=0)
    min_size = max(MIN_OBJECT_PIXELS, SPECK_FRACTION * largest)
    counts = np.array([int((s >= min_size).sum()) for s in sizes])
    masks = np.stack([frame == (s.argmax() + 1) if s.size else np.zeros_like(frame, bool)
                      for frame, s in zip(labels, sizes)])
    return masks, counts


def _interior_colour(pixels, object_masks, background) -> np.ndarray:
    """Mean RGB of the object's pixels farthest from the background (edges are blended)."""
    object_pixels = pixels[object_masks]  # (N, 3)
    distance = np.linalg.norm(object_pixels - background, axis=1)
    return object_pixels[distance >= 0.8 * distance.max()].mean(axis=0)


def _coverage(pixels, object_masks, background, colour_rgb) -> np.ndarray:
    """Soft mask: each pixel's share of object colour, alpha = <p - bg, c - bg> / |c - bg|^2.

    Taken over the object's region grown by one pixel, so the faint edge pixels count too.
    """
    grown = F.max_pool2d(torch.from_numpy(object_masks)[:, None].float(), 3, 1, 1)[:, 0].numpy() > 0
    direction = colour_rgb - background
    alpha = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    return np.clip(alpha, 0.0, 1.0) * grown


def _centroid(coverage: np.ndarray) -> np.ndarray:
    """(x, y) centre of mass of a soft mask, in pixels (pixel centres at i + 0.5)."""
    ys, xs = np.indices(coverage.shape) + 0.5
    total = coverage.sum()
    return np.array([(coverage * xs).sum() / total, (coverage * ys).sum() / total])


def shape_features(coverage: np.ndarray) -> np.ndarray:
    """(fill, drop, aspect, spread) of a soft mask (H, W), independent of size and position.

    fill   = area / (width * height): circle pi/4, square 1, triangle and diamond 1/2, star ~0.4
    drop   = (centroid y - middle of the vertical extent) / height: a triangle's mass sits low
             (1/6), a diamond's is centred (0)
    aspect = width / height: an equilateral triangle is 2/sqrt(3) wide
    spread = (mu_20 + mu_02) / area^2, the second moment about the centroid: 1/(2 pi) for a
             disc, the least of any shape; larger when mass lies far out (a ring, a cross)
    Width and height are soft: the sum over columns (rows) of the column's (row's) largest coverage.
    """
    column_profile, row_profile = coverage.max(axis=0), coverage.max(axis=1)
    width, height = column_profile.sum(), row_profile.sum()
    area = coverage.sum()
    ys, xs = np.indices(coverage.shape) + 0.5
    centroid_x, centroid_y = (coverage * xs).sum() / area, (coverage * ys).sum() / area
    extent_middle = (row_profile * ys[:, 0]).sum() / height
    second_moment = (coverage * ((xs - centroid_x) ** 2 + (ys - centroid_y) ** 2)).sum()
    return np.array([area / (width * height), (centroid_y - extent_middle) / height,
                     width / height, second_moment / area ** 2])


@lru_cache(maxsize=None)
def shape_prototype(shape: str, radius_halves: int) -> tuple[np.ndarray, float]:
    """(features, area / r^2) of `shape` drawn by data.py's renderer at radius radius_halves / 2.

    Small shapes blur (a 4-pixel star looks rounder than a 40-pixel one), so an object is compared
    with each shape drawn at the size it would have if it were that shape. Averaged over four
    sub-pixel positions.
    """
    radius = radius_halves / 2
    size = int(3 * radius) + 8
    background, white = np.array(BACKGROUND, np.float32), np.array(COLOURS["white"], np.float32)
    features, areas = [], []
    for offset in (0.0, 0.25, 0.5, 0.75):
        centre = (size / 2 + offset, size / 2 + offset / 2)
        pixels = render_clip([ShapeObject("white", shape, "static", 0.0, radius, centre)], 1, size)
        pixels = pixels.astype(np.float32)
        mask = np.abs(pixels - background).max(axis=-1) > FOREGROUND_THRESHOLD  # (1, H, W)
        coverage = _coverage(pixels, mask, background, white)[0]
        features.append(shape_features(coverage))
        areas.append(coverage.sum() / radius ** 2)
    return np.mean(features, axis=0), float(np.mean(areas))


# How far each feature may stray, used to scale distances; beyond 1 in this scale: "unknown".
SHAPE_FEATURE_SCALE = np.array([0.12, 0.06, 0.18, 0.03])


def classify_shape(features: np.ndarray, area: float) -> str:
    """The shape whose same-size drawing has the nearest features; unknown if none is near."""
    distances = {}
    for shape in SHAPES:
        unit_area = shape_prototype(shape, 80)[1]  # area / r^2 of a large drawing
        radius_halves = max(4, round(2 * math.sqrt(area / unit_area)))
        prototype = shape_prototype(shape, radius_halves)[0]
        distances[shape] = float(np.linalg.norm((features - prototype) / SHAPE_FEATURE_SCALE))
    best = min(distances, key=distances.get)
    return best if distances[best] < 1.0 else UNKNOWN


def _hue_saturation_value(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = rgb / 255.0
    high, low = max(r, g, b), min(r, g, b)
    chroma = high - low
    if chroma == 0:
        return 0.0, 0.0, high
    if high == r:
        hue = 60 * (((g - b) / chroma) % 6)
    elif high == g:
        hue = 60 * ((b - r) / chroma + 2)
    else:
        hue = 60 * ((r - g) / chroma + 4)
    return hue, chroma / high, high


def classify_colour(rgb: np.ndarray) -> str:
    """Nearest named colour by hue; white when unsaturated and bright; unknown when dark or grey."""
    hue, saturation, value = _hue_saturation_value(np.asarray(rgb, dtype=np.float64))
    if value < 0.35:
        return UNKNOWN
    if saturation < 0.3:
        return "white" if value > 0.6 and saturation < 0.2 else UNKNOWN
    best, best_gap = UNKNOWN, 20.0  # degrees: half the gap between neighbouring named hues
    for name, named_rgb in COLOURS.items():
        named_hue, named_saturation, _ = _hue_saturation_value(np.array(named_rgb, np.float64))
        gap = abs((hue - named_hue + 180) % 360 - 180)
        if named_saturation >= 0.3 and gap < best_gap:
            best, best_gap = name, gap
    return best


def read_motion(centres: np.ndarray) -> tuple[str, float | None]:
    """(direction, speed) from a (T, 2) centroid trajectory, by least squares c_t = c_0 + v t."""
    times = np.arange(len(centres), dtype=np.float64)
    offsets = times - times.mean()
    # v = sum_t (t - mean t)(c_t - mean c) / sum_t (t - mean t)^2, per axis
    velocity = (offsets[:, None] * (centres - centres.mean(axis=0))).sum(axis=0) / (offsets ** 2).sum()
    residual = centres - (centres.mean(axis=0) + offsets[:, None] * velocity)
    speed = float(np.hypot(*velocity))
    if np.sqrt((residual ** 2).sum(axis=1).mean()) > 1.0 + 0.25 * speed:
        return UNKNOWN, None  # the object jumps about: no straight-line motion to read
    if speed < STATIC_SPEED:
        return "static", speed
    angle = math.degrees(math.atan2(-velocity[1], velocity[0]))  # image y points down
    return COMPASS[round(angle / 45) % 8], speed


# ---------------------------------------------------------------------------------------------
# Agreement between detections and the truth.

ATTRIBUTES = ("colour", "shape", "direction", "speed")


def speed_matches(detected: float | None, true: float) -> bool:
    """Within 0.2 px/frame or 10%, whichever is larger."""
    return detected is not None and abs(detected - true) <= max(0.2, 0.1 * true)


def attribute_matches(detection: Detection, truth: dict) -> dict[str, bool]:
    """Per attribute, whether the detection agrees with a truth dict (data.ShapeObject.attributes)."""
    matches = {name: getattr(detection, name) == truth[name]
               for name in ("colour", "shape", "direction") if name in truth}
    if "speed" in truth:
        matches["speed"] = speed_matches(detection.speed, truth["speed"])
    matches["all"] = all(matches.values())
    return matches


def agreement(detections: list[Detection], truths: list[dict]) -> dict[str, float]:
    """Share of clips on which each attribute (and all of them together) agrees with the truth."""
    rows = [attribute_matches(d, t) for d, t in zip(detections, truths, strict=True)]
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


# ---------------------------------------------------------------------------------------------
# Reporting a share of sampled clips: its interval, and seeds nothing was tuned on.

# The benchmarks sample clip i with seed TUNING_SEEDS + i while settings are being chosen (every
# figure before 2026-12-02 used these), and with REPORTING_SEEDS + i for the figures a setting is
# reported with: a range that no setting was ever chosen on.
TUNING_SEEDS, REPORTING_SEEDS = 0, 1_000_000


def sampling_seed(index: int, reporting: bool) -> int:
    """The seed of clip `index` in the reporting or the tuning range; the two never overlap."""
    if not 0 <= index < REPORTING_SEEDS - TUNING_SEEDS:
        raise ValueError(f"clip index {index} is outside 0..{REPORTING_SEEDS - TUNING_SEEDS - 1}, where the "
                         f"tuning and reporting seed ranges stay apart")
    return (REPORTING_SEEDS if reporting else TUNING_SEEDS) + index


def wilson_interval(successes: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share p = successes / count (95% for z = 1.96):
    (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n). Unlike p -+ z sqrt(p (1-p) / n),
    it stays inside [0, 1] and is not zero wide at 0% or 100%."""
    if count <= 0:
        raise ValueError(f"an interval needs at least one clip, got {count}")
    p, n = successes / count, count
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def share_with_interval(successes: int, count: int) -> str:
    """'87.0% (79.0-92.2) of 100': the share, its 95% Wilson interval and the count."""
    low, high = wilson_interval(successes, count)
    return f"{100 * successes / count:.1f}% ({100 * low:.1f}-{100 * high:.1f}) of {count}"


# ---------------------------------------------------------------------------------------------
# Reconstruction quality.


def psnr(reconstructed: torch.Tensor, original: torch.Tensor) -> float:
    """Mean over the batch (first dimension) of PSNR = 10 log10(1 / MSE), pixels scaled to [0, 1].

    Inputs are images or videos in [-1, 1]; each item's MSE is over all its pixels and channels.
    """
    difference = (reconstructed.float() - original.float()) / 2  # [-1, 1] -> [0, 1] differences
    mse = difference.pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean().item()


def flicker(reconstructed: torch.Tensor, original: torch.Tensor) -> float:
    """Frame-to-frame dithering of a reconstruction x^ of clips x, both (B, 3, T, H, W) in [-1, 1]:

        flicker = mean over clips, frames, pixels of |(x^_{t+1} - x^_t) - (x_{t+1} - x_t)|

    with pixels scaled to [0, 1]. It is 0 when the reconstruction changes from frame to frame
    exactly as the clip does, whatever its error in each frame; lower is better.
    """
    if reconstructed.shape != original.shape or reconstructed.ndim != 5 or reconstructed.shape[2] < 2:
        raise ValueError(f"flicker takes two batches of clips (B, 3, T, H, W) of the same shape with "
                         f"T >= 2, got {tuple(reconstructed.shape)} and {tuple(original.shape)}")
    change = reconstructed.float().diff(dim=2) - original.float().diff(dim=2)  # (B, 3, T-1, H, W)
    return (change.abs() / 2).mean().item()  # / 2: [-1, 1] -> [0, 1] differences


def jitter(video: torch.Tensor) -> float:
    """Roughness in time of clips (B, 3, T, H, W) in [-1, 1], for videos with no reference (such as
    generated ones): mean |x_{t+1} - 2 x_t + x_{t-1}|, pixels in [0, 1]. Zero for pixels that change
    at a constant rate; dithering adds to it. Real moving-shapes clips are the floor to compare with.
    """
    if video.ndim != 5 or video.shape[2] < 3:
        raise ValueError(f"jitter takes clips (B, 3, T, H, W) with T >= 3, got {tuple(video.shape)}")
    return (video.float().diff(n=2, dim=2).abs() / 2).mean().item()


# ---------------------------------------------------------------------------------------------
# Distributions of features.


def frechet_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two sets of feature vectors (N, D) and (M, D):

        FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r^(1/2) S_g S_r^(1/2))^(1/2))

    (FID's and FVD's formula; Tr (S_r S_g)^(1/2) is written with the symmetric S_r^(1/2) S_g S_r^(1/2),
    which has the same eigenvalues and a real square root). In float64; 0 for identical sets."""
    if (real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]
            or min(len(real), len(generated)) < 2):
        raise ValueError(f"expected two sets of feature vectors (N, D) and (M, D), N and M >= 2, got "
                         f"{tuple(real.shape)} and {tuple(generated.shape)}")
    real, generated = real.double(), generated.double()
    mean_r, mean_g = real.mean(0), generated.mean(0)
    cov_r, cov_g = torch.cov(real.T), torch.cov(generated.T)

    def sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:  # V diag(sqrt(lambda)) V^T, lambda clamped at 0
        values, vectors = torch.linalg.eigh(matrix)
        return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T

    root_r = sqrt_psd(cov_r)
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp_min(0).sqrt().sum()
    return ((mean_r - mean_g).pow(2).sum() + cov_r.trace() + cov_g.trace() - 2 * cross).item()
