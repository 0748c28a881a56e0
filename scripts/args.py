"""Typed command arguments: a dataclass per command (CleanRL's ``Args``), turned into an argparse parser.

Each field becomes ``--field-name``; its ``help`` comes from ``field(metadata={"help": ...})``. Booleans
become ``--flag`` / ``--no-flag``. Bad values end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``caril CMD: error: ...``) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def arg(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with command-line help (and optional ``choices``, ``metavar``)."""
    meta = {"help": help, **kwargs}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def env_default(name: str, default: Any) -> Any:
    """``default``, or the environment variable ``name`` when it is set (as CARLA's examples read
    ``CARLA_HOST``), converted to ``default``'s type. A value that does not convert stays text: argparse
    converts text defaults with the option's type, so it becomes the usual one-line error naming the option,
    not a traceback when the command is imported."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return type(default)(text)
    except ValueError:
        return text


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of the dataclass ``cls``."""
    parser = OneLineParser(prog=prog, description=description, formatter_class=_DefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if "metavar" in f.metadata:
            kwargs["metavar"] = f.metadata["metavar"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
        parser.add_argument(name, **kwargs)
    return parser


def parse(cls: type[T], argv: list[str], prog: str, description: str) -> T:
    """Parse ``argv`` into an instance of ``cls`` (its ``__post_init__`` validates)."""
    ns = build_parser(cls, prog, description).parse_args(argv)
    return cls(**vars(ns))
