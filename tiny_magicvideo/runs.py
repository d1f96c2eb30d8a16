"""A run directory, runs/<name>/: what it holds, and how it is read and written safely.

    config.json             the run's identity: the resolved config (with the VAE's scaling factor,
                            and for real video the captions' words). train.py continues a run from it.
    lock                    names the train.py that holds the run (empty when none does)
    vae.pt                  a finished stage's weights (WEIGHTS_FILES): the model and EMA state dicts,
    unet_image.pt           the step, the EMA weights' fingerprint and the fingerprints of the stages
    unet.pt                 it was built on. models.py builds each stage's model and loads these.
    videovae.pt
    unet_interp.pt
    state_<stage>.pt        a stage's latest checkpoint: what an exact resume needs (training.py)
    log.csv, loss.png       every logged value, and its plot
    samples/                data.gif, and each stage's samples every train.sample_every steps
    vae_reconstructions.png the VAE stage's originals, reconstructions and differences
    classifier.pt           the evaluation classifier of benchmarks/video_classifier.py, where trained

Every file is written to `<name>.tmp`, flushed to the disk and renamed over the old one, so a killed
process leaves either the old file or the new one, never half of one; a stage's weights file is the
last thing its stage writes, so "the weights file exists" means "the stage is finished". Every file
is read with torch.load(weights_only=True): tensors, numbers and strings only, never code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import torch
import torch.nn as nn

from .checks import check_config
from .config import SECTIONS, Config

STAGE_ORDER = ("vae", "image", "video", "videovae", "interp")
WEIGHTS_FILES = {"vae": "vae.pt", "image": "unet_image.pt", "video": "unet.pt", "videovae": "videovae.pt",
                 "interp": "unet_interp.pt"}
# the finished stages whose weights each stage starts from or trains against
STAGE_INPUTS = {"vae": (), "image": ("vae",), "video": ("vae", "image"), "videovae": ("vae",),
                "interp": ("vae", "image")}


def state_file(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / f"state_{stage}.pt"


def train_command(run_dir: str | Path, *options: str) -> str:
    """The train.py command for an existing run: its settings come from its config.json, so only
    where it lives (and `options`) need saying."""
    run_dir = Path(run_dir)
    where = [] if run_dir.parent == Path("runs") else ["--runs_dir", str(run_dir.parent)]
    return " ".join(["python train.py", *where, "--name", run_dir.name, *options])


# ---------------------------------------------------------------------------------------------
# Writing: a temporary file, flushed, then renamed.


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """`with atomic_file(path) as file:` writes to `<path>.tmp`, then fsyncs it and renames it over
    `path` when the block ends. On any failure (a full disk, an interrupt) the temporary file is
    removed and the old `path` is left as it was."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename makes it the real file
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise OSError(error.errno, f"no space left on the disk to write {path} ({readable_size(free)} free "
                                       f"there); free some space and run the same command again") from error
        raise


