"""The one training loop every stage uses (vae, image, video, videovae, interp; stages.py).

A stage hands the loop a model, a loss and a source of batches; the loop does the rest, the same way
for all of them:

- AdamW on the parameters that require gradients, the learning rate warmed up linearly and then
  decayed along a cosine to a tenth of its peak, gradient clipping to `train.grad_clip`; the rate is
  computed from the config at every step, so a resumed run takes a changed rate or step count;
- an exponential moving average (EMA) of the weights, torch.optim.swa_utils.AveragedModel:
  theta_ema <- decay_n * theta_ema + (1 - decay_n) * theta, with decay_n = min(decay, (1+n)/(10+n))
  so that the average is not dominated by the random initial weights in short runs;
- a tqdm bar with the loss, `log.csv` (one row per logged value) and `loss.png` redrawn from it at
  checkpoints (at most once a minute) and at the stage's end;
- sample files every `train.sample_every` steps (what a sample is, the stage decides);
- checkpoints `state_<stage>.pt` with model, EMA, optimizer, step and random state (runs.py writes
  them atomically), so a resumed run continues exactly where the checkpoint was taken;
- on Linux, glibc told to keep the memory a step frees for the next one (keep_freed_memory);
- divergence: a NaN or infinite loss, one over DIVERGENCE_FACTOR times the stage's mean so far, or
  non-finite weights stop the stage; a checkpoint is only written once the next step's loss has
  shown its weights sound, so the one kept is always one to resume from at a lower learning rate.

A stage's initial weights and its training noise are seeded from (run seed, stage name) alone
(stage_seed), so a stage starts the same whatever the process ran before it. When the stage
finishes, its `finish` step runs (the VAE measures its scaling factor), and then its weights file
(`vae.pt`, ...) is written, last: model and EMA state dicts, the step, the EMA weights' fingerprint
and the fingerprints of the stages it was built on.

Under torchrun (N processes, `this_process()`), the same loop is data-parallel: each process takes
its share of every step's global batch (data.StepBatchSampler) and draws its share of the global
batch's noise (distributed.BatchShare), and DistributedDataParallel averages the gradients, so every
process holds the weights one process would hold with the whole batch. Process 0 alone keeps the EMA
and writes the log, samples, checkpoints and weights file; a checkpoint is the same for any N.
"""

from __future__ import annotations

import csv
import ctypes
import io
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .config import Config
from .distributed import BatchShare, this_process, wait_for_every_process
from .presets import preset_default
from .runs import (WEIGHTS_FILES, check_built_on, check_finite, checkpoint_step, fingerprint, inputs_of,
                   load_checkpoint, load_state_dict, save_atomically, state_file, train_command, write_text_atomically)

LOG_FIELDS = ("stage", "step", "seconds", "name", "value")
# loss.png is redrawn at a checkpoint if the last drawing is older than this (a drawing takes about a
# second), and at the end of each stage
PLOT_EVERY_SECONDS = 60.0
# a loss above this many times the stage's mean loss so far is a divergence, not noise: the untrained
# model's loss is the highest a sound stage sees, and a blow-up passes it within a step or two
DIVERGENCE_FACTOR = 10.0


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class TrainingDiverged(RuntimeError):
    """The loss or the weights blew up."""


