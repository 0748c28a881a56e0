"""The main job end to end on the embedded simulator.

    caril demo --out runs/demo

For now: the expert drives the paper's three routes in two weathers (evaluation campaign with results.csv
and trajectories) and frames of a straight, a junction turn and a curve are rendered in every weather.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts import evaluate, render
from scripts.args import arg

DESCRIPTION = "Run the main job end to end on the embedded simulator."

VIEWS = (("straight", 60.0), ("one-turn", 150.0), ("s-curve", 75.0))


@dataclass
class Args:
    out: str = arg("runs/demo", help="output folder")
    weathers: str = arg("ClearNoon,WetNoon", help="weathers of the evaluation")


def run(args: Args) -> int:
    out = Path(args.out)
    evaluate.run(evaluate.Args(out=str(out / "expert"), policy="expert", routes="paper", weathers=args.weathers))
    for route, distance in VIEWS:
        for weather in ("ClearNoon", "CloudyNoon", "WetNoon", "HardRainNoon", "ClearSunset"):
            render.run(render.Args(out=str(out / "frames" / f"{route}_{weather}.png"), route=route,
                                   weather=weather, distance=distance))
    return 0
