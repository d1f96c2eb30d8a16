"""The one training loop every stage uses (vae, image, video, videovae).

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
- divergence: a NaN or infinite loss, one over DIVERGENCE_FACTOR times the stage's mean so far, or
  non-finite weights stop the stage; a checkpoint is only written once the next step's loss has
  shown its weights sound, so the one kept is always one to resume from at a lower learning rate.

A stage's initial weights and its training noise are seeded from (run seed, stage name) alone
(stage_seed), so a stage starts the same whatever the process ran before it. When the stage
finishes, its `finish` step runs (the VAE measures its scaling factor), and then its weights file
(`vae.pt`, ...) is written, last: model and EMA state dicts, the step, the EMA weights' fingerprint
and the fingerprints of the stages it was built on.
"""

from __future__ import annotations

import csv
import io
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .config import Config
from .runs import (WEIGHTS_FILES, check_built_on, check_finite, checkpoint_step, fingerprint, inputs_of,
                   load_checkpoint, load_state_dict, save_atomically, state_file, train_command, write_text_atomically)

LOG_FIELDS = ("stage", "step", "seconds", "name", "value")
# loss.png is redrawn at a checkpoint if the last drawing is older than this (a drawing takes about a
# second), and at the end of each stage
PLOT_EVERY_SECONDS = 60.0
# a loss above this many times the stage's mean loss so far is a divergence, not noise: the untrained
# model's loss is the highest a sound stage sees, and a blow-up passes it within a step or two
DIVERGENCE_FACTOR = 10.0


class TrainingDiverged(RuntimeError):
    """The loss or the weights blew up."""


@dataclass
class Stage:
    """What one stage gives the loop."""

    name: str  # "vae", "image", "video", "videovae"
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


