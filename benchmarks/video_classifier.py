"""Judge generated clips with a video classifier trained here, from scratch: no downloaded network.

    python benchmarks/video_classifier.py --run runs/cpu [--training_steps 800] [--clips 100] [--retrain]
        [--seeds reporting|tuning] [--device cpu|auto|cuda|mps]

1. A small 3D convolutional classifier (VideoClassifier) learns the run's own training data: real
   clips, labelled with what the data knows of them. For UCF-101 that is the class; for the moving
   shapes, the colour, the shape and the direction (one head each); a folder of captioned videos has
   no labels, so no classifier. Saved in the run as classifier.pt, with the features of --real_clips
   validation clips; a later call loads it (--retrain trains it anew). Its accuracy on validation
   clips comes first: a judge is worth what it reads in real clips.
2. --clips clips sampled from the run's text-to-video model (sample.py's settings), the prompts
   cycling through the labels, and
   (a) how often the classifier reads the prompted label, with its 95% interval and count;
   (b) the Frechet distance between the real validation clips and the generated ones in the
       classifier's penultimate features (metrics.frechet_distance). This project's own measure,
       "FD-classifier": a 64-number feature of a classifier trained here on this data, so it is NOT
       comparable with published FVD (an I3D network trained on Kinetics, at 224x224).
3. On the moving shapes, the check that makes (a) and (b) worth reading where no detector exists:
   how often the classifier and the attribute detector (metrics.detect, no learned weights) agree on
   the generated clips, for each attribute the detector could read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tiny_magicvideo.config import DataConfig
from tiny_magicvideo.data import frames_to_video, make_loader, split_combinations
from tiny_magicvideo.distributed import resolve_device
from tiny_magicvideo.metrics import detect, frechet_distance, sampling_seed, share_with_interval
from tiny_magicvideo.pipeline import TextToVideo
from tiny_magicvideo.runs import load_checkpoint, load_state_dict, save_atomically
from tiny_magicvideo.shapes import plain_caption
from tiny_magicvideo.videos import CachedVideos, class_words

CLASSIFIER_FILE = "classifier.pt"


class VideoClassifier(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> features (B, 4 width) -> {head: logits (B, classes)}.

    Four 3x3x3 convolutions, each followed by GroupNorm and SiLU: the first at full resolution (the
    shapes are a few pixels across), the next three halving time, height and width (a stride on a
    length-1 axis leaves it 1); then the maximum over time and space is the feature vector (a small
    object's response is not averaged away with the background's), and one
    linear layer per head reads it."""

    def __init__(self, heads: dict[str, int], width: int = 16):
        super().__init__()
        channels = (3, width, 2 * width, 4 * width, 4 * width)
        layers = []
        for index, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            stride = (1, 1, 1) if index == 0 else (2, 2, 2)
            layers += [nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(channels[-1], count) for name, count in heads.items()})

    def features(self, video: torch.Tensor) -> torch.Tensor:
        return self.body(video).amax(dim=(2, 3, 4))  # (B, C, T', H', W') -> (B, C)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(video)
        return {name: head(features) for name, head in self.heads.items()}


def label_sets(data: DataConfig) -> dict[str, list[str]]:
    """{head: its labels}: the moving shapes' colours, shapes and directions, or UCF-101's classes."""
    if data.source == "shapes":
        return {"colour": list(data.colours), "shape": list(data.shapes), "direction": list(data.motions)}
    if data.source == "ucf101":
        return {"class": sorted({video["label"] for video in CachedVideos(data).videos_of("train")})}
    raise ValueError(f"data.source {data.source}: the videos have captions but no labels to train a classifier "
                     f"on; the classifier needs the moving shapes or UCF-101")


def clip_labels(data: DataConfig, attributes: dict) -> dict[str, str]:
    """What a clip shows, from its attributes: {head: label}."""
    if data.source == "shapes":
        obj = attributes["objects"][0]
        return {"colour": obj["colour"], "shape": obj["shape"], "direction": obj["direction"]}
    return {"class": attributes["label"]}


def prompts_and_labels(data: DataConfig, count: int) -> list[tuple[str, dict[str, str]]]:
    """`count` prompts cycling through what the model trained on, each with the labels it asks for."""
    if data.source == "shapes":
        combos = split_combinations(data, "val")  # the trained combinations
        combos = [combos[i] for i in np.random.default_rng(0).permutation(len(combos))]
        return [(plain_caption(*combo), dict(zip(("colour", "shape", "direction"), combo)))
                for combo in (combos[i % len(combos)] for i in range(count))]
    classes = label_sets(data)["class"]
    return [(class_words(name), {"class": name}) for name in (classes[i % len(classes)] for i in range(count))]


def targets(data: DataConfig, labels: dict[str, list[str]], attributes: list[dict]) -> dict[str, torch.Tensor]:
    truths = [clip_labels(data, a) for a in attributes]
    return {head: torch.tensor([names.index(t[head]) for t in truths]) for head, names in labels.items()}


