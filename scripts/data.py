"""Inspect and validate a recorded dataset.

    caril data info data/paper                 # summary + steering histogram PNG (paper bins)
    caril data info data/paper --json info.json
    caril data check data/paper                # decodes every frame; exit 1 if any file is bad
    caril data check data/paper --fast         # structure + a sample of frames per file

``check`` reports each corrupt, truncated or inconsistent episode file by name and exits 1; unfinished
``*.partial`` files of an interrupted recording are noted, not failures (``caril collect --resume``
removes them).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scripts.args import OneLineParser, arg, build_parser
from sim.errors import UsageError
from sim.split import heldout_conditions
from sim.types import RoadOption
from training.collect import read_config
from training.data_options import COMMAND_KEY, LABEL_KEY, NOISE_KEY, LabelOptions, steering_histogram
from training.episode_file import IMAGE_KEY, DatasetError, DatasetIndex, check_dataset

DESCRIPTION = "Inspect (info) or validate (check) a recorded dataset."
ACTIONS = ("info", "check")


@dataclass
class InfoArgs:
    json: str | None = arg(None, help="also write the summary as JSON to this path")
    plot: bool = arg(True, help="write the steering histogram PNG (--no-plot: skip it)")
    plot_path: str | None = arg(None, help="histogram PNG path (default DIR/steering_histogram.png)")
    steer_limit: float = arg(0.25, help="histogram: keep |steer| <= this (the paper's filter)")
    steer_scale: float = arg(4.0, help="histogram: multiply kept steering by this (the paper's x4)")
    bins: int = arg(11, help="histogram: equal bins over the scaled steering [-1, 1]")


@dataclass
class CheckArgs:
    fast: bool = arg(False, help="decode only a sample of frames per file (first, last and random ones)")
    sample: int = arg(8, help="random frames decoded per file with --fast")
    json: str | None = arg(None, help="also write the findings as JSON to this path")

    def __post_init__(self) -> None:
        if self.sample < 0:
            raise UsageError(f"--sample must be 0 or more frames, got {self.sample}")


_ARGS = {"info": (InfoArgs, "Summarise a dataset: episodes, frames, hours, routes, weathers, noise, steering."),
         "check": (CheckArgs, "Verify every episode file of a dataset; exit 1 if any is corrupt or truncated.")}


def parse_args(argv: list[str], prog: str) -> tuple[str, str, Any]:
    """``caril data {info,check} DIR [options]``."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {{info,check}} DIR [options]\n\n{__doc__}")
        sys.exit(0)
    if not argv or argv[0] not in ACTIONS:
        OneLineParser(prog=prog).error(f"name an action first: one of {', '.join(ACTIONS)}")
    action = argv[0]
    cls, description = _ARGS[action]
    parser = build_parser(cls, f"{prog} {action}", description)
    parser.add_argument("dir", help="dataset folder (written by caril collect)")
    values = vars(parser.parse_args(argv[1:]))
    directory = values.pop("dir")
    return action, directory, cls(**values)


def run(parsed: tuple[str, str, Any]) -> int:
    action, directory, args = parsed
    return info(directory, args) if action == "info" else check(directory, args)


MAX_LISTED = 12  # routes or weathers listed by name in the summary

# -- info --------------------------------------------------------------------------------------------------
def dataset_info(directory: str, options: LabelOptions) -> dict[str, Any]:
    """The numbers ``caril data info`` prints."""
    index = DatasetIndex(directory)
    entries = index.entries
    steer = index.column(LABEL_KEY)[:, 0] if len(index) else np.zeros(0)
    noise = index.column(NOISE_KEY) if len(index) else np.zeros(0, bool)
    per_route: dict[str, dict[str, int]] = {}
    per_weather: dict[str, dict[str, int]] = {}
    for e in entries:
        for table, key in ((per_route, e["route"]), (per_weather, e["weather"])):
            row = table.setdefault(key, {"episodes": 0, "frames": 0})
            row["episodes"] += 1
            row["frames"] += e["frames"]
    frames = len(index)
    nbytes = sum(e["bytes"] for e in entries)
    image = index.features[IMAGE_KEY].shape
    first = index.readers[0].attrs if entries else {}
    backend = first.get("backend") or read_config(directory).get("backend")
    return {
        "dir": str(directory), "episodes": len(entries), "planned_episodes": index.manifest.get("planned_episodes"),
        "frames": frames, "fps": index.fps, "hours": round(frames / index.fps / 3600, 4),
        "image_shape": list(image), "image_codec": first.get("image_codec"), "bytes": nbytes,
        "bytes_per_frame": round(nbytes / frames, 1) if frames else 0.0,
        "noise_fraction": round(float(np.mean(noise)), 4) if frames else 0.0,
        "noise": first.get("noise"), "backend": backend,
        "software_version": index.manifest.get("software_version"),
        "terminations": dict(Counter(e["termination"] for e in entries)),
        "per_route": per_route, "per_weather": per_weather,
        "heldout": heldout_conditions(list(per_route), list(per_weather), backend or "embedded"),
        "commands": command_counts(index) if frames else {},
        "steer": {"min": float(steer.min()) if frames else 0.0, "max": float(steer.max()) if frames else 0.0,
                  "mean_abs": float(np.abs(steer).mean()) if frames else 0.0},
        "steering_histogram": steering_histogram(steer, options),
    }


def command_counts(index: DatasetIndex) -> dict[str, int]:
    """Frames per route command (``LANEFOLLOW``, ``LEFT``, ...); empty for data recorded without commands."""
    if COMMAND_KEY not in index.features:
        return {}
    counts = Counter(int(c) for c in np.asarray(index.column(COMMAND_KEY)).reshape(-1))
    return {RoadOption(c).name: counts[c] for c in sorted(counts)}


