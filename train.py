"""Train tiny-magicvideo: python train.py [--preset P] [--stage S] [--section.key value ...]

Runs, in order, every stage that runs/<name>/ does not yet hold finished, resuming an interrupted
one from its last checkpoint: vae -> image -> video -> videovae -> interp. `--stage S` runs one. An
existing run takes its settings from its own config.json, so `python train.py --name NAME` continues
it; one train.py at a time holds a run (runs/<name>/lock).

Several processes, one per GPU (or CPU processes, gloo):

    torchrun --nproc_per_node N train.py [options]

Each process takes 1/N of every step's batch (train.batch_size and train.video_batch_size stay the
global batch, divisible by N) and DistributedDataParallel averages the gradients, so the weights are
those of one process; process 0 writes every file. A run may resume with another N. Several
machines (not tested here): torchrun --nnodes M --node_rank I --rdzv_backend c10d --rdzv_endpoint
HOST:PORT --nproc_per_node N train.py [options] on each, runs/ on a disk they share.
"""

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from tiny_magicvideo.cli import parse_config
from tiny_magicvideo.distributed import (join_processes, leave_processes, resolve_device, this_process,
                                         wait_for_every_process)
from tiny_magicvideo.lock import RunInUse, RunLock
from tiny_magicvideo.runs import STAGE_ORDER, existing_run_config, load_run_config, stale_stages, train_command
from tiny_magicvideo.stages import start_run, train_unfinished
from tiny_magicvideo.training import TrainingDiverged


def main() -> None:
    """Train the run's unfinished stages; a bad option, file or state ends it with one line."""
    try:
        config, args = parse_config(description=__doc__.splitlines()[0], extra_arguments=add_arguments,
                                    existing_run=existing_run_config)
        device = join_processes(resolve_device(config.device))
        run_dir = Path(config.runs_dir) / config.name
        run_dir.mkdir(parents=True, exist_ok=True)
        process = this_process()
        with RunLock(run_dir) if process.is_main else contextlib.nullcontext():
            if process.is_main:
                config = start_run(config, run_dir, device, args.retrain)
            wait_for_every_process()
            for name in [args.stage] if args.stage else STAGE_ORDER:
                if not process.is_main:  # as process 0 wrote it, with the scaling factor its VAE stage measured
                    config = load_run_config(run_dir)
                train_unfinished(name, config, run_dir, device)
            stale = stale_stages(run_dir)
            if stale:  # e.g. after --stage vae --train.vae_steps N continued the VAE that later stages use
                print(f"note: {', '.join(stale)} were built on weights that have changed since; retrain them "
                      f"with {train_command(run_dir, '--retrain', ','.join(stale))}")
    except (ValueError, OSError, RunInUse, TrainingDiverged) as error:
        sys.exit(f"error: {error}")
    finally:
        leave_processes()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog, parser.formatter_class = __doc__.split("\n\n", 1)[1], argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stage", choices=STAGE_ORDER, default=None,
                        help="run only this stage (default: every unfinished stage, in order)")
    parser.add_argument("--retrain", type=stage_list, default=(), metavar="STAGE,...",
                        help="delete these stages' weights and checkpoints, and those of every stage built "
                             "on them, and train them anew")


def stage_list(text: str) -> tuple[str, ...]:
    stages = tuple(text.split(",")) if text else ()
    unknown = [stage for stage in stages if stage not in STAGE_ORDER]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGE_ORDER)}")
    return stages


if __name__ == "__main__":
    warnings.formatwarning = lambda message, *details: f"warning: {message}\n"  # one line, no source
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; run the same command again to resume from the last checkpoint")
