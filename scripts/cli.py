"""``caril``: one console command with a subcommand per job (see ``caril --help``).

Each subcommand is a module under ``scripts/`` with an ``Args`` dataclass, a ``DESCRIPTION`` and
``run(args) -> int``. Errors a user can cause end here as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from scripts.args import parse
from sim.errors import CarilError, InvalidControlError, UnknownNameError, UsageError

# exit 2 for input the user can fix on the command line; 1 for data, files, servers and runtime errors
USAGE_ERRORS = (UsageError, UnknownNameError, InvalidControlError)

COMMANDS = {
    "collect": "scripts.collect",
    "data": "scripts.data",
    "train": "scripts.train",
    "evaluate": "scripts.evaluate",
    "drive": "scripts.drive",
    "render": "scripts.render",
    "serve": "scripts.serve",
    "bench": "scripts.bench",
    "demo": "scripts.demo",
}

USAGE = """usage: caril <command> [options]

commands:
  collect    record expert demonstrations into a dataset
  data       inspect (info) and validate (check) a dataset
  train      train a dual-head policy offline
  evaluate   closed-loop evaluation campaign: results.csv and trajectories
  drive      live pygame display of a policy, manual driving, recording
  render     save what the camera sees at a point of a route
  serve      the embedded simulator behind CARLA's wire protocol
  bench      benchmarks that print JSON
  demo       the main job end to end on the embedded simulator

Run 'caril <command> --help' for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"caril: error: unknown command {name!r}; commands: {', '.join(COMMANDS)}\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        module = importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as e:
        if e.name != COMMANDS[name]:
            raise
        sys.stderr.write(f"caril: error: command {name!r} is not available in this version yet\n")
        return 2
    prog = f"caril {name}"
    try:
        args = module.parse_args(rest, prog) if hasattr(module, "parse_args") else parse(
            module.Args, rest, prog, module.DESCRIPTION)
        return int(module.run(args) or 0)
    except CarilError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2 if isinstance(e, USAGE_ERRORS) else 1
    except BrokenPipeError:  # the reader of stdout went away (caril data info DIR | head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError) as e:
        where = f" {e.filename}" if e.filename else ""  # a path the user gave that cannot be used as asked
        sys.stderr.write(f"{prog}: error: cannot use{where}: {e.strerror or e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; results written so far are kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
