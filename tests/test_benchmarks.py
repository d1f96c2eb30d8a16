"""benchmarks/: the scripts whose output the README quotes."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import load_video


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gallery_labels_every_clip_with_its_prompt_and_what_the_detector_reads(smoke_run, tmp_path, capsys):
    gallery = load_script("gallery")
    path = gallery.main(["--run", str(smoke_run), "--out", str(tmp_path / "gallery.gif")])
    assert load_video(path).shape[0] == 4  # the smoke preset's frames, one drawing each
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 13 and lines[-1].endswith(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    assert [line.split(":")[0] for line in lines[:9]] == [f"a {c} {s} moving {m}" for c, s, m in gallery.TRAINED]
    assert all(line.split(":")[0].endswith("(held out)") for line in lines[9:12])
    assert all("the detector reads" in line for line in lines[:12])


@pytest.mark.slow
def test_video_classifier_trains_saves_reloads_and_reports_shares_and_the_distance(smoke_run, capsys):
    classifier = load_script("video_classifier")
    args = ["--run", str(smoke_run), "--training_steps", "20", "--real_clips", "16", "--clips", "4", "--seeds", "tuning"]
    classifier.main(args)
    output = capsys.readouterr().out
    assert (smoke_run / classifier.CLASSIFIER_FILE).is_file() and "saved" in output
    for head in ("colour", "shape", "direction"):
        assert f"classifier on real validation clips, {head}: " in output and "of 256" in output
        assert f"| {head} | " in output
    assert "| all 3 | " in output and "FD-classifier (this project's own measure, not FVD)" in output
    assert "the classifier agrees with the detector" in output
    classifier.main(args)
    assert "loaded" in capsys.readouterr().out


def test_lesson_times_sums_the_recorded_cell_times():
    lesson_times = load_script("lesson_times")
    executed = {"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": "2026-12-02T01:00:00.000000Z", "shell.execute_reply": "2026-12-02T01:01:30.500000Z"}}}
    assert lesson_times.cell_seconds(executed) == pytest.approx(90.5)
    assert lesson_times.cell_seconds({"cell_type": "code", "metadata": {}}) is None


@pytest.mark.parametrize("sampling", [
    dict(sampling="frame_by_frame", image_model_below=500, unguided_below=500),
    dict(sampling="frame_by_frame", frame_cache=False, image_model_below=500, unguided_below=500),
    dict(sampling="joint", image_model_below=0, unguided_below=0)])
def test_flops_prices_a_clip_as_the_counter_counts_the_real_run(sampling):
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    from tiny_magicvideo.presets import get_preset
    from tiny_magicvideo.pipeline import TextToVideo
    from tiny_magicvideo.models import text_to_image_model, text_to_video_model
    from tiny_magicvideo.vae import AutoencoderKL

    flops = load_script("flops")
    config = get_preset("smoke")
    config.diffusion = dataclasses.replace(config.diffusion, past_frames="clean")
    priced = sum(flops.clip_flops(config, 3, **sampling).values())
    # the same clip sampled for real, every attention as its explicit formula, counted whole
    config.vae.scaling_factor = 1.0
    image_model = flops.explicit_attention(text_to_image_model(config).eval())
    video_model = flops.explicit_attention(text_to_video_model(text_to_image_model(config), config).eval())
    pipeline = TextToVideo(AutoencoderKL(config.vae).eval(), video_model["text_encoder"], video_model["unet"],
                           config, image_model)
    with FlopCounterMode(display=False) as counter:
        pipeline(flops.PROMPT, num_inference_steps=3, **sampling)
    assert priced == pytest.approx(counter.get_total_flops() / flops.GIGA, rel=1e-9)


@pytest.mark.slow
def test_training_speed_times_every_stage_and_adds_up_the_preset(capsys):
    load_script("training_speed").main(["--preset", "smoke", "--training_steps", "8", "--device", "cpu"])
    output = capsys.readouterr().out
    table = [line.split(" | ") for line in output.splitlines() if line.startswith("| ")][1:]
    assert [row[0] for row in table] == ["| vae", "| image", "| video", "| videovae", "| interp"]
    for row in table:  # steps/s, GFLOPs a step, GFLOP/s (their product), share of the peak, memory, smoke's 20 steps
        steps_per_second, gflops, rate = float(row[1]), float(row[2]), float(row[3])
        assert steps_per_second > 0 and gflops > 0 and rate == pytest.approx(steps_per_second * gflops, rel=0.02)
        assert row[4].endswith("%") and row[5] == "not measured" and row[6] == "20"
    peak = re.search(r"a large matmul (\d+) GFLOP/s, a large convolution (\d+) GFLOP/s", output)
    assert peak and int(peak[1]) > 0 and int(peak[2]) > 0
    assert re.search(r"the whole `smoke` preset: about 0\.0 hours \(\d+ minutes\) of training", output)


@pytest.mark.slow
def test_interpolation_reads_keyframe_and_filled_clips_alike(smoke_run, capsys):
    result = load_script("interpolation").main(["--run", str(smoke_run), "--clips", "4", "--num_inference_steps", "2",
                                                "--batch_size", "2"])
    output = capsys.readouterr().out
    assert "keyframes 4 frames at 4 fps, filled (S = 2) 7 frames at 8 fps" in output
    for key in ("colour", "shape", "direction", "all three"):
        assert all(result["hits"][kind][key][1] == 4 for kind in ("keyframes", "filled"))
        assert f"| {key} | " in output and "of 4" in output
    assert "| jitter | " in output and "| path's RMS distance from a line, px | " in output
    assert load_script("interpolation").path_error(np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])) < 1e-9
    assert load_script("interpolation").path_error(np.array([[0.0, 0.0], [np.nan, 1.0], [2.0, 3.0]])) is None
