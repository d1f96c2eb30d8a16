"""benchmarks/: the scripts whose output the README quotes."""

import importlib.util
from pathlib import Path

import pytest

from tiny_magicvideo.pipeline import load_video

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


def test_lesson_times_sums_the_recorded_cell_times():
    lesson_times = load_script("lesson_times")
    executed = {"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": "2026-12-02T01:00:00.000000Z", "shell.execute_reply": "2026-12-02T01:01:30.500000Z"}}}
    assert lesson_times.cell_seconds(executed) == pytest.approx(90.5)
    assert lesson_times.cell_seconds({"cell_type": "code", "metadata": {}}) is None
