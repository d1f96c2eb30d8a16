"""Each training stage's steps per second and peak memory for a preset, and the preset's whole run.

    python benchmarks/training_speed.py [--preset gpu] [--training_steps 50] [--compile] [--device auto]

Trains every stage of the preset for --training_steps steps in a temporary run, one stage at a
time (each stage starts from the weights the one before wrote), with the preset's models, batches and
precision. A stage's speed is timed from the end of its fifth step to the end of its last, from
log.csv (the training time alone: before it, the first steps' allocations and compilation, and the
image stage's encoding of its training frames, which --training_steps this short would overstate); peak
memory is the device's (torch.cuda.max_memory_allocated) and only measured on CUDA. The whole run is
the preset's steps of each stage at the measured speed, without samples, checkpoints and the image
stage's encoding. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from tiny_magicvideo.cli import parse_config
from tiny_magicvideo.distributed import resolve_device
from tiny_magicvideo.presets import get_preset
from tiny_magicvideo.runs import STAGE_ORDER, existing_run_config
from tiny_magicvideo.stages import start_run, train_unfinished
from tiny_magicvideo.training import read_log

TIMED_FROM = 5  # the first steps allocate memory (and compile): timed from the end of this step


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
    rows = ["| stage | steps/s | peak memory | the preset's steps | estimated hours |", "|---|---|---|---|---|"]
    total_hours = 0.0
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
            train_unfinished(stage, start_run(config, run_dir, device), run_dir, device)
            seconds = {int(row["step"]): float(row["seconds"]) for row in read_log(Path(runs_dir) / "speed")
                       if row["stage"] == stage and row["name"] == "loss"}
            timed = seconds[args.training_steps] - seconds[TIMED_FROM]
            steps_per_second = (args.training_steps - TIMED_FROM) / timed
            memory = (f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB" if device.type == "cuda"
                      else "not measured")
            hours = preset_steps / steps_per_second / 3600
            total_hours += hours
            rows.append(f"| {stage} | {steps_per_second:.2f} | {memory} | {preset_steps:,} | {hours:.2f} |")
    print("\n".join(rows))
    print(f"the whole `{args.preset}` preset: about {total_hours:.1f} hours of training")


if __name__ == "__main__":
    main()
