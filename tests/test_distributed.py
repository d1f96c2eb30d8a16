"""train.py under torchrun: 2 CPU processes (gloo) on the smoke preset, against one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers
from tiny_magicvideo.data import StepBatchSampler
from tiny_magicvideo.distributed import BatchShare, rand, randint, randn
from tiny_magicvideo.runs import WEIGHTS_FILES, checkpoint_step, load_checkpoint
from tiny_magicvideo.training import read_log

REPOSITORY = Path(__file__).resolve().parents[1]
ONE_STEP_EACH = ["--preset", "smoke", "--train.vae_steps", "1", "--train.image_steps", "1", "--train.video_steps", "1",
                 "--train.videovae_steps", "1", "--train.interp_steps", "1"]


def torchrun(processes: int, *options: str, **popen) -> subprocess.Popen:
    """python -m torch.distributed.run --standalone --nproc_per_node N train.py OPTIONS, started."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(REPOSITORY / "train.py"), *options]
    return subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)


def finished(process: subprocess.Popen) -> str:
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output
    return output


def test_a_batch_share_draws_its_rows_of_the_global_batch_draw():
    shape = (6, 3, 2)
    for draw, share_draw in ((torch.randn, randn), (torch.rand, rand),
                             (lambda size, generator: torch.randint(5, 9, size, generator=generator),
                              lambda size, generator: randint(5, 9, size, generator))):
        whole = draw(shape, generator=torch.Generator().manual_seed(3))
        generators = [torch.Generator().manual_seed(3) for _ in range(3)]
        shares = [share_draw((2, 3, 2), BatchShare(generator, rank, 3)) for rank, generator in enumerate(generators)]
        assert torch.equal(torch.cat(shares), whole)
        assert all(torch.equal(g.get_state(), generators[0].get_state()) for g in generators)  # still in step
    with pytest.raises(ValueError, match="a batch of 6 cannot be shared by 4 processes"):
        StepBatchSampler(10, 6, num_steps=2, rank=0, world_size=4)
    shares = [list(StepBatchSampler(10, 6, num_steps=2, rank=rank, world_size=2)) for rank in (0, 1)]
    assert [a + b for a, b in zip(*shares)] == list(StepBatchSampler(10, 6, num_steps=2))


@pytest.mark.slow
def test_one_step_of_two_processes_gives_the_weights_of_one_process_with_the_whole_batch(tmp_path):
    two = torchrun(2, *ONE_STEP_EACH, "--runs_dir", str(tmp_path), "--name", "two")
    helpers.train([*ONE_STEP_EACH, "--runs_dir", str(tmp_path), "--name", "one"])
    finished(two)
    for stage, file in WEIGHTS_FILES.items():
        one, parallel = (load_checkpoint(tmp_path / name / file, ("model",))["model"] for name in ("one", "two"))
        elements = sum(weights.numel() for weights in one.values())
        apart = sum(int((~torch.isclose(parallel[name], weights, rtol=1e-4, atol=1e-5)).sum())
                    for name, weights in one.items())
        # AdamW's first step moves a weight by lr * g / (|g| + 1e-8): where the gradient is at rounding level, the
        # rounding decides. In the VAEs, the bias of a convolution whose output only reaches a GroupNorm of one
        # channel per group has no effect and a zero gradient in exact arithmetic: 0.1% of their elements (measured;
        # drawing the same noise in both processes instead moved 24% apart).
        assert apart <= (elements // 100 if stage in ("vae", "videovae") else 0), f"{file}: {apart} of {elements} apart"
    losses = {name: {(r["stage"], r["name"]): float(r["value"]) for r in read_log(tmp_path / name)}
              for name in ("one", "two")}
    assert losses["one"].keys() == losses["two"].keys() and len(losses["one"]) >= 4
    for key, value in losses["one"].items():  # the global batch's loss, logged once
        assert losses["two"][key] == pytest.approx(value, rel=1e-4), key


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="kills the run with SIGKILL")
def test_two_processes_killed_resume_and_finish_with_one_process_writing_the_files(tmp_path):
    options = ["--preset", "smoke", "--runs_dir", str(tmp_path), "--name", "run", "--train.image_steps", "40",
               "--train.video_steps", "4", "--train.videovae_steps", "4", "--train.interp_steps", "4"]
    run_dir = tmp_path / "run"
    killed = torchrun(2, *options)
    for _ in range(3000):  # until the image stage has written its first checkpoint
        if (run_dir / "state_image.pt").is_file() or killed.poll() is not None:
            break
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(killed.pid)], capture_output=True, text=True).stdout.split()
    for pid in [*map(int, workers), killed.pid]:  # both processes and torchrun, mid-stage
        os.kill(pid, signal.SIGKILL)
    killed.wait()
    holder = int((run_dir / "lock").read_text().split()[1])  # "process PID on HOST since ...": process 0
    for _ in range(100):  # until it is gone too, and with it its lock
        try:
            os.kill(holder, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    assert checkpoint_step(run_dir / "state_image.pt") in (10, 20, 30) and not (run_dir / "unet_image.pt").exists()

    output = finished(torchrun(2, *options))
    assert "stage image: resuming from step" in output
    assert output.count("stage image: resuming from step") == 1  # printed by process 0 alone
    for file in WEIGHTS_FILES.values():
        assert (run_dir / file).is_file()
    rows = [(row["stage"], row["step"], row["name"]) for row in read_log(run_dir)]
    assert len(rows) == len(set(rows))  # one writer: no row twice
    assert not list(run_dir.rglob("*.tmp*"))  # every file written whole and renamed
    assert run_dir.joinpath("lock").read_text() == ""  # process 0 held the run and released it

    # the same run goes on with one process (train longer: the checkpoint holds the global batch's state)
    helpers.train(["--runs_dir", str(tmp_path), "--name", "run", "--train.interp_steps", "6"])
    assert checkpoint_step(run_dir / "unet_interp.pt") == 6


def test_help_documents_torchrun(capsys):
    with pytest.raises(SystemExit):
        helpers.train(["--help"])
    help_text = capsys.readouterr().out
    assert "torchrun --nproc_per_node N train.py [options]" in help_text and "--nnodes M" in help_text
