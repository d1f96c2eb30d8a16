import numpy as np
import pytest
import torch

from tiny_magicvideo.config import DataConfig
from tiny_magicvideo.data import sample_clip
from tiny_magicvideo.metrics import (UNKNOWN, agreement, attribute_matches, detect, flicker, frechet_distance, jitter,
                                     read_motion)
from tiny_magicvideo.shapes import BACKGROUND, COLOURS, MOTIONS, SHAPES


def _agreement_on(config: DataConfig, num_clips: int) -> dict:
    clips = [sample_clip(config, "train", i) for i in range(num_clips)]
    detections = [detect(frames) for frames, _, _ in clips]
    return agreement(detections, [attributes["objects"][0] for _, _, attributes in clips])


@pytest.mark.slow
def test_detector_reads_at_least_99_percent_of_1000_clips():
    scores = _agreement_on(DataConfig(image_size=64, num_frames=16), 1000)
    for attribute in ("colour", "shape", "direction", "speed"):
        assert scores[attribute] >= 0.99, scores


def test_detector_reads_every_shape_colour_and_motion_at_every_size():
    config = DataConfig(shapes=SHAPES, colours=tuple(COLOURS), motions=tuple(MOTIONS),
                        num_frames=8, size_range=(0.05, 0.14), speed_range=(1.0, 3.0))
    scores = _agreement_on(config, 300)
    assert all(score >= 0.99 for score in scores.values()), scores


def test_detector_reads_colour_and_shape_from_a_single_image():
    frames, _, attributes = sample_clip(DataConfig(), "train", 4)
    detection = detect(frames[0])
    truth = attributes["objects"][0]
    assert (detection.colour, detection.shape) == (truth["colour"], truth["shape"])
    assert detection.direction == UNKNOWN and detection.reason == ""


def _draw(coverage_of, colour=(230, 30, 30), num_frames=8):
    """Frames of a hand-made object: coverage_of(x, y) relative to a centre moving right."""
    ys, xs = np.indices((64, 64)) + 0.5
    frames = []
    for t in range(num_frames):
        coverage = np.clip(coverage_of(xs - 20 - 2 * t, ys - 32), 0, 1)[..., None]
        frames.append(coverage * np.array(colour) + (1 - coverage) * np.array(BACKGROUND))
    return np.round(np.stack(frames)).astype(np.uint8)


def _disc(x, y):
    return 0.5 - (np.hypot(x, y) - 6)


def test_hand_made_disc_is_read_exactly():
    detection = detect(_draw(_disc))
    assert (detection.colour, detection.shape, detection.direction) == ("red", "circle", "right")
    assert detection.speed == pytest.approx(2.0, abs=0.01)
    assert np.allclose(detection.centres[:, 1], 32, atol=0.01)


def test_empty_clip_is_unknown_with_a_reason():
    empty = np.broadcast_to(np.array(BACKGROUND, np.uint8), (8, 64, 64, 3)).copy()
    detection = detect(empty)
    assert detection.reason == "no object" and detection.num_objects == 0
    assert (detection.colour, detection.shape, detection.direction) == (UNKNOWN,) * 3


def test_two_objects_are_unknown_not_a_guess():
    for index in range(20):
        frames, _, attributes = sample_clip(DataConfig(two_objects_prob=1.0), "train", index)
        detection = detect(frames)
        assert detection.num_objects == 2 and "several objects" in detection.reason
        assert (detection.colour, detection.shape, detection.direction) == (UNKNOWN,) * 3


def test_noise_and_vanishing_objects_are_unknown():
    noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    assert "no distinct object" in detect(noise).reason
    frames = _draw(_disc)
    frames[3] = BACKGROUND
    detection = detect(frames)
    assert "missing in 1 of 8 frames" in detection.reason and detection.shape == UNKNOWN


@pytest.mark.parametrize("name, coverage_of", [
    ("ellipse", lambda x, y: 0.5 - (np.hypot(x / 2, y) - 5) * 1.5),
    ("ring", lambda x, y: 2.0 - np.abs(np.hypot(x, y) - 7)),
    ("bar", lambda x, y: ((abs(x) < 10) & (abs(y) < 1.5)).astype(float)),
    ("cross", lambda x, y: (((abs(x) < 8) & (abs(y) < 2)) | ((abs(x) < 2) & (abs(y) < 8))).astype(float)),
])
def test_shapes_outside_the_vocabulary_are_unknown(name, coverage_of):
    detection = detect(_draw(coverage_of))
    assert detection.shape == UNKNOWN and "shape" in detection.reason
    assert detection.colour == "red"  # what can be read still is


def test_grey_and_dark_objects_have_unknown_colour():
    assert detect(_draw(_disc, colour=(128, 128, 128))).colour == UNKNOWN
    assert detect(_draw(_disc, colour=(70, 10, 10))).colour == UNKNOWN