def train_classifier(data: DataConfig, steps: int, device: torch.device) -> tuple[VideoClassifier, dict]:
    """AdamW on the summed cross-entropy of the heads, batches of 32 training clips; returns the
    classifier and its validation accuracy per head on 256 clips."""
    labels = label_sets(data)
    torch.manual_seed(0)
    model = VideoClassifier({head: len(names) for head, names in labels.items()}).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    start = time.perf_counter()
    for step, batch in enumerate(make_loader(data, "train", 32, num_steps=steps)):
        wanted = targets(data, labels, batch["attributes"])
        logits = model(batch["video"].to(device))
        loss = sum(F.cross_entropy(logits[head], wanted[head].to(device)) for head in labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"classifier step {step + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    right, count = dict.fromkeys(labels, 0), 0
    with torch.no_grad():
        for batch in make_loader(data, "val", 64, num_clips=256):
            wanted = targets(data, labels, batch["attributes"])
            logits = model(batch["video"].to(device))
            for head in labels:
                right[head] += (logits[head].argmax(1).cpu() == wanted[head]).sum().item()
            count += len(batch["video"])
    return model, {head: (right[head], count) for head in labels}


def real_features(model: VideoClassifier, data: DataConfig, count: int, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.features(batch["video"].to(device)).cpu()
                          for batch in make_loader(data, "val", 64, num_clips=count)])


def load_or_train(run_dir: Path, data: DataConfig, steps: int, real_clips: int, retrain: bool,
                  device: torch.device) -> tuple[VideoClassifier, torch.Tensor]:
    """The run's classifier and the features of its real validation clips, trained and saved first
    where the run has none (or --retrain)."""
    path, labels = run_dir / CLASSIFIER_FILE, label_sets(data)
    model = VideoClassifier({head: len(names) for head, names in labels.items()}).to(device)
    if path.is_file() and not retrain:
        state = load_checkpoint(path, ("model", "real_features"))
        load_state_dict(model, state["model"], path)
        print(f"{path}: loaded (python benchmarks/video_classifier.py --run {run_dir} --retrain trains it anew)")
        return model.eval(), state["real_features"]
    model, accuracy = train_classifier(data, steps, device)
    for head, (right, count) in accuracy.items():
        print(f"classifier on real validation clips, {head}: {share_with_interval(right, count)}")
    features = real_features(model, data, real_clips, device)
    save_atomically({"model": model.state_dict(), "real_features": features, "steps": torch.tensor(steps)}, path)
    print(f"saved {path}")
    return model, features


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run directory with a video stage, e.g. runs/cpu")
    parser.add_argument("--training_steps", type=int, default=800,
                        help="the classifier's training steps (batches of 32)")
    parser.add_argument("--real_clips", type=int, default=512, help="real validation clips for the distance")
    parser.add_argument("--clips", type=int, default=100, help="generated clips to judge")
    parser.add_argument("--retrain", action="store_true", help="train the classifier anew")
    parser.add_argument("--seeds", choices=("reporting", "tuning"), default="reporting",
                        help="the sampling seed range (metrics.sampling_seed)")
    parser.add_argument("--device", default="cpu", help="cpu (the default), auto, cuda or mps")
    args = parser.parse_args(argv)
    try:
        pipeline = TextToVideo.from_run(args.run, device=args.device, stage="video")
        device, data = resolve_device(args.device), pipeline.config.data
        model, real = load_or_train(Path(args.run), data, args.training_steps, args.real_clips, args.retrain, device)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    labels = label_sets(data)

    requests = prompts_and_labels(data, args.clips)
    generated, readings, detections, start = [], [], [], time.perf_counter()
    for first in range(0, args.clips, 20):
        chunk = requests[first:first + 20]
        frames = pipeline([prompt for prompt, _ in chunk], seed=sampling_seed(first, args.seeds == "reporting")).frames
        with torch.no_grad():
            video = frames_to_video(frames).to(device)  # (B, T, H, W, 3) uint8 -> (B, 3, T, H, W)
            generated.append(model.features(video).cpu())
            logits = model(video)
        readings += [{head: labels[head][logits[head][i].argmax().item()] for head in labels} for i in range(len(chunk))]
        if data.source == "shapes":
            detections += [detect(clip) for clip in frames]
    print(f"{args.clips} generated clips in {time.perf_counter() - start:.0f} s ({args.seeds} seeds)")

    print("\n| the classifier reads the prompted | share of generated clips |\n|---|---|")
    for head in labels:
        right = sum(reading[head] == wanted[head] for reading, (_, wanted) in zip(readings, requests))
        print(f"| {head} | {share_with_interval(right, args.clips)} |")
    if len(labels) > 1:
        right = sum(reading == wanted for reading, (_, wanted) in zip(readings, requests))
        print(f"| all {len(labels)} | {share_with_interval(right, args.clips)} |")
    distance = frechet_distance(real, torch.cat(generated))
    print(f"\nFD-classifier (this project's own measure, not FVD): {distance:.3f} between {len(real)} real "
          f"validation clips and {args.clips} generated clips")
    if detections:  # the moving shapes: does the classifier read generated clips as the detector does?
        print("\n| the classifier agrees with the detector on | share of clips the detector could read |\n|---|---|")
        for head in labels:
            pairs = [(reading[head], getattr(d, head)) for reading, d in zip(readings, detections)
                     if getattr(d, head) != "unknown"]
            agreed = sum(mine == its for mine, its in pairs)
            print(f"| {head} | {share_with_interval(agreed, len(pairs)) if pairs else 'none readable'} |")


if __name__ == "__main__":
    main()