def stage_seed(seed: int, stage: str) -> int:
    """The seed of one stage's initial weights and training noise: a function of the run's seed and
    the stage's name alone, so that `--stage` calls and resumes end where one uninterrupted run ends."""
    return int(np.random.SeedSequence([seed, zlib.crc32(stage.encode())]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind, present in available.items() if present))
    if not available.get(name, False):
        raise ValueError(f"device {name!r} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


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
    def average(ema_param, param, num_averaged):
        # decay warms up as (1 + n) / (10 + n) so early averages follow the model closely
        decay_now = min(decay, (1 + num_averaged.item()) / (10 + num_averaged.item()))
        return ema_param + (1.0 - decay_now) * (param - ema_param)

    return AveragedModel(model, avg_fn=average, use_buffers=True)


def make_optimizer(stage: Stage, model: nn.Module, weight_decay: float) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with one parameter group per learning-rate option; returns it and the groups' options."""
    options: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            option = next(iter(stage.learning_rates)) if stage.rate_option is None else stage.rate_option(name)
            options.setdefault(option, []).append(parameter)
    groups = [{"params": parameters, "lr": stage.learning_rates[option]} for option, parameters in options.items()]
    return torch.optim.AdamW(groups, weight_decay=weight_decay), list(options)


def train_stage(stage: Stage, config: Config, run_dir: Path, device: torch.device) -> nn.Module:
    """Train `stage` to `stage.num_steps`, resuming from state_<stage>.pt if there is one; then run
    its finish step and write its weights file. Returns the EMA copy of the model, which is what
    samples and later stages use."""
    run_dir = Path(run_dir)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    settings = config.train
    model = stage.model.to(device)
    optimizer, group_options = make_optimizer(stage, model, settings.weight_decay)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    ema = make_ema(model, settings.ema_decay)
    generator = torch.Generator(device).manual_seed(stage_seed(config.seed, stage.name))
    built_on = inputs_of(run_dir, stage.name)  # {input stage: fingerprint of the weights trained against}

    state_path = state_file(run_dir, stage.name)
    step, seconds_before = 0, 0.0  # seconds_before: training time of earlier sessions of the stage
    loss_sum, loss_count = 0.0, 0  # every step's loss so far: their mean is the yardstick for divergence
    if state_path.is_file():
        state = load_checkpoint(state_path, ("model", "ema", "optimizer", "step", "generator", "seconds"))
        check_built_on(run_dir, stage.name, state_path)
        step = int(state["step"])
        if step > stage.num_steps:
            raise ValueError(f"{state_path} is at step {step}, past train.{stage.name}_steps {stage.num_steps}; "
                             f"ask for {step} steps or more (--train.{stage.name}_steps {step})")
        load_state_dict(model, state["model"], state_path)
        load_state_dict(ema, state["ema"], state_path)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        seconds_before = float(state["seconds"])
        loss_sum, loss_count = float(state.get("loss_sum", 0.0)), int(state.get("loss_count", 0))
        # log rows written after that checkpoint belong to the lost part of the run
        write_log(run_dir, [row for row in read_log(run_dir)
                            if row["stage"] != stage.name or int(row["step"]) <= step])
        print(f"stage {stage.name}: resuming from step {step} ({state_path})")

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - start_time

    def set_learning_rates(step: int) -> None:
        """Each group's rate for 0-based `step`, from this config (not the checkpoint's)."""
        factor = learning_rate_factor(step, settings.warmup_steps, stage.num_steps)
        for group, option in zip(optimizer.param_groups, group_options):
            group["lr"] = stage.learning_rates[option] * factor
            group["weight_decay"] = settings.weight_decay

    def diverged(why: str) -> TrainingDiverged:
        progress.close()
        kept = (f"{state_path.name} (step {checkpoint_step(state_path)}), the last checkpoint whose weights gave "
                f"a sound loss" if state_path.is_file() else "no checkpoint (none was written yet)")
        lower = [f"--{option} {stage.learning_rates[option] / 4:g}" for option in group_options]
        return TrainingDiverged(f"stage {stage.name}: {why}; stopping and keeping {kept}. Lower the learning "
                                f"rate and run again, for example {train_command(run_dir, *lower)}")

    def check_loss(value: float) -> None:
        """A NaN or infinite loss, or one over DIVERGENCE_FACTOR times the stage's mean so far, stops it."""
        if not math.isfinite(value):
            raise diverged(f"the loss became {value} at step {step + 1}")
        if loss_count and value > DIVERGENCE_FACTOR * loss_sum / loss_count:
            raise diverged(f"the loss rose to {value:.4g} at step {step + 1}, over {DIVERGENCE_FACTOR:g} times "
                           f"the stage's mean so far ({loss_sum / loss_count:.4g})")

    def save_state(generator_state: torch.Tensor) -> None:
        for module in (model, ema):
            try:
                check_finite(module.state_dict(), state_path.name)
            except ValueError:
                raise diverged(f"the weights became non-finite by step {step}") from None
        save_atomically({"model": model.state_dict(), "ema": ema.state_dict(),
                         "optimizer": optimizer.state_dict(), "step": torch.tensor(step),
                         "generator": generator_state, "built_on": built_on,
                         "loss_sum": torch.tensor(loss_sum, dtype=torch.float64), "loss_count": torch.tensor(loss_count),
                         "seconds": torch.tensor(elapsed(), dtype=torch.float64)}, state_path)
        nonlocal last_plot
        if step == stage.num_steps or time.perf_counter() - last_plot > PLOT_EVERY_SECONDS:
            plot_log(run_dir)
            last_plot = time.perf_counter()

    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=settings.mixed_precision and device.type == "cuda")
    log_rows = read_log(run_dir)
    start_time = last_plot = time.perf_counter()
    model.train()
    progress = tqdm(total=stage.num_steps, initial=step, desc=f"stage {stage.name}", dynamic_ncols=True)
    # A checkpoint of `step` is written once the next step's loss has shown its weights sound, so that
    # the one kept after a divergence never holds weights that had already blown up.
    checkpoint_due = False
    for batch in stage.batches(step):
        # before this step's draws: what a checkpoint of `step`, due now, holds
        generator_state = generator.get_state() if checkpoint_due else None
        with autocast:
            loss, values = stage.loss(batch, generator)
        loss_value = loss.item()  # one host sync a step
        check_loss(loss_value)
        if checkpoint_due:
            save_state(generator_state)
            checkpoint_due = False
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        set_learning_rates(step)
        optimizer.step()
        ema.update_parameters(model)
        step += 1
        loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}")

        if step % settings.log_every == 0 or step == stage.num_steps:
            seconds = f"{elapsed():.1f}"
            for name, value in {"loss": loss_value, **values}.items():
                log_rows.append({"stage": stage.name, "step": step, "seconds": seconds,
                                 "name": name, "value": f"{value:.6g}"})
            write_log(run_dir, log_rows)
        if stage.write_samples is not None and (step % settings.sample_every == 0 or step == stage.num_steps):
            ema.module.eval()
            with torch.no_grad():
                stage.write_samples(ema.module, step)
        if step == stage.num_steps:  # the last checkpoint: no later loss to wait for
            save_state(generator.get_state())
        elif step % settings.checkpoint_every == 0:
            checkpoint_due = True
    progress.close()

    print(f"stage {stage.name}: {step} steps in {elapsed() / 60:.1f} minutes of training")
    ema.module.eval()
    if stage.finish is not None:
        with torch.no_grad():
            stage.finish(ema.module)
    ema_state = ema.module.state_dict()
    save_atomically({"model": model.state_dict(), "ema": ema_state, "step": torch.tensor(step),
                     "fingerprint": fingerprint(ema_state), "built_on": built_on},
                    run_dir / WEIGHTS_FILES[stage.name])
    return ema.module
