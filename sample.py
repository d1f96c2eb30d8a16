"""Generate a clip from a prompt: python sample.py --prompt "a red circle moving left" [--out clip.gif]

Reads a run directory made by train.py (default: the one plain `python train.py` writes on this
machine), samples with DDIM and classifier-free guidance, and writes the clip as a GIF or MP4 (by
the extension of --out) plus a PNG strip of its frames beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

from tiny_magicvideo.media import save_strip, save_video
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.presets import get_preset


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    default_run = Path("runs") / get_preset("auto").name
    parser.add_argument("--run", default=str(default_run), help=f"run directory (default: {default_run})")
    parser.add_argument("--prompt", required=True, help='e.g. "a blue square moving up"')
    parser.add_argument("--out", default="sample.gif", help="output file, .gif or .mp4 (default: sample.gif)")
    parser.add_argument("--num_frames", type=int, default=None, help="default: the run's data.num_frames")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate to condition on: lower means more motion per frame "
                             "(default: the highest it trained on, data.fps / the smallest data.frame_strides)")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="DDIM steps (default: the run's)")
    parser.add_argument("--guidance_scale", type=float, default=None, help="default: the run's")
    parser.add_argument("--unguided_below", type=int, default=None,
                        help="no guidance below this step (default: the run's diffusion.unguided_below)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    parser.add_argument("--sampling", choices=("frame_by_frame", "joint"), default=None,
                        help="frame_by_frame: each frame after the finished ones; joint: all frames at "
                             "once, faster (default: the run's diffusion.video_sampling)")
    parser.add_argument("--image_model_below", type=int, default=None,
                        help="steps below this one are the image stage's model's, each frame on its own; "
                             "0: the video model throughout (default: the run's diffusion.image_model_below)")
    parser.add_argument("--interpolate", type=int, default=None, metavar="S",
                        help="make the keyframes at 1/S of the frame rate, then fill S-1 frames between each "
                             "pair with the run's interp model: (num_frames - 1) S + 1 frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder", choices=("video", "image"), default=None,
                        help="video: the VideoVAE's temporal decoder, image: the image VAE frame by "
                             "frame (default: video where the run has a VideoVAE)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        parser.error(f"--out {args.out!r}: use a file name ending in .gif or .mp4")
    try:
        check_writable(out)  # before sampling, not after it
        pipeline = TextToVideo.from_run(args.run, device=args.device, stage="video", decoder=args.decoder,
                                        interpolation=args.interpolate is not None)
        result = pipeline(args.prompt, num_frames=args.num_frames, num_inference_steps=args.num_inference_steps,
                          guidance_scale=args.guidance_scale, fps=args.fps, seed=args.seed, eta=args.eta,
                          sampling=args.sampling, image_model_below=args.image_model_below,
                          unguided_below=args.unguided_below, progress=True, interpolate=args.interpolate)
        frames = result.frames[0]  # (T, H, W, 3)
        save_video(frames, out, fps=result.fps)
        strip = save_strip(frames, out.with_suffix(".png"))
    except (OSError, ValueError) as error:  # FileNotFoundError is an OSError
        sys.exit(f"error: {error}")
    print(f"{out} ({len(frames)} frames at {result.fps:g} fps) and {strip}")
    return out


def check_writable(out: Path) -> None:
    """Make --out's folder and try a file in it: a ValueError that names the path if either fails."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name such as {out / 'clip.gif'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise ValueError(f"cannot write --out {out} ({error.strerror}); choose a folder you can write to") from None


if __name__ == "__main__":
    warnings.formatwarning = lambda message, *details: f"warning: {message}\n"  # one line, no source
    main()
