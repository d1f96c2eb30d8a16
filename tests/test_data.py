import numpy as np
import pytest
import torch

from tiny_magicvideo.config import DataConfig
from tiny_magicvideo.data import (VideoDataset, frames_to_video, make_loader, sample_clip, split_combinations,
                                  video_to_frames)
from tiny_magicvideo.media import save_video, tile_clips
from tiny_magicvideo.shapes import (COLOURS, DIRECTION_WORDS, MOTIONS, SHAPE_WORDS, SHAPES, SPEED_WORDS, STATIC_PHRASES,
                                    caption_vocabulary, parse_combination, plain_caption)
from helpers import load_video

EVERYTHING = DataConfig(shapes=SHAPES, colours=tuple(COLOURS), motions=tuple(MOTIONS),
                        two_objects_prob=0.3, held_out=("green triangle up",))


def test_a_clip_is_a_pure_function_of_seed_split_and_index():
    frames, caption, attributes = sample_clip(EVERYTHING, "train", 17)
    again = sample_clip(EVERYTHING, "train", 17)
    assert np.array_equal(frames, again[0]) and caption == again[1] and attributes == again[2]
    assert not np.array_equal(frames, sample_clip(EVERYTHING, "train", 18)[0])
    assert not np.array_equal(frames, sample_clip(EVERYTHING, "val", 17)[0])
    reseeded = DataConfig(**{**EVERYTHING.__dict__, "seed": 1})
    assert not np.array_equal(frames, sample_clip(reseeded, "train", 17)[0])


def test_loader_with_worker_processes_gives_the_dataset_in_order():
    config = DataConfig(image_size=32, num_frames=4, speed_range=(1, 2), size_range=(0.12, 0.16))
    loader = make_loader(config, batch_size=8, num_workers=2, num_clips=16)
    batches = list(loader)
    assert [tuple(b["video"].shape) for b in batches] == [(8, 3, 4, 32, 32)] * 2
    dataset = VideoDataset(config, num_clips=16)
    assert torch.equal(batches[1]["video"][3], dataset[11]["video"])
    assert batches[1]["caption"][3] == dataset[11]["caption"]