def test_motion_from_trajectories():
    t = np.arange(10.0)[:, None]
    assert read_motion(np.hstack([30 - 1.5 * t, 20 + 0 * t]))[0] == "left"
    direction, speed = read_motion(np.hstack([10 + t, 50 - t]))
    assert direction == "up-right" and speed == pytest.approx(np.sqrt(2))
    assert read_motion(np.hstack([30 + 0.05 * t, 30 + 0 * t]))[0] == "static"
    jumping = np.random.default_rng(0).uniform(10, 50, (10, 2))
    assert read_motion(jumping) == (UNKNOWN, None)


def test_attribute_matches_counts_speed_within_tolerance():
    frames, _, attributes = sample_clip(DataConfig(), "train", 2)
    truth = attributes["objects"][0]
    detection = detect(frames)
    assert attribute_matches(detection, truth)["all"]
    detection.speed = truth["speed"] + 0.5
    assert attribute_matches(detection, truth) == {
        "colour": True, "shape": True, "direction": True, "speed": False, "all": False}


def test_flicker_on_hand_made_clips():
    original = torch.zeros(1, 3, 3, 2, 2)
    original[:, :, 1] = 0.5  # the clip itself changes: that is not flicker
    assert flicker(original.clone(), original) == 0.0
    assert flicker(original + 0.3, original) == pytest.approx(0.0)  # a constant error does not flicker
    dithered = original.clone()
    dithered[:, :, 1, 0, 0] += 0.4  # one pixel of the middle frame off by 0.4 in [-1, 1], 0.2 in [0, 1]
    # differences: frame 0 -> 1 off by +0.2, frame 1 -> 2 off by -0.2, at 1 pixel of 4, in 3 channels
    assert flicker(dithered, original) == pytest.approx(2 * 0.2 / (2 * 4))
    with pytest.raises(ValueError, match="T >= 2"):
        flicker(original[:, :, :1], original[:, :, :1])


def test_jitter_is_zero_for_steady_change_and_counts_a_dithered_frame():
    ramp = torch.linspace(-1, 1, 5)[None, None, :, None, None].expand(1, 3, 5, 2, 2)  # steady fade
    assert jitter(ramp) == pytest.approx(0.0, abs=1e-7)
    dithered = ramp.clone()
    dithered[:, :, 2] += 0.4  # the middle frame off by 0.2 in [0, 1]: second differences 0.2, -0.4, 0.2
    assert jitter(dithered) == pytest.approx((0.2 + 0.4 + 0.2) / 3)
    with pytest.raises(ValueError, match="T >= 3"):
        jitter(ramp[:, :, :2])


def test_wilson_interval_matches_its_closed_forms_and_a_reference():
    from tiny_magicvideo.metrics import share_with_interval, wilson_interval

    # statsmodels' proportion_confint(8, 10, method="wilson"): (0.4902, 0.9433)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    # none of n: the upper end is z^2 / (n + z^2); all of n: the lower end is n / (n + z^2)
    assert wilson_interval(0, 40) == pytest.approx((0.0, 1.96 ** 2 / (40 + 1.96 ** 2)))
    assert wilson_interval(40, 40)[0] == pytest.approx(40 / (40 + 1.96 ** 2))
    assert share_with_interval(87, 100) == "87.0% (79.0-92.2) of 100"
    with pytest.raises(ValueError, match="at least one clip"):
        wilson_interval(0, 0)


def test_reporting_seeds_never_overlap_tuning_seeds():
    from tiny_magicvideo.metrics import REPORTING_SEEDS, sampling_seed

    tuning = {sampling_seed(i, reporting=False) for i in range(0, REPORTING_SEEDS, 997)}
    reporting = {sampling_seed(i, reporting=True) for i in range(0, REPORTING_SEEDS, 997)}
    assert max(tuning) < min(reporting) and not tuning & reporting
    assert sampling_seed(REPORTING_SEEDS - 1, reporting=False) < sampling_seed(0, reporting=True)
    with pytest.raises(ValueError, match="outside"):
        sampling_seed(REPORTING_SEEDS, reporting=False)  # would be the first reporting seed


def test_frechet_distance_matches_its_closed_form_for_a_scaled_and_shifted_set():
    # generated = a * real + b: mean a mu + b, covariance a^2 S, so
    # FD = |(1 - a) mu - b|^2 + Tr(S) (1 + a^2 - 2a) = |(1 - a) mu - b|^2 + (1 - a)^2 Tr(S)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 6, generator=generator) @ torch.randn(6, 6, generator=generator) + 1.0
    a, b = 0.5, torch.arange(6.0)
    expected = ((1 - a) * real.double().mean(0) - b).pow(2).sum() + (1 - a) ** 2 * torch.cov(real.double().T).trace()
    assert frechet_distance(real, a * real + b) == pytest.approx(expected.item(), rel=1e-6)
    assert abs(frechet_distance(real, real)) < 1e-6
    with pytest.raises(ValueError, match="feature vectors"):
        frechet_distance(real, real[:, :5])
