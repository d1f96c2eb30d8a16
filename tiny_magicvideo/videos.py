"""Real video as training data: a UCF-101 tree or any folder of videos, decoded once and cached.

    python train.py --data.source ucf101 --data.root ~/data/UCF-101 --data.classes ApplyEyeMakeup,Basketball
    python train.py --data.source folder --data.root ~/videos   # captions.csv, captions.jsonl or <video>.txt

Where the videos and their captions come from (find_videos):
- ucf101: `<root>/<ClassName>/v_<ClassName>_gXX_cYY.avi`, the official layout, or
  `<root>/{train,val,test}/<ClassName>/...`, a common subset layout. The split: the official split
  files `ucfTrainTestlist/trainlist01.txt` and `testlist01.txt` where the root holds them; else the
  subset's own folders (val, or test where there is no val); else by group. A group gXX is one
  person's clips, filmed together: the official split 1 keeps groups 1-7 for testing, and so do we,
  so that no group is in both splits. A caption is the class name split at its capitals
  ("ApplyEyeMakeup" -> "apply eye makeup") in one of CAPTION_TEMPLATES, drawn per clip.
- folder: every video under the root (VIDEO_EXTENSIONS), its caption from `captions.csv` (rows
  `file,caption`) or `captions.jsonl` (`{"file": ..., "caption": ...}`) at the root, or from a `.txt`
  beside it with the same stem. One video in 20 (at least one) is kept for validation, chosen by a
  hash of its path, so that adding videos does not move the others between splits.

Decoding (read_video_file): imageio-ffmpeg, already a dependency (it writes the MP4s), runs its bundled
ffmpeg binary, which reads every container and codec ffmpeg knows (mp4, avi, webm, mov, gif, ...).
ffmpeg itself scales the shorter side to data.image_size with its area filter (an antialiased
average, as a downscale needs) and crops the centre square, so Python only sees the small frames.
PyAV would add a wheel; its strength, seeking to a frame, is not needed when each video is decoded
once.

The cache (build_cache): `<data.cache_dir>/<key>/frames.u8`, every kept video's frames as one uint8
array (N, S, S, 3) read through a numpy memmap, and `index.json` (per video: file, label, caption,
split, first frame, frame count, frame rate). The key hashes every setting that changes them: the
source, the root, image_size, the classes and each file's path, size and modification time; a second
run reuses the cache, a changed setting builds another. Both files are written under temporary names
and renamed, the index last: a build that was interrupted is redone, never half read.

Clips (CachedVideos.clip): clip i of a split is data.num_frames frames, every s-th for a stride s of
data.frame_strides, from a video and a start drawn from (seed, split, i): like the moving shapes, a
pure function of the index. Its frame rate, passed on to the frame-rate conditioning, is the video's
own divided by s. A video shorter than a clip at the largest stride is skipped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from tqdm import tqdm

from .config import DataConfig
from .runs import atomic_file, write_text_atomically

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".gif")
VIDEO_SPLITS = {"train": 0, "val": 1}  # real video has no held-out combinations
CAPTION_TEMPLATES = ("{}", "a video of {}", "a clip of {}", "someone filmed {}", "footage of {}")
UCF_GROUP = re.compile(r"_g(\d+)_c\d+", re.IGNORECASE)
UCF_TEST_GROUPS = range(1, 8)  # the official split 1 tests on groups 1-7
CACHE_VERSION = 1  # part of the key: raise it when the cached arrays change meaning

LAYOUTS = {
    "ucf101": "<root>/<ClassName>/v_<ClassName>_gXX_cYY.avi (optionally <root>/ucfTrainTestlist/"
              "trainlist01.txt and testlist01.txt), or <root>/{train,val,test}/<ClassName>/<video>",
    "folder": "<root>/**/<video>.mp4|avi|webm|mov|mkv|gif with captions in <root>/captions.csv (file,caption), "
              "<root>/captions.jsonl ({\"file\": ..., \"caption\": ...}) or a <video>.txt beside each video",
}


@dataclass
class SourceVideo:
    """One source video: its path relative to the root, what it shows, which split it is in."""

    file: str  # relative to data.root, with forward slashes
    label: str  # ucf101: the class name; folder: the caption
    caption: str  # ucf101: the class name in words ("apply eye makeup"); folder: the caption
    split: str  # "train" or "val"


def class_words(name: str) -> str:
    """A UCF class name in words: "ApplyEyeMakeup" -> "apply eye makeup", "YoYo" -> "yo yo"."""
    return " ".join(re.findall(r"[A-Z]+[a-z]*|[a-z]+|\d+", name)).lower()


# ---------------------------------------------------------------------------------------------
# Finding the videos.


def _videos_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _no_videos(config: DataConfig, why: str) -> ValueError:
    return ValueError(f"data.root {config.root!r}: {why}. data.source {config.source} expects "
                      f"{LAYOUTS[config.source]}")


def find_videos(config: DataConfig) -> list[SourceVideo]:
    """Every video of data.root that data.source and data.classes select, with caption and split."""
    root = Path(config.root).expanduser()
    if not config.root or not root.is_dir():
        raise _no_videos(config, "is not a directory" if config.root else "is not set (--data.root PATH)")
    videos = _ucf101_videos(config, root) if config.source == "ucf101" else _folder_videos(root)
    if not videos:
        raise _no_videos(config, "holds no videos")
    for split in VIDEO_SPLITS:
        if not any(video.split == split for video in videos):
            raise _no_videos(config, f"leaves no video for the {split} split ({len(videos)} videos found)")
    return videos


def _ucf101_videos(config: DataConfig, root: Path) -> list[SourceVideo]:
    subset = [name for name in ("train", "val", "test") if (root / name).is_dir()]
    if "train" in subset:  # <root>/{train,val,test}/<ClassName>/<video>
        held = "val" if "val" in subset else "test" if "test" in subset else None
        folders = [("train", root / "train")] + ([("val", root / held)] if held else [])
        found = [(split, path, path.relative_to(folder).parts[0]) for split, folder in folders
                 for path in _videos_under(folder) if len(path.relative_to(folder).parts) == 2]
    else:  # <root>/<ClassName>/<video>
        found = [(None, path, path.parent.name) for path in _videos_under(root)
                 if len(path.relative_to(root).parts) == 2]
    classes = sorted({label for _, _, label in found})
    unknown = [name for name in config.classes if name not in classes]
    if unknown:
        raise ValueError(f"data.classes: {', '.join(unknown)} not found under {root}; its classes are "
                         f"{', '.join(classes) or 'none'}")
    wanted = set(config.classes or classes)
    found = [(split, path, label) for split, path, label in found if label in wanted]
    test_files = _official_test_files(root)
    videos = []
    for split, path, label in found:
        if split is None:
            if test_files is not None:
                split = "val" if path.name in test_files else "train"
            else:
                group = UCF_GROUP.search(path.stem)
                split = "val" if group and int(group.group(1)) in UCF_TEST_GROUPS else "train"
        videos.append(SourceVideo(_relative(path, root), label, class_words(label), split))
    return videos


def _official_test_files(root: Path) -> set[str] | None:
    """The file names testlist01.txt lists ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"), or None
    where the root holds no official split files."""
    split_dir = root / "ucfTrainTestlist"
    if not (split_dir / "testlist01.txt").is_file():
        return None
    lines = (split_dir / "testlist01.txt").read_text().split("\n")
    return {Path(line.split()[0]).name for line in lines if line.strip()}


def _folder_videos(root: Path) -> list[SourceVideo]:
    captions = _caption_table(root)
    videos, uncaptioned = [], []
    for path in _videos_under(root):
        file = _relative(path, root)
        caption = captions.get(file)
        if caption is None and path.with_suffix(".txt").is_file():
            caption = path.with_suffix(".txt").read_text().strip()
        if not caption:
            uncaptioned.append(file)
            continue
        videos.append(SourceVideo(file, caption, caption, "train"))
    if uncaptioned:
        warnings.warn(f"{len(uncaptioned)} videos under {root} have no caption and are skipped, e.g. "
                      f"{uncaptioned[0]}; give each a row in captions.csv or captions.jsonl, or a .txt beside it")
    # one in 20 for validation, at least one, picked by a hash of the path
    ranked = sorted(videos, key=lambda video: zlib.crc32(video.file.encode()))
    for video in ranked[:max(1, len(videos) // 20)] if len(videos) > 1 else []:
        video.split = "val"
    return videos


def _caption_table(root: Path) -> dict[str, str]:
    """{file relative to the root: caption} from captions.csv or captions.jsonl; {} if neither."""
    table = {}
    if (root / "captions.csv").is_file():
        with (root / "captions.csv").open(newline="") as file:
            for row in csv.reader(file):
                if len(row) >= 2 and row[:2] != ["file", "caption"]:
                    table[row[0].strip()] = row[1].strip()
    if (root / "captions.jsonl").is_file():
        for number, line in enumerate((root / "captions.jsonl").read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    table[str(row["file"])] = str(row["caption"]).strip()
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{root / 'captions.jsonl'} line {number} is not "
                                     f"{{\"file\": ..., \"caption\": ...}}: {line[:80]!r}") from None
    return table


# ---------------------------------------------------------------------------------------------
# Decoding and the cache.


def read_video_file(path: Path, image_size: int) -> tuple[np.ndarray, float]:
    """(frames uint8 (T, S, S, 3), frames per second) with S = image_size: the shorter side scaled to S
    by ffmpeg's area filter, the centre square cropped. Raises RuntimeError for an unreadable file."""
    size = image_size
    crop = f"scale={size}:{size}:force_original_aspect_ratio=increase:flags=area,crop={size}:{size}"
    log = logging.getLogger("imageio_ffmpeg")
    level = log.level
    log.setLevel(logging.ERROR)  # not its warning that the frames' size differs from the source's: we asked
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", crop])
        meta = next(reader)
        frames = [np.frombuffer(frame, np.uint8) for frame in reader]
    except (OSError, RuntimeError, ValueError, StopIteration) as error:
        raise RuntimeError(f"{path}: ffmpeg could not read it ({str(error).splitlines()[0][:200]})") from None
    finally:
        log.setLevel(level)
    if not frames:
        raise RuntimeError(f"{path}: no frames decoded")
    return np.stack(frames).reshape(len(frames), size, size, 3), float(meta.get("fps") or 0.0)


