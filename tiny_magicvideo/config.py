"""Configuration: one dataclass per component, loading from config.json, and the checks.

Every number that shapes a run lives here, so that `config.json` in a run directory is enough to
rebuild it. The presets are in presets.py; the command line (cli.py) reaches every field as
`--section.key value`; checks.py's `check_config` holds every check of the values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class DataConfig:
    """The training clips: the procedural moving shapes (data.py), or real video files (videos.py)."""

    # shapes: the moving shapes, rendered on demand (no download). ucf101: a UCF-101 tree, folder: any
    # folder of captioned videos, both under data.root, decoded once into data.cache_dir (videos.py)
    source: Literal["shapes", "ucf101", "folder"] = "shapes"
    root: str = ""  # the videos' folder (source ucf101 or folder)
    classes: tuple[str, ...] = ()  # source ucf101: the class names to train on; "" for all of them
    cache_dir: str = "data/cache"  # decoded videos, one subfolder per setting that changes them
    image_size: int = 64  # frames are square, image_size x image_size pixels
    num_frames: int = 16
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
    motions: tuple[str, ...] = ("left", "right", "up", "down")
    speed_range: tuple[float, float] = (1.0, 2.5)  # pixels per source frame, drawn uniformly
    # Frame-rate conditioning: a clip shows every s-th frame of its source motion for a stride s
    # drawn from frame_strides, so it plays at fps / s frames a second and moves s times as far
    # per frame. The U-Net is told the clip's frame rate.
    fps: float = 8.0  # frame rate of the source motion (stride 1)
    frame_strides: tuple[int, ...] = (1,)
    size_range: tuple[float, float] = (0.09, 0.14)  # object radius as a fraction of image_size
    two_objects_prob: float = 0.0  # share of clips with a second object
    speed_word_prob: float = 0.5  # share of captions that say "slowly" or "quickly"
    # "colour shape motion" combinations never shown in training, kept to measure generalisation.
    held_out: tuple[str, ...] = (
        "green triangle up",
        "red square left",
        "blue circle down",
        "yellow triangle right",
        "magenta square up",
    )
    num_train_clips: int = 20_000  # the length of an epoch; clips are rendered on demand
    num_val_clips: int = 500
    seed: int = 0
    num_workers: int = 2  # DataLoader worker processes


@dataclass
class VAEConfig:
    """The image autoencoder (vae.py): frames to 4-channel latents, downsample_factor smaller."""

    downsample_factor: Literal[4, 8] = 4
    latent_channels: int = 4
    base_channels: int = 16
    num_res_blocks: int = 1
    reconstruction_loss: Literal["l1", "mse"] = "mse"
    kl_weight: float = 1e-6
    # 1 / std of the latents, measured after the VAE is trained (None until then).
    scaling_factor: Optional[float] = None
    # VideoVAE stage: weight of the frame-difference term beside the reconstruction loss
    temporal_loss_weight: float = 1.0
    # VideoVAE stage: the decoder's temporal blocks. false: the control (not the paper's VideoVAE),
    # the image decoder fine-tuned on the same clips without them, to tell what they add
    temporal_blocks: bool = True


@dataclass
class TextConfig:
    """The small transformer text encoder (text.py), our stand-in for CLIP's text tower."""

    max_length: int = 24  # tokens, padding included: two-object captions reach ~20 words
    # the words the tokenizer knows; "" for the moving shapes' caption grammar. train.py fills it from
    # the training captions for real video (data.source ucf101 or folder), so config.json holds it
    vocabulary: tuple[str, ...] = ()
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4


@dataclass
class UNetConfig:
    """The latent U-Net (unet3d.py), in image mode and, inflated, in video mode."""

    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # resolution levels with spatial transformers
    num_heads: int = 4
    # video stage: "temporal" trains only what inflation adds (adaptors, temporal attention,
    # frame-rate embedding), as in the paper. "all": not in the paper; also fine-tunes the image
    # weights and the text encoder (as Make-A-Video, Singer et al. 2022, fine-tunes its spatial layers)
    video_trainable: Literal["temporal", "all"] = "temporal"
    # not in the paper (this project's): the temporal attention also cross-attends to the text
    # (TemporalAttention), so that the motion words reach the layers that mix frames directly
    temporal_text: bool = False


