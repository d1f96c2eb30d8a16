"""Real video files as training data (videos.py): a UCF-101 tree and a captioned folder, written here."""

import dataclasses
import json
import warnings

import imageio_ffmpeg
import numpy as np
import pytest

from tiny_magicvideo import videos
from tiny_magicvideo.config import DataConfig
from tiny_magicvideo.data import ShapeObject, VideoDataset, render_clip
from tiny_magicvideo.metrics import detect
from helpers import load_video

CLASSES = {"ApplyEyeMakeup": ("red", "circle", "left"), "YoYo": ("blue", "square", "down")}


def write_video(path, frames: np.ndarray, fps: float = 25.0) -> None:
    """uint8 (T, H, W, 3) frames as an .avi (MPEG-4 part 2) or .mp4 (H.264), as cameras and UCF write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if path.suffix == ".mp4" else "mpeg4"
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps, codec=codec,
                                         macro_block_size=1, output_params=["-q:v", "2"] if codec == "mpeg4" else [])
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def shape_video(colour: str, shape: str, direction: str, num_frames: int = 20) -> np.ndarray:
    """A 48x64 landscape video of one shape moving: the decoder must crop its centre square."""
    start = {"left": (40.0, 24.0), "down": (24.0, 12.0)}[direction]
    frames = render_clip([ShapeObject(colour, shape, direction, 1.0, 8.0, start)], num_frames, 48)
    return np.pad(frames, ((0, 0), (0, 0), (8, 8), (0, 0)), constant_values=18)  # (T, 48, 64, 3)


def ucf_tree(root, split_files: bool = False, broken: bool = True):
    """<root>/<Class>/v_<Class>_gXX_c01.avi for groups 1..9 (group 9 as .mp4), a corrupt file and a
    too-short video; with split_files, ucfTrainTestlist/ naming groups 1-7 for training, 8 and 9 for testing."""
    for name, (colour, shape, direction) in CLASSES.items():
        for group in range(1, 10):
            suffix = ".mp4" if group == 9 else ".avi"
            write_video(root / name / f"v_{name}_g{group:02d}_c01{suffix}", shape_video(colour, shape, direction))
    if broken:
        (root / "YoYo" / "v_YoYo_g10_c01.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)  # corrupt
        write_video(root / "YoYo" / "v_YoYo_g11_c01.avi", shape_video("blue", "square", "down", num_frames=3))
    if split_files:  # the official files' format: "Class/file label" for training, "Class/file" for testing
        (root / "ucfTrainTestlist").mkdir()
        files = {group: [f"{name}/v_{name}_g{group:02d}_c01.{'mp4' if group == 9 else 'avi'}" for name in CLASSES]
                 for group in range(1, 10)}
        trains = [f"{file} {label}" for group in range(1, 8) for label, file in enumerate(files[group], 1)]
        (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("\n".join(trains) + "\n")
        (root / "ucfTrainTestlist" / "testlist01.txt").write_text("\n".join(files[8] + files[9]) + "\n")
    return root


def ucf_config(tmp_path, root, **changes) -> DataConfig:
    return DataConfig(source="ucf101", root=str(root), cache_dir=str(tmp_path / "cache"), image_size=16,
                      num_frames=4, frame_strides=(1, 2), fps=25.0, **changes)


def test_ucf_class_names_become_words():
    assert videos.class_words("ApplyEyeMakeup") == "apply eye makeup"
    assert videos.class_words("YoYo") == "yo yo"
    assert videos.class_words("PlayingDaf") == "playing daf"


def test_ucf_splits_by_group_without_split_files_and_by_testlist01_with_them(tmp_path):
    root = ucf_tree(tmp_path / "ucf", broken=False)
    found = videos.find_videos(ucf_config(tmp_path, root))
    groups = {split: {int(videos.UCF_GROUP.search(v.file).group(1)) for v in found if v.split == split}
              for split in ("train", "val")}
    assert groups == {"val": set(range(1, 8)), "train": {8, 9}}  # the official split 1's test groups
    assert {v.caption for v in found} == {"apply eye makeup", "yo yo"}

    root = ucf_tree(tmp_path / "ucf-official", split_files=True, broken=False)
    found = videos.find_videos(ucf_config(tmp_path, root))
    groups = {split: {int(videos.UCF_GROUP.search(v.file).group(1)) for v in found if v.split == split}
              for split in ("train", "val")}
    assert groups == {"val": {8, 9}, "train": set(range(1, 8))}

    picked = videos.find_videos(ucf_config(tmp_path, root, classes=("YoYo",)))
    assert {v.label for v in picked} == {"YoYo"}
    with pytest.raises(ValueError, match="data.classes: Yoyo not found.*ApplyEyeMakeup, YoYo"):
        videos.find_videos(ucf_config(tmp_path, root, classes=("Yoyo",)))


def test_the_subset_layout_takes_its_own_train_and_test_folders(tmp_path):
    root = tmp_path / "subset"
    for split, group in (("train", 8), ("test", 1)):
        write_video(root / split / "YoYo" / f"v_YoYo_g{group:02d}_c01.avi", shape_video("blue", "square", "down"))
    found = videos.find_videos(ucf_config(tmp_path, root))
    assert sorted((v.split, v.file) for v in found) == [("train", "train/YoYo/v_YoYo_g08_c01.avi"),
                                                        ("val", "test/YoYo/v_YoYo_g01_c01.avi")]


def test_decoding_crops_the_centre_square_and_keeps_the_frame_rate_and_the_content(tmp_path):
    path = tmp_path / "red.avi"
    write_video(path, shape_video("red", "circle", "left"), fps=25.0)
    frames, fps = videos.read_video_file(path, image_size=32)
    assert frames.shape == (20, 32, 32, 3) and frames.dtype == np.uint8 and fps == 25.0
    reading = detect(frames)  # the detector reads the shape back through the codec and the resize
    assert (reading.colour, reading.direction) == ("red", "left")


def test_the_cache_is_built_once_reused_and_rebuilt_when_a_setting_changes(tmp_path, monkeypatch):
    root = ucf_tree(tmp_path / "ucf")
    config = ucf_config(tmp_path, root)
    with pytest.warns(UserWarning) as caught:
        directory = videos.build_cache(config)
    messages = [str(w.message) for w in caught]
    assert any("v_YoYo_g10_c01.avi" in m and "unreadable" in m for m in messages)
    assert any("1 of 20 videos could not be read" in m for m in messages)
    index = json.loads((directory / "index.json").read_text())
    assert len(index["videos"]) == 19 and index["unreadable"] == ["YoYo/v_YoYo_g10_c01.avi"]
    assert (directory / "frames.u8").stat().st_size == index["num_frames"] * 16 * 16 * 3
    assert not list(directory.glob("*.tmp"))

    def no_decoding(*args):
        raise AssertionError("the cache should have been reused")
    monkeypatch.setattr(videos, "read_video_file", no_decoding)
    assert videos.build_cache(config) == directory
    with pytest.raises(AssertionError, match="reused"):  # another size is another cache
        videos.build_cache(dataclasses.replace(config, image_size=32))


def test_clips_are_cut_at_the_strides_with_the_source_frame_rate_and_short_videos_are_skipped(tmp_path):
    config = ucf_config(tmp_path, ucf_tree(tmp_path / "ucf"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = VideoDataset(config, "train", num_clips=40)
    assert any("1 of 19 videos are shorter than a clip (7 frames" in str(w.message) for w in caught)
    rates, seen = set(), set()
    for index in range(40):
        item = dataset[index]
        assert item["video"].shape == (3, 4, 16, 16)
        attributes = item["attributes"]
        assert item["fps"] == 25.0 / attributes["stride"]
        rates.add(item["fps"])
        label = videos.class_words(attributes["label"])
        assert item["caption"] in [template.format(label) for template in videos.CAPTION_TEMPLATES]
        seen.add(item["caption"])
    assert rates == {25.0, 12.5} and len(seen) > 2
    assert dataset.clip(7)[1] == VideoDataset(config, "train").clip(7)[1]  # a function of the index
    np.testing.assert_array_equal(dataset.clip(7)[0], VideoDataset(config, "train").clip(7)[0])
    with pytest.raises(ValueError, match="unknown split 'heldout'.*moving shapes"):
        VideoDataset(config, "heldout")


def test_an_empty_root_or_one_without_videos_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(ValueError, match="data.root .* is not a directory.*<ClassName>/v_<ClassName>_gXX"):
        videos.find_videos(ucf_config(tmp_path, tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no videos.*captions.csv"):
        videos.find_videos(dataclasses.replace(ucf_config(tmp_path, tmp_path / "empty"), source="folder"))


def test_a_folder_takes_captions_from_csv_jsonl_or_a_txt_beside_the_video(tmp_path):
    root = tmp_path / "mine"
    for name in ("a.mp4", "b.mp4", "c.avi", "sub/d.mp4", "e.mp4"):
        write_video(root / name, shape_video("red", "circle", "left"))
    (root / "captions.csv").write_text("file,caption\na.mp4,a red ball rolls\nb.mp4,\"a ball, rolling\"\n")
    (root / "captions.jsonl").write_text(json.dumps({"file": "sub/d.mp4", "caption": "one more ball"}) + "\n")
    (root / "c.txt").write_text("the third ball\n")
    with pytest.warns(UserWarning, match="1 videos under .* have no caption.*e.mp4"):
        found = videos.find_videos(DataConfig(source="folder", root=str(root)))
    assert {v.file: v.caption for v in found} == {"a.mp4": "a red ball rolls", "b.mp4": "a ball, rolling",
                                                  "c.avi": "the third ball", "sub/d.mp4": "one more ball"}
    assert sum(v.split == "val" for v in found) == 1


@pytest.mark.slow
@pytest.mark.parametrize("source", ["ucf101", "folder"])
def test_train_and_sample_end_to_end_on_video_files(tmp_path, source, capsys):
    import helpers
    from tiny_magicvideo.runs import load_run_config

    if source == "ucf101":
        root = ucf_tree(tmp_path / "ucf")
    else:
        root = tmp_path / "mine"
        rows = ["file,caption"]
        for index, (colour, shape, direction) in enumerate(CLASSES.values()):
            for copy in range(3):
                write_video(root / f"{colour}{copy}.mp4", shape_video(colour, shape, direction))
                rows.append(f"{colour}{copy}.mp4,a {colour} {shape} moving {direction}")
        (root / "captions.csv").write_text("\n".join(rows) + "\n")
    run_dir = helpers.train(["--preset", "smoke", "--runs_dir", str(tmp_path / "runs"), "--name", source,
                          "--data.source", source, "--data.root", str(root), "--data.cache_dir",
                          str(tmp_path / "cache"), "--data.fps", "25"])
    vocabulary = load_run_config(run_dir).text.vocabulary
    expected = {"apply", "eye", "makeup", "yo", "video", "of"} if source == "ucf101" else {"red", "square", "down"}
    assert expected <= set(vocabulary)
    assert "text.vocabulary:" in capsys.readouterr().out
    prompt = "apply eye makeup" if source == "ucf101" else "a red circle moving left"
    out = tmp_path / "clip.gif"
    helpers.sample(["--run", str(run_dir), "--prompt", prompt, "--out", str(out)])
    assert load_video(out).shape == (4, 32, 32, 3)
