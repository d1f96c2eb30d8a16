"""The one training loop every stage uses (vae, image, video, videovae).

A stage hands the loop a model, a loss and a source of batches; the loop does the rest, the same way
for all of them:

- AdamW on the parameters that require gradients, the learning rate warmed up linearly and then
  decayed along a cosine to a tenth of its peak, gradient clipping to `train.grad_clip`;
- an exponential moving average (EMA) of the weights, torch.optim.swa_utils.AveragedModel:
  theta_ema <- decay_n * theta_ema + (1 - decay_n) * theta, with decay_n = min(decay, (1+n)/(10+n))
  so that the average is not dominated by the random initial weights in short runs;
- a tqdm bar with the loss, `log.csv` (one row per logged value) and `loss.png` redrawn from it at
  every checkpoint;
- sample files every `train.sample_every` steps (what a sample is, the stage decides);
- checkpoints `state_<stage>.pt` with model, EMA, optimizer, step and random state, written to a
  temporary file and renamed, so a killed run never leaves half a file and a resumed run continues
  exactly where the checkpoint was taken;
- a NaN or infinite loss stops the stage with a message and leaves the last good checkpoint alone.

When the stage finishes, its weights file (`vae.pt`, ...) holds the model and EMA state dicts and
the step: tensors only, read back with torch.load(weights_only=True).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .config import Config

LOG_FIELDS = ("stage", "step", "seconds", "name", "value")
WEIGHTS_FILES = {"vae": "vae.pt", "image": "unet_image.pt", "video": "unet.pt", "videovae": "videovae.pt"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
    learning_rate: float
    # write_samples(ema_model, step) writes sample files; None for no samples
    write_samples: Callable[[nn.Module, int], None] | None = None
    # learning_rates(parameter name) -> its peak learning rate; None: learning_rate for all
    learning_rates: Callable[[str], float] | None = None


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
# Checkpoint files.


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save to `<path>.tmp`, then rename over `path`: the old file stays whole until then."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)


def load_checkpoint(path: Path, keys: Iterable[str]) -> dict:
    """torch.load(weights_only=True) with clear errors for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train that stage first "
                                f"(python train.py --stage ...) or check --name / --runs_dir")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, wrong format, pickled code: all unreadable here
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); "
                         f"it may be truncated or from another program: delete it and re-run the "
                         f"stage") from error
    missing = [key for key in keys if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it was not written by this project's "
                         f"training loop; delete it and re-run the stage")
    return payload


def load_state_dict(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit the model built from this config "
                         f"(was it trained with other sizes?): {str(error).splitlines()[1:3]}") from error


def load_weights(module: nn.Module, path: Path, use_ema: bool = True) -> int:
    """Load a finished stage's weights (EMA by default) into `module`; returns the step trained."""
    payload = load_checkpoint(path, ("model", "ema", "step"))
    load_state_dict(module, payload["ema" if use_ema else "model"], path)
    return int(payload["step"])


def checkpoint_step(path: Path) -> int:
    """The step a weights or state file was written at; 0 if there is no file."""
    return int(load_checkpoint(path, ("step",))["step"]) if Path(path).is_file() else 0


# ---------------------------------------------------------------------------------------------
# A run directory's config.json.

# The config sections each stage's weights depend on: once a stage has written a checkpoint, they
# may not change for that run.
STAGE_SECTIONS = {"vae": ("data", "vae"), "image": ("data", "vae", "text", "unet", "diffusion"),
                  "video": ("data", "vae", "text", "unet", "diffusion"), "videovae": ("data", "vae")}
# settings that never change what is trained (all but the first are only used when sampling)
RESUMABLE_KEYS = ("data.num_workers", "diffusion.guidance_scale", "diffusion.num_inference_steps",
                  "diffusion.video_sampling", "diffusion.image_model_below",
                  "diffusion.unguided_below")
# settings inside a frozen section that only a later stage uses: free until that stage starts
LATER_STAGE_KEYS = {"unet.video_trainable": "video", "unet.temporal_text": "video",
                    "unet.temporal_only_levels": "video", "diffusion.frame_noise_correlation": "video",
                    "diffusion.past_frames": "video",
                    "vae.temporal_loss_weight": "videovae"}