@dataclass
class DiffusionConfig:
    """Noise schedule, objective and sampler defaults (diffusion.py)."""

    schedule: Literal["linear", "scaled_linear", "cosine"] = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    text_drop_prob: float = 0.1  # classifier-free guidance: caption replaced by "" this often
    num_inference_steps: int = 25
    guidance_scale: float = 3.0
    # not in the paper: steps below this one are sampled without guidance, the conditional prediction
    # alone (guidance in a limited interval, Kynkaenniemi et al. 2024); 0: guidance at every step
    unguided_below: int = 0
    # video sampling: "joint" denoises all frames together, as the paper does. "frame_by_frame": not
    # in the paper; finishes frame 0, then frame 1 beside it, and so on, as the causal temporal
    # attention reads a clip (GaussianDiffusion.ddim_sample_frame_by_frame; autoregressive sampling as
    # in diffusion forcing, Chen et al. 2024), T times the U-Net calls
    video_sampling: Literal["frame_by_frame", "joint"] = "joint"
    # frame by frame, the finished frames beside frame k are shown "noised" to its step, as every
    # frame of a training clip is, or "clean": not in the paper; the video stage then trains with
    # clean leading frames (teacher forcing, as in diffusion forcing, Chen et al. 2024)
    past_frames: Literal["noised", "clean"] = "noised"
    # not in the paper: video steps below this one are denoised by the image stage's model, each frame
    # on its own, the steps from it up by the video model (two expert denoisers, eDiff-I, Balaji et
    # al. 2022). A video stage trained on t >= train.video_t_min only has never learned the lower
    # steps; by then the noisy frame already shows where the object is. 0: the video model throughout
    image_model_below: int = 0


@dataclass
class TrainConfig:
    """The shared training loop (training.py): one set of numbers per stage where they differ."""

    batch_size: int = 32  # frames for the vae and image stages
    video_batch_size: int = 8  # clips for the video and videovae stages
    learning_rate: float = 2e-4  # the image stage's U-Net
    video_learning_rate: float = 2e-4  # the video stage's new layers
    # the video stage with unet.video_trainable all: the reused image weights and the text encoder
    video_reused_learning_rate: float = 2e-4
    vae_learning_rate: float = 1e-3  # the autoencoder stages (vae, videovae)
    warmup_steps: int = 100  # the learning rate rises linearly from 0 over these steps
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    vae_steps: int = 2000
    image_steps: int = 6000
    video_steps: int = 6000
    videovae_steps: int = 2000
    # not in the paper (this project's): the video stage draws the diffusion step t from
    # video_t_min..T-1. The noisy frames show where the object goes at every lower t, so only the
    # noisiest steps teach the motion words (README); 0: every step, as in the paper
    video_t_min: int = 0
    # not in the paper (this project's, after diffusion forcing's teacher forcing): with
    # diffusion.past_frames clean, each clip beside its noisy twin, so that every frame is trained on
    # with its clean past at once (GaussianDiffusion.twin_training_loss; twice the frames a step)
    video_twin_clips: bool = False
    # not in the paper (this project's): frame 1's loss weighs this much, the other frames' 1. Beside
    # its clean past, frame k >= 2 sees which way the object goes; frame 1 learns it from the word alone
    video_frame1_weight: float = 1.0
    # the interp stage (MagicVideo's frame interpolation; unet3d, diffusion.interpolation_loss): clips
    # cut into windows of S+1 frames whose ends are keyframes, S from interp_strides (one S a step, in turn)
    interp_steps: int = 2000
    interp_strides: tuple[int, ...] = (2, 4)
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 500
    mixed_precision: bool = False  # bfloat16 autocast on CUDA
    compile: bool = False  # torch.compile the U-Net of the image, video and interp stages