def readable_size(num_bytes: float) -> str:
    """532_000 -> "520 KB", 3.5 * 2**30 -> "3.5 GB": the largest unit that leaves 1 or more."""
    units, power = ("bytes", "KB", "MB", "GB"), 0
    while num_bytes >= 1024 and power < len(units) - 1:
        num_bytes, power = num_bytes / 1024, power + 1
    return f"{num_bytes:.0f} {units[power]}" if power < 2 else f"{num_bytes:.1f} {units[power]}"


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through atomic_file: the old file or the new one, never half of one."""
    with atomic_file(path) as file:
        file.write(data)


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save, atomically (write_atomically): serialised in memory first, so that a full disk
    is an OSError that names the file rather than an error from inside PyTorch's zip writer."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomically(path, buffer.getvalue())


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, text.encode())


# ---------------------------------------------------------------------------------------------
# Reading: tensors only, checked.


def load_checkpoint(path: Path, keys: Iterable[str], mmap: bool = False) -> dict:
    """torch.load(weights_only=True) with clear errors for a missing, corrupt or foreign file.
    mmap: map the tensors' bytes rather than read them (for a quick look at a large file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train that stage first "
                                f"({train_command(path.parent, '--stage', '...')})")
    fix = "delete it and re-run the stage that writes it"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; random bytes, a raw pickle, a cut file are not
        raise ValueError(f"{path} is not a readable checkpoint of this project (not the zip archive torch.save "
                         f"writes: it may be truncated, or from another program); {fix}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # a damaged archive, pickled code: all unreadable here
        if "Weights only load failed" in str(error):  # PyTorch's message advises weights_only=False: not here
            reason = "it holds Python objects, not only tensors, and this project never runs code from a file"
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ValueError(f"{path} is not a readable checkpoint of this project ({reason}); {fix}") from error
    missing = [key for key in keys if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not a checkpoint of this project's "
                         f"training loop; {fix}")
    return payload


def check_finite(state: dict, path: Path, what: str = "") -> None:
    """A state dict with a NaN or an infinity is an error that names the file and the tensor."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path} holds non-finite values (NaN or inf) in {what}{name}: its training "
                             f"diverged before it was saved; delete it and retrain that stage")


def load_state_dict(module: nn.Module, state: dict, path: Path) -> None:
    check_finite(state, path)
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


_records: dict[tuple, dict] = {}  # read_record's answers, by file identity


def read_record(path: Path) -> dict:
    """A weights or state file's step, fingerprint and built_on. Asked often (which weights was each
    stage built on?), so the tensors' bytes are memory-mapped, not read, and the answer is kept for
    as long as the file is the same file: a rewrite is a rename, so a new inode."""
    status = Path(path).stat() if Path(path).is_file() else None
    key = (str(path), status.st_ino, status.st_mtime_ns, status.st_size) if status else None
    if key not in _records:
        payload = load_checkpoint(path, ("step",), mmap=True)
        record = {"step": int(payload["step"]), "built_on": payload.get("built_on", {})}
        if "ema" in payload:
            record["fingerprint"] = payload["fingerprint"] if "fingerprint" in payload else fingerprint(payload["ema"])
        _records[key] = record
    return _records[key]


def checkpoint_step(path: Path) -> int:
    """The step a weights or state file was written at; 0 if there is no file."""
    return read_record(path)["step"] if Path(path).is_file() else 0


# ---------------------------------------------------------------------------------------------
# Which weights a stage was built on.


def fingerprint(state: dict) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values: equal for bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def stage_fingerprint(run_dir: Path, stage: str) -> str | None:
    """The fingerprint of a finished stage's EMA weights (what later stages use); None if unfinished."""
    path = Path(run_dir) / WEIGHTS_FILES[stage]
    return read_record(path)["fingerprint"] if path.is_file() else None


def inputs_of(run_dir: Path, stage: str) -> dict[str, str]:
    """{input stage: its fingerprint} for the finished stages `stage` is built on."""
    unfinished = [name for name in STAGE_INPUTS[stage] if not (Path(run_dir) / WEIGHTS_FILES[name]).is_file()]
    if unfinished:
        raise FileNotFoundError(
            f"stage {stage} is built on the {', '.join(unfinished)} stage, which {Path(run_dir)} has not finished "
            f"({', '.join(WEIGHTS_FILES[name] for name in unfinished)}); run {train_command(run_dir)} "
            f"to train every stage in order")
    return {name: stage_fingerprint(run_dir, name) for name in STAGE_INPUTS[stage]}


def check_built_on(run_dir: Path, stage: str, path: Path) -> None:
    """Refuse a file of `stage` (weights or state) built on other weights than its input stages' now."""
    built_on = read_record(path)["built_on"]
    current = inputs_of(run_dir, stage)
    changed = [name for name, recorded in built_on.items() if current.get(name) != recorded]
    if changed:
        stale = stale_stages(run_dir)
        raise ValueError(
            f"{path.name} was built on an earlier {' and '.join(WEIGHTS_FILES[name] for name in changed)} "
            f"(the {', '.join(changed)} stage has been trained on or retrained since); retrain "
            f"{', '.join(stale)} on the current weights with {train_command(run_dir, '--retrain', ','.join(stale))}, "
            f"or start a new run with --name NEW")