def cache_key(config: DataConfig, videos: list[SourceVideo]) -> str:
    """A hash of everything that changes the cached arrays and index."""
    root = Path(config.root).expanduser().resolve()
    files = [(video.file, (root / video.file).stat().st_size, (root / video.file).stat().st_mtime_ns)
             for video in videos]
    described = json.dumps({"version": CACHE_VERSION, "source": config.source, "root": str(root),
                            "image_size": config.image_size, "classes": list(config.classes),
                            "videos": [asdict(video) for video in videos], "files": files}, sort_keys=True)
    return f"{config.source}-{config.image_size}px-{hashlib.sha256(described.encode()).hexdigest()[:16]}"


def build_cache(config: DataConfig) -> Path:
    """The cache directory of data.root at data.image_size, built first if it is not there. A video
    ffmpeg cannot read is skipped with one warning naming it, and counted."""
    videos = find_videos(config)
    directory = Path(config.cache_dir).expanduser() / cache_key(config, videos)
    if (directory / "index.json").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    root, entries, skipped, first = Path(config.root).expanduser(), [], [], 0
    with atomic_file(directory / "frames.u8") as out:
        for video in tqdm(videos, desc=f"decoding {len(videos)} videos into {directory}", dynamic_ncols=True):
            try:
                frames, fps = read_video_file(root / video.file, config.image_size)
            except RuntimeError as error:
                warnings.warn(f"skipping an unreadable video: {error}")
                skipped.append(video.file)
                continue
            if fps <= 0:
                warnings.warn(f"{video.file}: no frame rate in the file; taking data.fps {config.fps:g}")
                fps = config.fps
            out.write(frames.tobytes())
            entries.append({**asdict(video), "first": first, "num_frames": len(frames), "fps": fps})
            first += len(frames)
        if not entries:  # raised inside the block: no frames.u8 is left behind
            raise _no_videos(config, f"none of its {len(videos)} videos could be read")
    index = {"image_size": config.image_size, "num_frames": first, "videos": entries, "unreadable": skipped}
    write_text_atomically(directory / "index.json", json.dumps(index, indent=1))  # last: the cache is complete
    if skipped:
        warnings.warn(f"{len(skipped)} of {len(videos)} videos could not be read and were skipped")
    return directory


