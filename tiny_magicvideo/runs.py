"""A run directory, runs/<name>/: what it holds, and how it is read and written safely.

    config.json         the run's identity: the resolved config (with the VAE's scaling factor).
                        For an existing run, train.py takes its settings from here.
    lock                the process id of the train.py that holds the run (empty when none does)
    vae.pt, ...         a finished stage (WEIGHTS_FILES): model and EMA state dicts, the step, the
                        EMA weights' fingerprint and the fingerprints of the stages it was built on
    state_<stage>.pt    a stage's latest checkpoint: what an exact resume needs

The models a run's stages train are built here too (text_to_image_model, text_to_video_model), and
loaded from their weights files (load_vae, load_video_vae, load_image_model, load_video_model), so
that train.py, the pipeline and the benchmarks read a run one way.

Every file is written to `<name>.tmp`, flushed to the disk and renamed over the old one, so a killed
process leaves either the old file or the new one, never half of one; a stage's weights file is the
last thing its stage writes, so "the weights file exists" means "the stage is finished". Every file
is read with torch.load(weights_only=True): tensors, numbers and strings only, never code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from .config import SECTIONS, Config, check_config
from .text import TextEncoder
from .unet3d import UNet3D
from .vae import AutoencoderKL, VideoVAE

STAGE_ORDER = ("vae", "image", "video", "videovae", "interp")
WEIGHTS_FILES = {"vae": "vae.pt", "image": "unet_image.pt", "video": "unet.pt", "videovae": "videovae.pt",
                 "interp": "unet_interp.pt"}
# the finished stages whose weights each stage starts from or trains against
STAGE_INPUTS = {"vae": (), "image": ("vae",), "video": ("vae", "image"), "videovae": ("vae",),
                "interp": ("vae", "image")}
STAGE_MODELS = {"vae": "VAE", "image": "image model", "video": "video model", "videovae": "VideoVAE",
                "interp": "frame interpolation model"}


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


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `<path>.tmp`, fsync it, rename it over `path`. On any failure (a full disk,
    an interrupt) the temporary file is removed and the old `path` is left as it was."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on the disk before the rename makes it the real file
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free / 2 ** 20
            raise OSError(error.errno, f"no space left on the disk to write {path} ({free:.0f} MB free "
                                       f"there); free some space and run the same command again") from error
        raise


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
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # truncated zip, wrong format, pickled code: all unreadable here
        if "Weights only load failed" in str(error):  # PyTorch's message advises weights_only=False: not here
            reason = "it holds Python objects, not only tensors, and this project never runs code from a file"
        else:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise ValueError(f"{path} is not a readable checkpoint ({reason}); it may be truncated or from "
                         f"another program: delete it and re-run the stage") from error
    missing = [key for key in keys if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it was not written by this project's "
                         f"training loop; delete it and re-run the stage")
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
# The models of a run, built from its config and loaded from its weights files.


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


def text_to_image_model(config: Config) -> nn.ModuleDict:
    """The image stage's trainable pair, saved together in unet_image.pt."""
    return nn.ModuleDict({"text_encoder": TextEncoder(config.text),
                          "unet": UNet3D(config.unet, config.vae.latent_channels, config.text.width)})


def text_to_video_model(image_model: nn.ModuleDict, config: Config) -> nn.ModuleDict:
    """The video stage's pair, saved together in unet.pt: the same text encoder and the image U-Net
    inflated to clips of up to data.num_frames frames."""
    return nn.ModuleDict({"text_encoder": image_model["text_encoder"],
                          "unet": UNet3D.from_image(image_model["unet"], config.data.num_frames)})


def text_to_interp_model(image_model: nn.ModuleDict, config: Config) -> nn.ModuleDict:
    """The interp stage's pair, saved together in unet_interp.pt: the same text encoder and the image
    U-Net inflated with diffusion.keyframe_condition's latent_channels + 1 input channels beside the
    latents, for windows of up to data.num_frames frames."""
    unet = UNet3D.from_image(image_model["unet"], config.data.num_frames, config.vae.latent_channels + 1)
    return nn.ModuleDict({"text_encoder": image_model["text_encoder"], "unet": unet})


def _finished(run_dir: Path, stage: str) -> Path:
    """The weights file of a finished stage; a missing one is an error that says how to train it."""
    path = Path(run_dir) / WEIGHTS_FILES[stage]
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {STAGE_MODELS[stage]} ({path.name}): train it with "
                                f"{train_command(run_dir, '--stage', stage)}")
    return path


def _loaded(model: nn.Module, run_dir: Path, stage: str, device: torch.device | str) -> nn.Module:
    """`model` with the EMA weights of the run's finished `stage`, on `device`, in eval mode."""
    load_weights(model, _finished(run_dir, stage))
    return model.to(device).eval()


def load_vae(run_dir, device: torch.device | str = "cpu") -> AutoencoderKL:
    """The trained VAE (EMA weights) of a run directory, with the run's scaling factor."""
    return _loaded(AutoencoderKL(load_run_config(run_dir).vae), run_dir, "vae", device)


def load_video_vae(run_dir, device: torch.device | str = "cpu") -> VideoVAE:
    """The trained VideoVAE (EMA weights) of a run directory (python train.py --stage videovae)."""
    return _loaded(VideoVAE(load_run_config(run_dir).vae), run_dir, "videovae", device)


def load_image_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The image stage's text encoder and U-Net (EMA weights, unet_image.pt)."""
    return _loaded(text_to_image_model(load_run_config(run_dir)), run_dir, "image", device)


def load_interp_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The interp stage's text encoder and frame interpolation U-Net (EMA weights, unet_interp.pt)."""
    config = load_run_config(run_dir)
    return _loaded(text_to_interp_model(text_to_image_model(config), config), run_dir, "interp", device)


def load_video_model(run_dir, device: torch.device | str = "cpu") -> nn.ModuleDict:
    """The video stage's text encoder and inflated U-Net (EMA weights, unet.pt)."""
    config = load_run_config(run_dir)
    return _loaded(text_to_video_model(text_to_image_model(config), config), run_dir, "video", device)


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


# ---------------------------------------------------------------------------------------------
# The lock: one train.py per run.


class RunInUse(RuntimeError):
    """Another process holds the run's lock."""


class RunLock:
    """`with RunLock(run_dir):` holds runs/<name>/lock for the block, or raises RunInUse.

    The lock is the operating system's (flock on Linux and macOS, msvcrt on Windows), which it
    releases when the holder dies, however it dies; the file's text names the holder, so a refusal
    can say who it is, and a lock left by a killed process is seen as free and taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "lock"

    def __enter__(self) -> "RunLock":
        self.file = open(self.path, "a+")
        try:
            _lock_file(self.file)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunInUse(f"run {self.path.parent} is in use by {holder} (its lock file {self.path}); "
                           f"wait for it to finish or stop it, or train another run with --name NEW") from None
        self.file.seek(0)
        previous = self.file.read().strip()
        if previous:
            print(f"taking over {self.path}: {previous} ended without releasing it")
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M')}\n")
        self.file.flush()
        return self

    def __exit__(self, *exception) -> None:
        self.file.seek(0)
        self.file.truncate()  # empty: no holder
        self.file.flush()
        _unlock_file(self.file)
        self.file.close()


if os.name == "nt":
    import msvcrt

    def _lock_file(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(file) -> None:
        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock_file(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_file(file) -> None:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