def stale_stages(run_dir: Path) -> list[str]:
    """The stages whose weights or checkpoint were built on other weights than their inputs' now."""
    stale = []
    for stage in STAGE_ORDER:
        for path in (Path(run_dir) / WEIGHTS_FILES[stage], state_file(run_dir, stage)):
            if not path.is_file():
                continue
            built_on = read_record(path)["built_on"]
            current = {name: stage_fingerprint(run_dir, name) for name in built_on}
            if any(name in stale or current[name] != recorded for name, recorded in built_on.items()):
                stale.append(stage)
                break
    return stale


def dependent_stages(stages: Iterable[str]) -> list[str]:
    """`stages` and every stage built on one of them, directly or not, in training order."""
    chosen = set(stages)
    for stage in STAGE_ORDER:
        if any(name in chosen for name in STAGE_INPUTS[stage]):
            chosen.add(stage)
    return [stage for stage in STAGE_ORDER if stage in chosen]


def remove_stages(run_dir: Path, stages: Iterable[str]) -> list[str]:
    """Delete the weights and checkpoint files of `stages` (train.py --retrain); returns their names."""
    removed = []
    for stage in stages:
        for path in (Path(run_dir) / WEIGHTS_FILES[stage], state_file(run_dir, stage)):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


# ---------------------------------------------------------------------------------------------
# config.json: the run's identity.


def load_run_config(run_dir) -> Config:
    """The resolved config a run directory was trained with; a missing or invalid one is an error."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json: is it a run directory made by "
                                f"python train.py? (runs are under runs/<name>)")
    try:
        values = json.loads(path.read_text())
        missing = [key for key in ("preset", "name", *SECTIONS) if not isinstance(values, dict) or key not in values]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        config = Config.from_dict(values)
        check_config(config)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a valid run config ({error}); restore it from a copy, or start a "
                         f"new run with --name NEW") from error
    return config


def existing_run_config(run_dir: Path) -> Config | None:
    """The config of the run in `run_dir`, or None where there is no run yet. Weights or checkpoints
    without a config.json are an error: their settings cannot be known, so they cannot be continued."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").is_file():
        return load_run_config(run_dir)
    files = [path.name for stage in STAGE_ORDER
             for path in (run_dir / WEIGHTS_FILES[stage], state_file(run_dir, stage)) if path.is_file()]
    if files:
        raise ValueError(f"{run_dir} holds {', '.join(files)} but no config.json, which says what settings "
                         f"they were trained with; restore config.json, or start a new run with --name NEW")
    return None


# The config sections each stage's weights depend on: once a stage has written a checkpoint, they
# may not change for that run.
STAGE_SECTIONS = {"vae": ("data", "vae"), "image": ("data", "vae", "text", "unet", "diffusion"),
                  "video": ("data", "vae", "text", "unet", "diffusion"), "videovae": ("data", "vae"),
                  "interp": ("data", "vae", "text", "unet", "diffusion")}
# settings that never change what is trained (all but the first are only used when sampling)
RESUMABLE_KEYS = ("data.num_workers", "diffusion.guidance_scale", "diffusion.num_inference_steps",
                  "diffusion.video_sampling", "diffusion.image_model_below",
                  "diffusion.unguided_below")
# settings inside a frozen section that only a later stage uses: free until that stage starts
LATER_STAGE_KEYS = {"unet.video_trainable": "video", "unet.temporal_text": "video",
                    "diffusion.past_frames": "video",
                    "vae.temporal_loss_weight": "videovae", "vae.temporal_blocks": "videovae"}


def continue_run(run_dir: Path, requested: Config) -> Config:
    """The config to continue the run in `run_dir` with (`requested` if it is a new run), plus what
    the run has measured already.

    Changing a setting that a started stage's checkpoints depend on is an error naming the fields;
    anything else may change: the train section and the seed (they apply to what is trained from
    here on, and are printed) and the sections of stages not started yet.
    """
    saved = existing_run_config(run_dir)
    if saved is None:
        return requested
    started_stages = [stage for stage in STAGE_ORDER
                      if (run_dir / WEIGHTS_FILES[stage]).is_file() or state_file(run_dir, stage).is_file()]
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
    for key in new:
        if (key.startswith("train.") or key == "seed") and old.get(key) != new[key]:
            print(f"{key} {old.get(key)} -> {new[key]} (for what is trained from here on)")
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
