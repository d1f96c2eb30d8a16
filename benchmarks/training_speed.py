"""Each training stage's steps per second, FLOP rate and peak memory for a preset, and the preset's whole run.

    python benchmarks/training_speed.py [--preset gpu] [--training_steps 50] [--compile] [--device auto]

Trains every stage of the preset for --training_steps steps in a temporary run, one stage at a
time (each stage starts from the weights the one before wrote), with the preset's models, batches and
precision. A stage's speed is timed from the end of its fifth step to the end of its last, from
log.csv (the training time alone: before it, the first steps' allocations and compilation, and the
image stage's encoding of its training frames, which --training_steps this short would overstate); peak
memory is the device's (torch.cuda.max_memory_allocated) and only measured on CUDA. The whole run is
the preset's steps of each stage at the measured speed, without samples, checkpoints and the image
stage's encoding. Run it with nothing else on the machine.

FLOPs of one training step: its loss and backward (the frozen VAE's encoding included) counted by
torch.utils.flop_counter.FlopCounterMode as benchmarks/flops.py counts them (2 per multiply-add of
every matmul and convolution, attention as its explicit formula), the mean of two steps (the interp
stage's steps alternate their window length). The machine's peak is measured in the same run: the
faster of a large matmul and a large convolution, each the best of 5 timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tiny_magicvideo.attention import explicit_attention
from tiny_magicvideo.cli import parse_config
from tiny_magicvideo.config import Config
from tiny_magicvideo.distributed import resolve_device
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.runs import STAGE_ORDER, existing_run_config
from tiny_magicvideo.stages import STAGES, start_run, train_unfinished
from tiny_magicvideo.training import read_log

TIMED_FROM = 5  # the first steps allocate memory (and compile): timed from the end of this step
GIGA = 1e9


def seconds_of(run: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """The fastest of `repeats` timings of run(), after one untimed call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def machine_peak(device: torch.device) -> dict[str, float]:
    """GFLOP/s of a large float32 matmul (2048 x 2048 by 2048 x 2048: 2 * 2048^3 FLOPs) and a large
    convolution (3x3, 128 -> 128 channels, 16 images of 64 x 64: 2 * 16 * 64^2 * 128 * 128 * 9 FLOPs)."""
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    images, weight = torch.randn(16, 128, 64, 64, device=device), torch.randn(128, 128, 3, 3, device=device)
    with torch.no_grad():
        matmul = 2 * 2048 ** 3 / seconds_of(lambda: a @ b, device)
        convolution = 2 * 16 * 64 ** 2 * 128 * 128 * 9 / seconds_of(lambda: F.conv2d(images, weight, padding=1), device)
    return {"matmul": matmul / GIGA, "convolution": convolution / GIGA}


def step_flops(stage: str, config: Config, run_dir: Path, device: torch.device) -> float:
    """FLOPs of one training step of `stage` (loss and backward), the mean of its first two steps. The
    stage is built again on the run's finished inputs, its training frames cut to two batches (the
    image stage encodes them all before its first batch; a FLOP count depends on shapes alone)."""
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_train_clips=2 * max(
        config.train.batch_size, config.train.video_batch_size)))
    built = STAGES[stage](config, run_dir, device)
    model = explicit_attention(built.model.to(device).train())
    generator, flops = torch.Generator(device).manual_seed(0), []
    for batch in islice(built.batches(0), 2):
        with FlopCounterMode(display=False) as counter:
            loss, _ = built.loss(batch, generator)
            loss.backward()
        flops.append(counter.get_total_flops())
        model.zero_grad(set_to_none=True)
    return sum(flops) / len(flops)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpu")
    parser.add_argument("--training_steps", type=int, default=50,
                        help=f"steps of each stage (more than {TIMED_FROM})")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net (--train.compile true)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.training_steps <= TIMED_FROM:
        parser.error(f"--training_steps {args.training_steps}: use more than {TIMED_FROM} (the first {TIMED_FROM} "
                     f"are not timed)")
    preset, device = get_preset(args.preset), resolve_device(args.device)
    print(f"preset {args.preset} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, "
          f"{args.training_steps} steps a stage, compile {'on' if args.compile else 'off'}")
    peak = machine_peak(device)
    best = max(peak.values())
    print(f"the machine's peak, float32: a large matmul {peak['matmul']:.0f} GFLOP/s, a large convolution "
          f"{peak['convolution']:.0f} GFLOP/s")
    rows = ["| stage | steps/s | GFLOPs a step | GFLOP/s | share of the peak | peak memory | the preset's steps "
            "| estimated minutes |", "|---|---|---|---|---|---|---|---|"]
    total_minutes = 0.0
    with tempfile.TemporaryDirectory() as runs_dir:
        for stage in STAGE_ORDER:
            preset_steps = getattr(preset.train, f"{stage}_steps")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            config, _ = parse_config(["--preset", args.preset, "--runs_dir", runs_dir, "--name", "speed",
                                      "--device", args.device, f"--train.{stage}_steps", str(args.training_steps),
                                      "--train.log_every", "1", "--train.sample_every", str(10 ** 9),
                                      "--train.checkpoint_every", str(10 ** 9),
                                      "--train.compile", str(args.compile).lower()], existing_run=existing_run_config)
            run_dir = Path(runs_dir) / "speed"
            run_dir.mkdir(exist_ok=True)
            config = start_run(config, run_dir, device)
            train_unfinished(stage, config, run_dir, device)
            seconds = {int(row["step"]): float(row["seconds"]) for row in read_log(Path(runs_dir) / "speed")
                       if row["stage"] == stage and row["name"] == "loss"}
            timed = seconds[args.training_steps] - seconds[TIMED_FROM]
            steps_per_second = (args.training_steps - TIMED_FROM) / timed
            memory = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB" if device.type == "cuda"
                      else "not measured")
            flops = step_flops(stage, config, run_dir, device)
            rate = flops * steps_per_second / GIGA
            minutes = preset_steps / steps_per_second / 60
            total_minutes += minutes
            rows.append(f"| {stage} | {steps_per_second:.3g} | {flops / GIGA:.3g} | {rate:.3g} | {rate / best:.0%} "
                        f"| {memory} | {preset_steps:,} | {minutes:,.1f} |")
    print("\n".join(rows))
    print(f"the whole `{args.preset}` preset: about {total_minutes / 60:.1f} hours ({total_minutes:.0f} minutes) "
          f"of training")


if __name__ == "__main__":
    main()
