import json

import pytest

import train
from tiny_magicvideo.config import Config
from tiny_magicvideo.data import load_video


def test_main_job_writes_config_and_data_gif(tmp_path):
    gif = train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "first"])
    run_dir = tmp_path / "first"
    config = Config.from_json((run_dir / "config.json").read_text())
    assert config.preset == "smoke" and config.name == "first"
    assert not list(run_dir.glob("*.tmp"))  # the atomic write left no temporary file
    frames = load_video(gif)
    assert frames.shape[0] == config.data.num_frames
    assert json.loads((run_dir / "config.json").read_text())["data"]["image_size"] == 32


def test_main_job_refuses_a_bad_data_config(tmp_path):
    with pytest.raises(SystemExit, match="too small for the shapes"):
        train.main(["--preset", "smoke", "--runs_dir", str(tmp_path), "--data.image_size", "8"])