def test_frames_and_video_convert_both_ways_without_loss():
    frames, _, _ = sample_clip(DataConfig(), "train", 0)
    video = frames_to_video(frames)
    assert video.shape == (3, 16, 64, 64) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert np.array_equal(video_to_frames(video), frames)
    batch = frames_to_video(np.stack([frames, frames]))  # leading batch dimension
    assert batch.shape == (2, 3, 16, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        frames_to_video(frames.astype(np.float32))


def test_edges_are_anti_aliased():
    frames, _, attributes = sample_clip(DataConfig(shapes=("circle",)), "train", 3)
    colour = np.array(COLOURS[attributes["objects"][0]["colour"]])
    distance = np.abs(frames[0].astype(float) - colour).max(axis=-1)
    from tiny_magicvideo.shapes import BACKGROUND
    from_background = np.abs(frames[0].astype(float) - np.array(BACKGROUND)).max(axis=-1)
    partial = (distance > 10) & (from_background > 10)  # neither object nor background
    assert partial.sum() >= 8  # a ring of blended pixels around the disc


def _read_caption(caption: str) -> dict:
    """Parse a one-object caption back into attributes, using the grammar's word lists."""
    found = {"colour": [c for c in COLOURS if f" {c} " in f" {caption} "]}
    found["shape"] = [s for s, words in SHAPE_WORDS.items() if any(f" {w}" in f" {caption}" for w in words)]
    if any(phrase in caption for phrase in STATIC_PHRASES):
        found["direction"] = ["static"]
    else:  # the longest matching phrase wins: "to the top left" over "left"
        hits = [(len(p), d) for d, phrases in DIRECTION_WORDS.items() for p in phrases
                if caption.endswith(" " + p)]
        found["direction"] = [max(hits)[1]] if hits else []
    found["speed"] = [s for s, words in SPEED_WORDS.items() if any(f" {w} " in f" {caption} " for w in words)]
    return found


def test_captions_say_what_the_clip_shows():
    config = DataConfig(shapes=SHAPES, colours=tuple(COLOURS), motions=tuple(MOTIONS))
    low, high = config.speed_range
    seen = set()
    for index in range(400):
        _, caption, attributes = sample_clip(config, "train", index)
        truth = attributes["objects"][0]
        read = _read_caption(caption)
        assert read["colour"] == [truth["colour"]], caption
        assert read["shape"] == [truth["shape"]], caption
        assert read["direction"] == [truth["direction"]], caption
        if read["speed"]:
            assert read["speed"] == ["slow" if truth["speed"] < (low + high) / 2 else "fast"], caption
        assert set(caption.split()) <= set(caption_vocabulary())
        seen.add(caption)
    assert "a red circle moving left" in {c for c in seen} or len(seen) > 300  # many phrasings


def test_plain_captions_read_back_as_their_attributes():
    assert plain_caption("red", "circle", "left") == "a red circle moving left"
    for motion in MOTIONS:
        caption = plain_caption("blue", "star", motion)
        read = _read_caption(caption)
        assert (read["colour"], read["shape"], read["direction"]) == (["blue"], ["star"], [motion]), caption
        assert set(caption.split()) <= set(caption_vocabulary())


def test_two_object_captions_name_both_objects():
    config = DataConfig(two_objects_prob=1.0)
    _, caption, attributes = sample_clip(config, "train", 0)
    assert attributes["num_objects"] == 2 and " and " in caption
    for obj, phrase in zip(attributes["objects"], caption.split(" and ")):
        assert obj["colour"] in phrase.split()


def test_held_out_combinations_never_appear_in_training():
    config = DataConfig()
    held_out = {parse_combination(c) for c in config.held_out}
    for index in range(500):
        _, _, attributes = sample_clip(config, "train", index)
        obj = attributes["objects"][0]
        assert (obj["colour"], obj["shape"], obj["direction"]) not in held_out
    for index in range(50):
        _, _, attributes = sample_clip(config, "heldout", index)
        obj = attributes["objects"][0]
        assert (obj["colour"], obj["shape"], obj["direction"]) in held_out
    assert set(split_combinations(config, "heldout")) == held_out


def test_objects_stay_whole_inside_the_frame():
    config = DataConfig(shapes=SHAPES, motions=tuple(MOTIONS), two_objects_prob=0.5)
    from tiny_magicvideo.shapes import BACKGROUND
    for index in range(100):
        frames, _, _ = sample_clip(config, "train", index)
        border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
        assert (border == np.array(BACKGROUND, np.uint8)).all()


@pytest.mark.parametrize("changes, message", [
    ({"num_frames": 0}, "num_frames must be at least 1"),
    ({"image_size": 16}, "too small for the shapes"),
    ({"colours": ("red", "purpel")}, "unknown colour 'purpel'"),
    ({"shapes": ("hexagon",)}, "unknown shape 'hexagon'"),
    ({"motions": ()}, "data.motions is empty"),
    ({"speed_range": (1.0, 9.0)}, "does not fit"),
    ({"held_out": ("green pentagon up",)}, "held-out combination 'green pentagon up'"),
    ({"two_objects_prob": 1.5}, "probabilities"),
    ({"frame_strides": (1, 3), "num_frames": 16}, "does not fit.*stride 3"),
    ({"frame_strides": (0, 1)}, "frame_strides must be whole numbers >= 1"),
    ({"fps": 0.0}, "data.fps must be positive"),
])
def test_bad_data_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        VideoDataset(DataConfig(**changes))


def test_sample_clip_checks_a_hand_built_config():
    # lesson 5's 16 px frames with 6 frames at 1.7 px/frame do not fit: the data error, not numpy's
    config = DataConfig(image_size=16, num_frames=6, speed_range=(1.5, 1.7), size_range=(0.19, 0.2), held_out=())
    with pytest.raises(ValueError, match="a clip does not fit"):
        sample_clip(config, "train", 0)


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        VideoDataset(DataConfig(), split="test")


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_save_and_load_video(tmp_path, suffix):
    clips = np.stack([sample_clip(DataConfig(), "train", i)[0] for i in range(4)])
    grid = tile_clips(clips, columns=2)
    assert grid.shape == (16, 130, 130, 3)
    path = save_video(grid, tmp_path / f"grid{suffix}")
    loaded = load_video(path)
    assert loaded.shape[0] == 16 and loaded.shape[1:3] == (130, 130)
    # GIF is lossless for our few colours; MP4 is lossy but close
    assert np.abs(loaded.astype(int) - grid).mean() < (1 if suffix == ".gif" else 6)


def test_save_video_refuses_a_format_it_does_not_write(tmp_path):
    with pytest.raises(ValueError, match=".gif or .mp4"):
        save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "clip.avi")


def test_step_batches_depend_on_the_step_alone():
    from tiny_magicvideo.data import StepBatchSampler
    full = list(StepBatchSampler(num_clips=10, batch_size=4, num_steps=5))
    assert full[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]  # wraps around
    assert list(StepBatchSampler(10, 4, start_step=3, num_steps=5)) == full[3:]
    assert list(StepBatchSampler(10, 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # one pass


def test_frame_strides_scale_the_motion_and_set_the_frame_rate():
    config = DataConfig(num_frames=8, speed_range=(1.0, 1.5), frame_strides=(1, 2), fps=8.0)
    seen = set()
    for index in range(40):
        _, caption, attributes = sample_clip(config, "train", index)
        stride, speed = attributes["stride"], attributes["objects"][0]["speed"]
        seen.add(stride)
        assert attributes["fps"] == 8.0 / stride
        assert 1.0 * stride <= speed <= 1.5 * stride  # px per frame of the clip
        # speed words describe the source motion, whatever the frame rate
        if " slowly " in f" {caption} ":
            assert speed / stride < 1.25
    assert seen == {1, 2}
    batch = next(iter(make_loader(config, batch_size=4, num_workers=0, num_steps=1)))
    assert batch["fps"].tolist() == [item["fps"] for item in batch["attributes"]]
