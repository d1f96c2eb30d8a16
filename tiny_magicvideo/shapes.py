"""The moving shapes' world: what can be drawn, and the words the captions use for it.

The tables that the renderer (data.py), the config's checks (config.py), the detector (metrics.py)
and the text encoder's vocabulary (models.py) all read, kept here so that each of them imports the
same names and none of them imports the others.
"""

from __future__ import annotations

import math


COLOURS = {  # name -> RGB, all fully saturated or white so the detector can tell them apart
    "red": (230, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (235, 225, 30),
    "green": (30, 200, 40),
    "cyan": (30, 215, 225),
    "blue": (40, 70, 240),
    "magenta": (225, 40, 220),
    "white": (240, 240, 240),
}
BACKGROUND = (18, 18, 24)  # a plain, dark, slightly blue grey

# Unit direction vectors in image coordinates: x grows to the right, y grows downwards.
MOTIONS = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
    "static": (0.0, 0.0),
}

# Each shape's farthest point from its centre, in units of the object's radius r: the margin
# that keeps it whole inside the frame.
SHAPE_EXTENT = {"circle": 1.0, "square": 1.1, "triangle": 1.2, "diamond": 1.2, "star": 1.3}
SHAPES = tuple(SHAPE_EXTENT)

SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
}
MOTION_VERBS = ("moving", "sliding", "going", "drifting", "gliding", "travelling")
DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "to the top"),
    "down": ("down", "downwards", "to the bottom"),
    "up-left": ("up and to the left", "to the top left"),
    "up-right": ("up and to the right", "to the top right"),
    "down-left": ("down and to the left", "to the bottom left"),
    "down-right": ("down and to the right", "to the bottom right"),
}
STATIC_PHRASES = ("standing still", "staying in place", "resting")
SPEED_WORDS = {"slow": ("slowly",), "fast": ("quickly", "fast")}
ARTICLES = ("a", "one", "")

MIN_RADIUS_PIXELS = 3.0  # smaller objects are a handful of pixels: no shape left to see


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted: the text encoder's vocabulary (text.py)."""
    phrases = [*COLOURS, *ARTICLES, *MOTION_VERBS, *STATIC_PHRASES, "and"]
    for table in (SHAPE_WORDS, DIRECTION_WORDS, SPEED_WORDS):
        phrases += [phrase for options in table.values() for phrase in options]
    return sorted({word for phrase in phrases for word in phrase.split()})


def plain_caption(colour: str, shape: str, motion: str) -> str:
    """The grammar's first choice at every word, as benchmarks and samples ask:
    ("red", "circle", "left") -> "a red circle moving left"; a static motion -> "... standing still"."""
    action = STATIC_PHRASES[0] if motion == "static" else f"{MOTION_VERBS[0]} {DIRECTION_WORDS[motion][0]}"
    return f"{ARTICLES[0]} {colour} {shape} {action}"


def parse_combination(text: str) -> tuple[str, str, str]:
    """"red square left" -> ("red", "square", "left"); text that is not three words -> ("", "", "")."""
    words = text.split()
    return (words[0], words[1], words[2]) if len(words) == 3 else ("", "", "")