def load_run_config(run_dir) -> Config:
    """The resolved config a run directory was trained with."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json: is it a run directory made by "
                                f"python train.py? (runs are under runs/<name>)")
    try:
        return Config.from_json(path.read_text())
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a valid run config: {error}") from error


def continue_run(run_dir: Path, requested: Config) -> Config:
    """The config to continue the run in `run_dir` with (`requested` if it is a new run), plus what
    the run has measured already.

    Changing a setting that a started stage's checkpoints depend on is an error naming the fields;
    anything else (the train section, sections of stages not started yet) may change.
    """
    if not (run_dir / "config.json").is_file():
        return requested
    saved = load_run_config(run_dir)
    started_stages = [stage for stage, weights in WEIGHTS_FILES.items()
                      if (run_dir / weights).is_file() or (run_dir / f"state_{stage}.pt").is_file()]
    frozen = {section for stage in started_stages for section in STAGE_SECTIONS[stage]}
    old, new = _flat(saved.to_dict()), _flat(requested.to_dict())
    changed = [key for key in new if old.get(key) != new[key] and key.split(".")[0] in frozen
               and key != "vae.scaling_factor" and key not in RESUMABLE_KEYS
               and LATER_STAGE_KEYS.get(key, started_stages[0]) in started_stages]
    if changed:
        details = ", ".join(f"{key} {old.get(key)!r} -> {new[key]!r}" for key in changed)
        raise ValueError(f"run {requested.name!r} was made with other settings ({details}) and its "
                         f"stages {', '.join(started_stages)} depend on them; start a new run with "
                         f"--name NEW, or drop those options")
    merged = Config.from_dict(requested.to_dict())
    merged.vae.scaling_factor = saved.vae.scaling_factor
    return merged


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a killed process never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


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


def train_stage(stage: Stage, config: Config, run_dir: Path, device: torch.device) -> nn.Module:
    """Train `stage` to `stage.num_steps`, resuming from state_<stage>.pt if there is one.

    Returns the EMA copy of the model, which is what samples and later stages use.
    """
    run_dir = Path(run_dir)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    settings = config.train
    model = stage.model.to(device)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    parameters = [p for _, p in named]
    rates = [stage.learning_rate if stage.learning_rates is None else stage.learning_rates(name)
             for name, _ in named]
    # one AdamW group per learning rate, each scaled by the same warmup and decay
    groups = [{"params": [p for p, r in zip(parameters, rates) if r == rate], "lr": rate}
              for rate in sorted(set(rates))]
    optimizer = torch.optim.AdamW(groups, lr=stage.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, settings.warmup_steps, stage.num_steps))
    ema = make_ema(model, settings.ema_decay)
    generator = torch.Generator(device).manual_seed(config.seed)

    state_path = run_dir / f"state_{stage.name}.pt"
    step, seconds_before = 0, 0.0  # seconds_before: training time of earlier sessions of the stage
    if state_path.is_file():
        state = load_checkpoint(state_path, ("model", "ema", "optimizer", "scheduler", "step",
                                             "generator", "seconds"))
        load_state_dict(model, state["model"], state_path)
        load_state_dict(ema, state["ema"], state_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step, seconds_before = int(state["step"]), float(state["seconds"])
        # log rows written after that checkpoint belong to the lost part of the run
        write_log(run_dir, [row for row in read_log(run_dir)
                            if row["stage"] != stage.name or int(row["step"]) <= step])
        print(f"stage {stage.name}: resuming from step {step} ({state_path})")

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - start_time

    def save_state() -> None:
        save_atomically({"model": model.state_dict(), "ema": ema.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "step": torch.tensor(step), "generator": generator.get_state(),
                         "seconds": torch.tensor(elapsed(), dtype=torch.float64)}, state_path)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=settings.mixed_precision and device.type == "cuda")
    log_rows = read_log(run_dir)
    start_time = time.perf_counter()
    model.train()
    progress = tqdm(total=stage.num_steps, initial=step, desc=f"stage {stage.name}", dynamic_ncols=True)
    for batch in stage.batches(step):
        with autocast:
            loss, values = stage.loss(batch, generator)
        if not torch.isfinite(loss):
            progress.close()
            last = (f"the checkpoint {state_path} (step {checkpoint_step(state_path)})"
                    if state_path.is_file() else "no checkpoint (none was written yet)")
            raise TrainingDiverged(
                f"stage {stage.name}: the loss became {loss.item()} at step {step + 1}; stopping and "
                f"keeping {last}. Lower the learning rate (--train.learning_rate, --train.video_learning_rate "
                f"or --train.vae_learning_rate for the autoencoders) or --train.grad_clip and run again.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update_parameters(model)
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.4f}")

        if step % settings.log_every == 0 or step == stage.num_steps:
            seconds = f"{elapsed():.1f}"
            for name, value in {"loss": loss.item(), **values}.items():
                log_rows.append({"stage": stage.name, "step": step, "seconds": seconds,
                                 "name": name, "value": f"{value:.6g}"})
            write_log(run_dir, log_rows)
        if stage.write_samples is not None and (step % settings.sample_every == 0 or step == stage.num_steps):
            ema.module.eval()
            with torch.no_grad():
                stage.write_samples(ema.module, step)
        if step % settings.checkpoint_every == 0 or step == stage.num_steps:
            save_state()
            plot_log(run_dir)  # about a second a drawing: at checkpoints, not at every log row
    progress.close()

    save_atomically({"model": model.state_dict(), "ema": ema.module.state_dict(),
                     "step": torch.tensor(step)}, run_dir / WEIGHTS_FILES[stage.name])
    print(f"stage {stage.name}: {step} steps in {elapsed() / 60:.1f} minutes of training")
    ema.module.eval()
    return ema.module