@dataclass
class Config:
    """A whole run: the component sections plus where and how it runs."""

    preset: str = "cpu"
    name: str = "cpu"  # the run directory is runs/<name>
    runs_dir: str = "runs"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Rebuild a Config from `to_dict()` output; unknown keys and wrong types are errors."""
        return dataclass_from_dict(cls, _without_removed_options(values), where="config")

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


SECTIONS = ("data", "vae", "text", "unet", "diffusion", "train")

# Options that were measured worse than the presets' choices and left the code (their findings are in
# docs/experiments.md), each with the value that turned it off: an older run's config.json that
# holds one at that value still loads; one that used it cannot be rebuilt by this code.
REMOVED_OPTIONS = {"unet.temporal_only_levels": [], "diffusion.frame_noise_correlation": 0.0,
                   "train.video_t_min_share": 1.0}


def _without_removed_options(values: dict) -> dict:
    """`values` (a config as a nested dict) less the REMOVED_OPTIONS left at their off value."""
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in values.items()}
    for dotted, off in REMOVED_OPTIONS.items():
        section, key = dotted.split(".")
        if isinstance(values.get(section), dict) and key in values[section]:
            value = values[section].pop(key)
            if (list(value) if isinstance(value, tuple) else value) != off:
                raise ValueError(f"config: {dotted} is {value!r}, an option this version no longer has (it "
                                 f"was measured worse, docs/experiments.md); this run cannot be rebuilt here: "
                                 f"start a new run with --name NEW")
    return values


def fields_of(config: Config):
    """(dotted name, type, value) for every field of the config, sections flattened."""
    hints = typing.get_type_hints(Config)
    for top in dataclasses.fields(Config):
        value = getattr(config, top.name)
        if top.name in SECTIONS:
            section_hints = typing.get_type_hints(type(value))
            for sub in dataclasses.fields(value):
                yield f"{top.name}.{sub.name}", section_hints[sub.name], getattr(value, sub.name)
        else:
            yield top.name, hints[top.name], value


def coerce(value, value_type, where: str | None, from_text: bool = False):
    """Turn `value` into `value_type`, or raise.

    from_text: `value` is command-line text, so "8" may become 8 and "red,blue" a tuple; a JSON
    value must already have the right type (lists become tuples).
    """
    origin, args = typing.get_origin(value_type), typing.get_args(value_type)
    problem = None
    if origin is typing.Union:
        if value is None or (from_text and value.lower() == "none"):
            return None
        return coerce(value, args[0], where, from_text)
    if origin is Literal:
        for choice in args:
            if value == choice or (from_text and value == str(choice)):
                return choice
        problem = f"expected one of {', '.join(map(str, args))}"
    elif origin is tuple:
        items = (value.split(",") if value else []) if from_text else value
        if not isinstance(items, (list, tuple)):
            problem = "expected a list"
        else:
            item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
            if len(item_types) != len(items):
                problem = f"expected {len(item_types)} values, got {len(items)}"
            else:
                return tuple(coerce(item, t, where, from_text) for item, t in zip(items, item_types))
    elif value_type is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        problem = "expected true or false"
    elif value_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_text and value.strip().lstrip("-").replace("_", "").isdigit():
            return int(value)
        problem = "expected an integer"
    elif value_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problem = "expected a number"
        if from_text:
            try:
                return float(value)
            except ValueError:
                pass
    elif value_type is str:
        if isinstance(value, str):
            return value
        problem = "expected a string"
    else:
        raise TypeError(f"config fields of type {value_type} are not supported")
    message = f"{problem}, got {value!r}"
    # argparse turns a ValueError into "invalid <type> value: ..." naming the option itself.
    raise ValueError(message if where is None else f"{where}: {message}")


def dataclass_from_dict(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
    instance = cls()
    for key, value in values.items():
        value_type = hints[key]
        if dataclasses.is_dataclass(value_type):
            value = dataclass_from_dict(value_type, value, f"{where}.{key}")
        else:
            value = coerce(value, value_type, f"{where}.{key}")
        setattr(instance, key, value)
    return instance

