"""sample.py: the command students run after training."""

import subprocess
import sys

import pytest

import helpers
from helpers import load_video


def test_sample_writes_the_clip_and_a_strip_of_its_frames(smoke_run, tmp_path):
    out = helpers.sample(["--run", str(smoke_run), "--prompt", "a blue square moving up",
                       "--out", str(tmp_path / "out.gif"), "--num_inference_steps", "3"])
    assert load_video(out).shape == (4, 32, 32, 3)
    assert load_video(out.with_suffix(".png")).shape == (1, 32, 4 * 32 + 3 * 2, 3)
    mp4 = helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--num_frames", "2",
                       "--fps", "4", "--out", str(tmp_path / "out.mp4"), "--num_inference_steps", "2"])
    assert load_video(mp4).shape[0] == 2
    # the run has a VideoVAE, which decodes by default; --decoder image decodes frame by frame
    by_clip, by_frame = (helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--out",
                                      str(tmp_path / f"{decoder}.gif"), "--num_inference_steps", "2",
                                      "--decoder", decoder]) for decoder in ("video", "image"))
    assert not (load_video(by_clip) == load_video(by_frame)).all()
    # the run's interp model fills a frame between each pair of 4 keyframes: 7 frames at twice their rate
    filled = helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--out", str(tmp_path / "filled.gif"),
                          "--num_inference_steps", "2", "--interpolate", "2"])
    assert load_video(filled).shape == (7, 32, 32, 3)


@pytest.mark.parametrize("options, message", [
    (["--num_inference_steps", "0"], "num_inference_steps must be between 1 and 1000, got 0"),
    (["--num_frames", "9"], "num_frames=9: this model makes clips of 1 to 4 frames"),
    (["--fps", "-1"], "fps=-1.0: the frame rate must be positive"),
    (["--fps", "inf"], "fps=inf: the frame rate must be positive and at most 1000"),
    (["--fps", "1e308"], r"fps=1e\+308: the frame rate must be positive and at most 1000"),
    (["--guidance_scale", "nan"], "guidance_scale=nan: use a finite number >= 0"),
    (["--eta", "nan"], "eta=nan: use a number from 0"),
    (["--interpolate", "3"], "interpolate=3: this run's interp model fills the frames between keyframes 2 frames"),
    (["--prompt", "\U0001F534 \u27A1\uFE0F \U0001F7E6"], "prompt '.*' has no words the text encoder reads .*would "
                                                    "sample as the empty prompt; describe the clip in words"),
])
def test_bad_requests_exit_with_a_clear_error(smoke_run, tmp_path, options, message):
    with pytest.raises(SystemExit, match=message):
        helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--out", str(tmp_path / "x.gif"),
                     *options])


def test_missing_run_and_bad_file_names_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="holds no config.json"):
        helpers.sample(["--run", str(tmp_path), "--prompt", "a red circle"])
    with pytest.raises(SystemExit):
        helpers.sample(["--run", str(tmp_path), "--prompt", "a red circle", "--out", "clip.avi"])
    assert "use a file name ending in .gif or .mp4" in capsys.readouterr().err


def test_an_unwritable_out_is_refused_before_sampling(smoke_run, tmp_path, monkeypatch):
    from tiny_magicvideo.pipeline import TextToVideo

    def sample_anyway(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(TextToVideo, "__call__", sample_anyway)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match="cannot write --out .*a_file/clip.gif .*choose a folder you can write to"):
        helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--out",
                        str(tmp_path / "a_file" / "clip.gif")])
    (tmp_path / "folder.gif").mkdir()
    with pytest.raises(SystemExit, match="folder.gif is a folder"):
        helpers.sample(["--run", str(smoke_run), "--prompt", "a red circle", "--out", str(tmp_path / "folder.gif")])


def test_an_unknown_word_is_one_plain_line_and_the_clip_is_still_made(smoke_run, tmp_path):
    out = tmp_path / "x.gif"
    result = subprocess.run([sys.executable, str(helpers.ROOT / "sample.py"), "--run", str(smoke_run), "--prompt",
                             "xyzzy plugh", "--out", str(out), "--num_inference_steps", "2", "--device", "cpu"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and out.is_file()
    warnings = [line for line in result.stderr.splitlines() if "unknown word" in line]
    assert warnings == ["warning: unknown word 'xyzzy' in a prompt is read as <unknown>; the vocabulary is the "
                        "caption grammar's 49 words (tiny_magicvideo.shapes.caption_vocabulary())",
                        "warning: unknown word 'plugh' in a prompt is read as <unknown>; the vocabulary is the "
                        "caption grammar's 49 words (tiny_magicvideo.shapes.caption_vocabulary())"]
    assert "UserWarning" not in result.stderr and "text.py" not in result.stderr
