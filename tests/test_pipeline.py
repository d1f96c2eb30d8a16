import numpy as np
import pytest

import train
from tiny_magicvideo.pipeline import TextToVideo


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train.main(["--preset", "smoke", "--runs_dir", str(runs), "--name", "pipeline"])


def test_from_run_generates_images_of_the_run_size(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    output = pipeline(["a red circle moving left", "a blue square moving up"], num_inference_steps=3)
    assert output.frames.shape == (2, 1, 32, 32, 3) and output.frames.dtype == np.uint8
    assert output.latents.shape == (2, 4, 1, 8, 8)


def test_a_fixed_seed_gives_the_same_images(smoke_run):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    first = pipeline("a red circle moving left", num_inference_steps=3, seed=7).frames
    assert np.array_equal(first, pipeline("a red circle moving left", num_inference_steps=3, seed=7).frames)
    assert not np.array_equal(first, pipeline("a red circle moving left", num_inference_steps=3, seed=8).frames)


def test_bad_requests_are_clear_errors(smoke_run, tmp_path):
    pipeline = TextToVideo.from_run(smoke_run, device="cpu")
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and 1000, got 0"):
        pipeline("a red circle", num_inference_steps=0)
    with pytest.raises(ValueError, match="num_frames=8.*single images"):
        pipeline("a red circle", num_frames=8)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        TextToVideo.from_run(tmp_path)