def plot_histogram(hist: dict[str, Any], path: Path, title: str) -> None:
    """Bar chart of frames per steering bin (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(hist["edges"])
    counts = np.asarray(hist["counts"])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.bar(0.5 * (edges[:-1] + edges[1:]), counts, width=0.9 * np.diff(edges), color="#3b75af", edgecolor="black")
    ax.set_xticks(edges, [f"{e:.2f}" for e in edges], rotation=45, fontsize=7)
    ax.set_xlabel(f"steering x{hist['steer_scale']:g} (kept |steer| <= {hist['steer_limit']})")
    ax.set_ylabel("frames")
    ax.set_title(f"{title}: {int(counts.sum())} frames, {hist['filtered_out']} filtered out", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def info(directory: str, args: InfoArgs) -> int:
    options = LabelOptions(steer_limit=args.steer_limit, steer_scale=args.steer_scale, n_bins=args.bins)
    try:
        data = dataset_info(directory, options)
    except OSError as e:  # h5py's failed checksum filter, a truncated file: one line, and where to look
        raise DatasetError(f"{directory}: a column could not be read ({str(e).splitlines()[0]}); 'caril data "
                           f"check {directory}' names the corrupt or truncated files") from None
    if args.plot and data["frames"]:
        path = Path(args.plot_path) if args.plot_path else Path(directory) / "steering_histogram.png"
        try:
            plot_histogram(data["steering_histogram"], path, Path(directory).name)
            data["histogram_png"] = str(path)
        except OSError as e:  # a read-only dataset: the numbers still matter more than the picture
            data["histogram_not_written"] = f"{path}: {e.strerror or e}"
    print(format_info(data))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def format_info(d: dict[str, Any]) -> str:
    """The human-readable summary."""
    h, w, _ = d["image_shape"]
    codec = d["image_codec"] or {}
    quality = f" q{codec.get('jpeg_quality')}" if codec.get("format") == "jpeg" else ""
    lines = [f"dataset {d['dir']} (recorded with caril {d['software_version']}, backend {d['backend']})",
             f"  episodes     {d['episodes']} of {d['planned_episodes']} planned",
             f"  frames       {d['frames']:,} at {d['fps']:g} fps = {d['hours']:.3f} h driven",
             f"  images       {w}x{h} {codec.get('format', '?')}{quality}, {d['bytes'] / 1e6:.1f} MB on disk, "
             f"{d['bytes_per_frame'] / 1e3:.1f} kB per frame",
             f"  noise        active on {100 * d['noise_fraction']:.1f}% of frames",
             "  terminations " + ", ".join(f"{k} {v}" for k, v in sorted(d["terminations"].items()))]
    held = d.get("heldout", [])
    lines.append("  held out     " + (f"{', '.join(held[:6])}{' ...' if len(held) > 6 else ''}: recorded on "
                                      "held-out conditions, no training data for a held-out evaluation" if held
                                      else "none: training maps and weathers only (sim/split.py)"))
    if d.get("commands"):
        lines.append("  commands     " + ", ".join(f"{k} {v:,}" for k, v in d["commands"].items()) + " frames")
    for title, table in (("routes", d["per_route"]), ("weathers", d["per_weather"])):
        shown = list(table.items())
        lines.append(f"  {title}:" + (f" {len(shown)}, the first {MAX_LISTED} listed (--json has all)"
                                      if len(shown) > MAX_LISTED else ""))
        lines += [f"    {name:16s} {row['episodes']:5d} episodes {row['frames']:9,d} frames"
                  for name, row in shown[:MAX_LISTED]]
    hist = d["steering_histogram"]
    lines.append(f"  steering bins (|steer| <= {hist['steer_limit']}, x{hist['steer_scale']:g}; "
                 f"{hist['filtered_out']:,} frames filtered out):")
    edges, counts = hist["edges"], hist["counts"]
    top = max(max(counts), 1)
    for i, count in enumerate(counts):
        lines.append(f"    {i:2d} [{edges[i]:+.3f}, {edges[i + 1]:+.3f})  {count:8,d}  {'#' * round(30 * count / top)}")
    if "histogram_png" in d:
        lines.append(f"  histogram -> {d['histogram_png']}")
    if "histogram_not_written" in d:
        lines.append(f"  histogram not written ({d['histogram_not_written']}); choose a place with --plot-path")
    return "\n".join(lines)


# -- check -------------------------------------------------------------------------------------------------
def check(directory: str, args: CheckArgs) -> int:
    from tqdm import tqdm

    mode = "sample" if args.fast else "all"
    files = sorted((Path(directory) / "episodes").glob("episode_*.h5"))
    with tqdm(total=len(files), desc="checking", unit="file", disable=not files, file=sys.stderr) as bar:
        report = check_dataset(directory, decode=mode, sample=args.sample, on_file=lambda name: bar.update())
    for name, problems in sorted(report.problems.items()):
        for problem in problems:
            print(f"BAD  {name}: {problem}")
    for note in report.notes:
        print(f"note {note}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**asdict(report), "ok": report.ok, "mode": mode}, indent=2) + "\n")
    checked = len(report.checked)
    if report.ok:
        print(f"OK: {checked} episode files sound ({'a sample of frames' if args.fast else 'every frame'} decoded)")
        return 0
    print(f"FAILED: {len(report.problems)} problem file(s) among {checked} episode files in {directory}")
    return 1