@dataclass(kw_only=True)
class Stage:
    """What one stage gives the loop (stages.py makes one for each), every field by keyword."""

    name: str  # "vae", "image", "video", "videovae", "interp"
    model: nn.Module  # everything the weights file saves; only parameters with requires_grad train
    # loss(batch, generator) -> (loss, {name: float}) for logging; draw all noise from `generator`
    loss: Callable[[dict, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
    # batches(start_step) -> the batches for steps start_step, start_step + 1, ..., num_steps - 1
    batches: Callable[[int], Iterable[dict]]
    num_steps: int
    # {config option: peak learning rate}, e.g. {"train.learning_rate": 5e-4}: one AdamW group each
    learning_rates: dict[str, float]
    # rate_option(parameter name) -> the option (a key of learning_rates) it trains at; None: the first
    rate_option: Callable[[str], str] | None = None
    # write_samples(ema_model, step) writes sample files; None for no samples
    write_samples: Callable[[nn.Module, int], None] | None = None
    # finish(ema_model) runs once training ends, before the weights file is written; None for nothing
    finish: Callable[[nn.Module], None] | None = None


class StageLoss(nn.Module):
    """A stage's loss as a module around its model, for DistributedDataParallel, which averages the
    gradients of the parameters it holds over the processes when the loss it returned is backpropagated."""

    def __init__(self, model: nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: dict, draws: BatchShare) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(batch, draws)


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's initial weights and training noise: a function of the run's seed and
    the stage's name alone, so that `--stage` calls and resumes end where one uninterrupted run ends."""
    return int(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Logging.


def read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def write_log(run_dir: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(run_dir / "log.csv", text.getvalue())


def plot_log(run_dir: Path) -> None:
    """Redraw loss.png from log.csv: one panel per stage, every logged value against the step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    rows = read_log(run_dir)
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    if not stages:
        return
    figure = Figure(figsize=(5 * len(stages), 3.5), layout="constrained")
    for axis, stage in zip(figure.subplots(1, len(stages), squeeze=False)[0], stages):
        for name in dict.fromkeys(row["name"] for row in rows if row["stage"] == stage):
            points = [(int(r["step"]), float(r["value"])) for r in rows
                      if r["stage"] == stage and r["name"] == name]
            axis.plot(*zip(*points), label=name)
        axis.set_yscale("log")
        axis.set_xlabel("step")
        axis.set_title(f"stage {stage}")
        axis.legend()
    figure.savefig(run_dir / "loss.png", dpi=80)


# ---------------------------------------------------------------------------------------------
# The loop.


def learning_rate_factor(step: int, warmup_steps: int, num_steps: int, final: float = 0.1) -> float:
    """Linear warm-up to 1 over warmup_steps, then a cosine decay to `final` at num_steps:
    factor = final + (1 - final) * (1 + cos(pi * progress)) / 2, progress from 0 to 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(num_steps - warmup_steps, 1))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    def average(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # decay warms up as (1 + n) / (10 + n) so early averages follow the model closely
        n = num_averaged.item()
        decay_now = min(decay, (1 + n) / (10 + n))
        # ema <- ema + (1 - decay) (param - ema), every tensor in one call (one loop in C++, not Python)
        torch._foreach_lerp_(ema_params, params, 1.0 - decay_now)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def make_optimizer(stage: Stage, model: nn.Module, weight_decay: float) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with one parameter group per learning-rate option; returns it and the groups' options."""
    options: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            option = next(iter(stage.learning_rates)) if stage.rate_option is None else stage.rate_option(name)
            options.setdefault(option, []).append(parameter)
    groups = [{"params": parameters, "lr": stage.learning_rates[option]} for option, parameters in options.items()]
    # fused: the whole update in one kernel, 4x faster than the loop over parameters on a CPU
    # (docs/experiments.md, issue 38)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fused), list(options)


def keep_freed_memory() -> bool:
    """Linux (glibc) only: let the allocator keep the memory a step frees for the next step.

    By default glibc takes each block over 128 KiB (as it adapts, up to 32 MiB) fresh from the
    operating system and hands it back when it is freed, so each step's activations are page-faulted
    in anew, page by page: 27,000 page faults a step in the vae stage. Blocks up to 32 MiB (glibc's
    largest setting) from the heap, and up to 1 GiB of freed memory kept, bring that to 3,500 and the
    step from about 350 to 300 ms (docs/experiments.md, issue 38); PyTorch's Performance Tuning Guide
    switches to jemalloc or TCMalloc for the same reason. Returns whether the settings took: False off glibc
    (macOS and Windows have other allocators)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20) and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 30))


class StageRun:
    """One stage's training in progress: the model, its EMA and optimizer, the step and the loss so far,
    and how they are checkpointed (state_<stage>.pt), restored and finally saved (the weights file)."""

    def __init__(self, stage: Stage, config: Config, run_dir: Path, device: torch.device):
        self.stage, self.settings, self.run_dir, self.device = stage, config.train, run_dir, device
        self.preset = config.preset  # whose rates lower_rate knows to train
        self.process = this_process()
        self.model = stage.model.to(device)
        self.optimizer, self.group_options = make_optimizer(stage, self.model, self.settings.weight_decay)
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.ema = make_ema(self.model, self.settings.ema_decay) if self.process.is_main else None
        self.generator = torch.Generator(device).manual_seed(stage_seed(config.seed, stage.name))
        self.parallel = None  # several processes: the loss through DistributedDataParallel
        if self.process.world_size > 1:
            self.parallel = DistributedDataParallel(StageLoss(self.model, stage.loss),
                                                    device_ids=[device] if device.type == "cuda" else None)
            self.draws = BatchShare(self.generator, self.process.rank, self.process.world_size)
        self.built_on = inputs_of(run_dir, stage.name)  # {input stage: fingerprint of the weights trained against}
        self.state_path = state_file(run_dir, stage.name)
        self.step, self.seconds_before = 0, 0.0  # seconds_before: training time of earlier sessions
        self.loss_sum, self.loss_count = 0.0, 0  # every step's loss so far: their mean is the yardstick for divergence
        if self.state_path.is_file():
            self.resume()
        self.start_time = self.last_plot = time.perf_counter()
        self.progress = tqdm(total=stage.num_steps, initial=self.step, desc=f"stage {stage.name}", dynamic_ncols=True,
                             disable=not self.process.is_main)

    def resume(self) -> None:
        """Restore model, EMA, optimizer, generator, step and loss sums from state_<stage>.pt."""
        path, stage = self.state_path, self.stage
        state = load_checkpoint(path, ("model", "ema", "optimizer", "step", "generator", "seconds"))
        check_built_on(self.run_dir, stage.name, path)
        self.step = int(state["step"])
        if self.step > stage.num_steps:
            raise ValueError(f"{path} is at step {self.step}, past train.{stage.name}_steps {stage.num_steps}; "
                             f"ask for {self.step} steps or more (--train.{stage.name}_steps {self.step})")
        load_state_dict(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.seconds_before = float(state["seconds"])
        self.loss_sum, self.loss_count = float(state.get("loss_sum", 0.0)), int(state.get("loss_count", 0))
        if self.process.is_main:
            load_state_dict(self.ema, state["ema"], path)
            # log rows written after that checkpoint belong to the lost part of the run
            write_log(self.run_dir, [row for row in read_log(self.run_dir)
                                     if row["stage"] != stage.name or int(row["step"]) <= self.step])
            print(f"stage {stage.name}: resuming from step {self.step} ({path})")

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start_time

    def loss(self, batch: dict) -> tuple[torch.Tensor, float, dict[str, float]]:
        """This step's loss (a tensor to backpropagate and its value) and logged values, checked: a
        NaN or infinite loss, or one over DIVERGENCE_FACTOR times the stage's mean so far, stops it."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.settings.mixed_precision and self.device.type == "cuda"):
            if self.parallel is None:
                loss, values = self.stage.loss(batch, self.generator)
            else:
                loss, values = self.parallel(batch, self.draws)
        value = loss.item()  # one host sync a step
        if self.parallel is not None:  # the global batch's: the mean of the processes' equal shares
            value, values = self.mean_over_processes(value, values)
        if not math.isfinite(value):
            raise self.diverged(f"the loss became {value} at step {self.step + 1}")
        mean = self.loss_sum / max(self.loss_count, 1)
        if self.loss_count and value > DIVERGENCE_FACTOR * mean:
            raise self.diverged(f"the loss rose to {value:.4g} at step {self.step + 1}, over "
                                f"{DIVERGENCE_FACTOR:g} times the stage's mean so far ({mean:.4g})")
        return loss, value, values

    def mean_over_processes(self, value: float, values: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The loss and logged values averaged over the processes, so that every one of them judges a
        divergence alike and process 0 logs the global batch's figures."""
        numbers = torch.tensor([value, *values.values()], dtype=torch.float64, device=self.device)
        dist.all_reduce(numbers)
        numbers = (numbers / self.process.world_size).tolist()
        return numbers[0], dict(zip(values, numbers[1:]))

    def update(self, loss: torch.Tensor, value: float) -> None:
        """Backpropagate (several processes: averaging the gradients), clip, step AdamW at this step's
        rates, and update the EMA (process 0)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.grad_clip)
        factor = learning_rate_factor(self.step, self.settings.warmup_steps, self.stage.num_steps)
        for group, option in zip(self.optimizer.param_groups, self.group_options):
            # from this config, not the checkpoint's: a resumed run takes a changed rate
            group["lr"] = self.stage.learning_rates[option] * factor
            group["weight_decay"] = self.settings.weight_decay
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + 1
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{value:.4f}")

    def diverged(self, why: str) -> TrainingDiverged:
        self.progress.close()
        path = self.state_path
        kept = (f"{path.name} (step {checkpoint_step(path)}), the last checkpoint whose weights gave a sound "
                f"loss" if path.is_file() else "no checkpoint (none was written yet)")
        lower = [f"--{option} {self.lower_rate(option):g}" for option in self.group_options]
        return TrainingDiverged(f"stage {self.stage.name}: {why}; stopping and keeping {kept}. Lower the learning "
                                f"rate and run again, for example {train_command(self.run_dir, *lower)}")

    def lower_rate(self, option: str) -> float:
        """A rate to try after a divergence: a quarter of this one, and at most the preset's own (which trains)."""
        return min(self.stage.learning_rates[option] / 4, preset_default(self.preset, option))

    def save_state(self, generator_state: torch.Tensor) -> None:
        """state_<stage>.pt at this step (generator_state: the generator before this step's draws)."""
        for module in (self.model, self.ema):
            try:
                check_finite(module.state_dict(), self.state_path.name)
            except ValueError:
                raise self.diverged(f"the weights became non-finite by step {self.step}") from None
        save_atomically({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "step": torch.tensor(self.step),
                         "generator": generator_state, "built_on": self.built_on,
                         "loss_sum": torch.tensor(self.loss_sum, dtype=torch.float64),
                         "loss_count": torch.tensor(self.loss_count),
                         "seconds": torch.tensor(self.elapsed(), dtype=torch.float64)}, self.state_path)
        if self.step == self.stage.num_steps or time.perf_counter() - self.last_plot > PLOT_EVERY_SECONDS:
            plot_log(self.run_dir)
            self.last_plot = time.perf_counter()

    def finish(self) -> nn.Module:
        """Run the stage's finish step, then write its weights file, last; returns the EMA model.
        (Process 0's job: the others hold no EMA.)"""
        self.progress.close()
        print(f"stage {self.stage.name}: {self.step} steps in {self.elapsed() / 60:.1f} minutes of training")
        ema_model = self.ema.module.eval()
        if self.stage.finish is not None:
            with torch.no_grad():
                self.stage.finish(ema_model)
        ema_state = ema_model.state_dict()
        save_atomically({"model": self.model.state_dict(), "ema": ema_state, "step": torch.tensor(self.step),
                         "fingerprint": fingerprint(ema_state), "built_on": self.built_on},
                        self.run_dir / WEIGHTS_FILES[self.stage.name])
        return ema_model


def train_stage(stage: Stage, config: Config, run_dir: Path, device: torch.device) -> nn.Module | None:
    """Train `stage` to `stage.num_steps`, resuming from state_<stage>.pt if there is one; then run
    its finish step and write its weights file. Returns the EMA copy of the model, which is what
    samples and later stages use (None in processes other than 0 under torchrun, which return once
    process 0 has written the weights file)."""
    run_dir = Path(run_dir)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    keep_freed_memory()
    run, settings = StageRun(stage, config, run_dir, device), config.train
    writes = run.process.is_main  # the log, samples, checkpoints and weights: process 0's
    log_rows = read_log(run_dir)
    run.model.train()
    # A checkpoint of a step is written once the next step's loss has shown its weights sound, so that
    # the one kept after a divergence never holds weights that had already blown up.
    checkpoint_due = False
    for batch in stage.batches(run.step):
        # before this step's draws: what a checkpoint of the step, due now, holds
        generator_state = run.generator.get_state() if checkpoint_due else None
        loss, loss_value, values = run.loss(batch)
        if checkpoint_due and writes:
            run.save_state(generator_state)
        checkpoint_due = False
        run.update(loss, loss_value)
        step, last = run.step, run.step == stage.num_steps
        if writes and (step % settings.log_every == 0 or last):
            log_rows += [{"stage": stage.name, "step": step, "seconds": f"{run.elapsed():.3f}", "name": name,
                          "value": f"{value:.6g}"} for name, value in {"loss": loss_value, **values}.items()]
            write_log(run_dir, log_rows)
        if writes and stage.write_samples is not None and (step % settings.sample_every == 0 or last):
            run.ema.module.eval()
            with torch.no_grad():
                stage.write_samples(run.ema.module, step)
        if last and writes:  # the last checkpoint: no later loss to wait for
            run.save_state(run.generator.get_state())
        elif step % settings.checkpoint_every == 0:
            checkpoint_due = True
    ema_model = run.finish() if writes else None
    wait_for_every_process()  # the next stage starts from the weights file process 0 wrote
    return ema_model
