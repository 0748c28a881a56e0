"""Benchmarks that print JSON (and write it with ``--json PATH``): ``caril bench NAME [options]``.

Each benchmark is a module ``scripts/bench_NAME.py`` with an ``Args`` dataclass (which has a ``json`` field),
a ``DESCRIPTION`` and ``bench(args) -> dict``. Speed is only ever measured here, never in tests; where an
issue sets a target, the benchmark measures the named baseline in the same run and reports the ratio.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from scripts.args import OneLineParser, build_parser, parse

BENCHES = ("sim", "collect", "train", "policy", "serve")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"scripts.bench_{name}")


def parse_args(argv: list[str], prog: str) -> tuple[str, object]:
    """``caril bench NAME [options]``."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{{','.join(BENCHES)}}} [options]\n\n{__doc__}")
        sys.exit(0)
    if not argv or argv[0] not in BENCHES:
        OneLineParser(prog=prog).error(f"name a benchmark first: one of {', '.join(BENCHES)}")
    name = argv[0]
    try:
        module = _module(name)
    except ModuleNotFoundError:
        OneLineParser(prog=prog).error(f"benchmark {name!r} is not available in this version yet")
    if any(a in ("-h", "--help") for a in argv[1:]):
        build_parser(module.Args, f"{prog} {name}", module.DESCRIPTION).print_help()
        sys.exit(0)
    return name, parse(module.Args, argv[1:], f"{prog} {name}", module.DESCRIPTION)


def run(parsed: tuple[str, object]) -> int:
    name, args = parsed
    result = {"bench": name, **_module(name).bench(args), "args": asdict(args),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "processor": platform.processor() or platform.machine()}}
    text = json.dumps(result, indent=2)
    print(text)
    if getattr(args, "json", None):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0