# ---------------------------------------------------------------------------------------------
# Clips.


class CachedVideos:
    """The cached videos of data.root, cut into clips: clip(split, index) is what
    data.sample_clip is for the moving shapes."""

    def __init__(self, config: DataConfig):
        self.config = config
        self.directory = build_cache(config)
        index = json.loads((self.directory / "index.json").read_text())
        self.total_frames, self._frames = index["num_frames"], None  # the memmap, opened per process
        span = (config.num_frames - 1) * max(config.frame_strides) + 1  # source frames a clip spans at most
        self.videos = {split: [v for v in index["videos"] if v["split"] == split and v["num_frames"] >= span]
                       for split in VIDEO_SPLITS}
        short = sum(v["num_frames"] < span for v in index["videos"])
        if short:
            warnings.warn(f"{short} of {len(index['videos'])} videos are shorter than a clip ({span} frames: "
                          f"data.num_frames {config.num_frames} at stride {max(config.frame_strides)}) "
                          f"and are skipped")
        for split, videos in self.videos.items():
            if not videos:
                raise _no_videos(config, f"leaves no video of at least {span} frames for the {split} split; "
                                         f"lower data.num_frames or data.frame_strides")

    def frames(self) -> np.memmap:
        if self._frames is None:
            size = self.config.image_size
            self._frames = np.memmap(self.directory / "frames.u8", np.uint8, "r",
                                     shape=(self.total_frames, size, size, 3))
        return self._frames

    def __getstate__(self) -> dict:  # DataLoader workers open their own memmap
        return {**self.__dict__, "_frames": None}

    def captions(self, split: str = "train") -> list[str]:
        """Every caption the split's clips can carry (each template for UCF's classes)."""
        captions = {video["caption"] for video in self.videos_of(split)}
        templates = CAPTION_TEMPLATES if self.config.source == "ucf101" else ("{}",)
        return sorted({template.format(caption) for caption in captions for template in templates})

    def videos_of(self, split: str) -> list[dict]:
        """The index entries of the split's videos long enough for a clip."""
        if split not in VIDEO_SPLITS:
            raise ValueError(f"unknown split {split!r} for data.source {self.config.source}; choose one of "
                             f"{', '.join(VIDEO_SPLITS)} (held-out combinations exist only for the moving shapes)")
        return self.videos[split]

    def clip(self, split: str, index: int) -> tuple[np.ndarray, str, dict]:
        """(frames uint8 (T, S, S, 3), caption, attributes) of clip `index` of `split`."""
        config, videos = self.config, self.videos_of(split)
        rng = np.random.default_rng([config.seed, VIDEO_SPLITS[split], index])
        video = videos[rng.integers(len(videos))]
        strides = config.frame_strides
        stride = int(strides[rng.integers(len(strides))])
        span = (config.num_frames - 1) * stride + 1
        start = int(rng.integers(video["num_frames"] - span + 1))
        first = video["first"] + start
        frames = np.array(self.frames()[first:first + span:stride])  # (T, S, S, 3), a copy off the memmap
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))] if config.source == "ucf101" else "{}"
        fps = video["fps"] / stride
        return frames, template.format(video["caption"]), {"file": video["file"], "label": video["label"],
                                                           "start": start, "stride": stride, "fps": fps}
