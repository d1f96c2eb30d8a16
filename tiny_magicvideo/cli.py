"""The command line: one `--section.key value` option per config field, typed from the dataclasses.

    python train.py --preset cpu --data.num_frames 8 --train.batch_size 16

`python train.py --help` lists every option with its type and the chosen preset's default.
Sequences are written with commas: `--data.colours red,green,blue`; "" is the empty sequence.
"""

from __future__ import annotations

import argparse
import difflib
import typing
from typing import Literal

from .checks import check_config, check_run_name
from .config import Config, coerce, dataclass_from_dict, fields_of
from .presets import PRESETS, get_preset



def build_parser(defaults: Config, description: str = "") -> argparse.ArgumentParser:
    """A parser whose options are the fields of `defaults`, each defaulting to its value there."""
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--preset", default="auto", choices=list(PRESETS),
                        help="the base configuration that the options below override (default: auto = "
                             "cpu, the measured preset; paper = MagicVideo as published). An existing run "
                             "keeps its own: python train.py --name NAME continues it")
    for name, value_type, default in fields_of(defaults):
        if name == "preset":
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(f"--{name}", dest=name, default=default, metavar=_type_name(value_type),
                            type=_converter(value_type), help=f"(default: {shown})")
    return parser


def parse_config(argv: list[str] | None = None, description: str = "",
                 extra_arguments: typing.Callable[[argparse.ArgumentParser], None] | None = None,
                 existing_run: typing.Callable[[str], Config | None] | None = None,
                 ) -> tuple[Config, argparse.Namespace]:
    """Parse `--preset P --section.key value ...` into a checked Config (plus the namespace for extras).

    `extra_arguments(parser)` may add options that are not config fields (train.py's --stage).
    `existing_run(run_dir)` returns the config of the run in <runs_dir>/<name>, or None where there
    is none yet: an existing run's own settings are then the defaults, so that continuing it needs
    no preset or option repeated (train.py). An unknown option is an error that names it and
    suggests the nearest real one; a bad value is a ValueError that names it (check_config).
    """
    early_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for option in ("--preset", "--name", "--runs_dir"):
        early_parser.add_argument(option)
    early = early_parser.parse_known_args(argv)[0]
    try:
        defaults = get_preset(early.preset or "auto")
    except ValueError as error:
        early_parser.error(str(error))
    if existing_run is not None:
        name = defaults.name if early.name is None else early.name
        runs_dir = defaults.runs_dir if early.runs_dir is None else early.runs_dir
        check_run_name(name, runs_dir)
        saved = existing_run(f"{runs_dir}/{name}")
        if saved is not None:
            if early.preset is not None and defaults.preset != saved.preset:
                raise ValueError(f"run {name!r} was made with preset {saved.preset!r}, not {early.preset!r}: "
                                 f"drop --preset to continue it with its own settings, or start a new run "
                                 f"with --name NEW")
            saved.name, saved.runs_dir = name, runs_dir  # where it is now, should it have been moved
            defaults = saved
    parser = build_parser(defaults, description)
    if extra_arguments is not None:
        extra_arguments(parser)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [option for action in parser._actions for option in action.option_strings]
        bad = next((word for word in unknown if word.startswith("-")), unknown[0])
        close = difflib.get_close_matches(bad.split("=")[0], known, n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see --help for every option"
        parser.error(f"unknown option {bad!r}{hint}")
    values = {name: getattr(namespace, name) for name, *_ in fields_of(defaults) if name != "preset"}
    config = dataclass_from_dict(Config, _unflatten(values) | {"preset": defaults.preset}, "config")
    check_config(config)
    return config, namespace


def _unflatten(values: dict) -> dict:
    nested: dict = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if key:
            nested.setdefault(section, {})[key] = value
        else:
            nested[section] = value
    return nested


def _type_name(value_type) -> str:
    origin, args = typing.get_origin(value_type), typing.get_args(value_type)
    if origin is Literal:
        return "{" + ",".join(str(arg) for arg in args) + "}"
    if origin is typing.Union:  # Optional[X]
        return f"{_type_name(args[0])}|none"
    if origin is tuple:
        item = args[0].__name__
        return f"{item},{item},..." if args[-1] is Ellipsis else ",".join(a.__name__ for a in args)
    return value_type.__name__.upper()


def _converter(value_type):
    """A function str -> value for argparse; its __name__ appears in argparse's type errors."""

    def convert(text: str):
        return coerce(text, value_type, where=None, from_text=True)

    convert.__name__ = _type_name(value_type)
    return convert
