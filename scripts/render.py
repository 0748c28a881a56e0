"""Save what the camera sees at a point of a route.

    caril render --route two-turn --weather ClearNoon --distance 120 --out frame.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from scripts.args import arg
from sim.embedded import EmbeddedSimulator
from sim.errors import CarilError, UsageError
from sim.routes import get_route
from sim.types import CameraConfig, parse_resolution
from sim.weather import get_weather

DESCRIPTION = "Render the embedded camera at a distance along a route and save it as an image."


@dataclass
class Args:
    out: str = arg(help="output image (.png or .jpg)")
    route: str = arg("straight", help="route name or random:<seed>")
    weather: str = arg("ClearNoon", help="weather preset")
    distance: float = arg(0.0, help="metres along the route")
    lateral: float = arg(0.0, help="metres right of the lane centre")
    seed: int = arg(0, help="episode seed (animates rain)")
    frame: int = arg(0, help="frame index (animates rain)")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT")
    fov: float = arg(110.0, help="horizontal field of view, degrees")

    def __post_init__(self) -> None:
        get_route(self.route)
        get_weather(self.weather)
        width, height = parse_resolution(self.res)
        self.camera = CameraConfig(width=width, height=height, fov_deg=self.fov)
        if Path(self.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise UsageError(f"--out {self.out!r} must end in .png or .jpg")


def run(args: Args) -> int:
    sim = EmbeddedSimulator(camera=args.camera)
    sim.reset(args.route, args.weather, args.seed)
    sim.frame = args.frame
    obs = sim.place(args.distance, args.lateral)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(obs.image, cv2.COLOR_RGB2BGR)):
        raise CarilError(f"could not write {out}")
    print(f"{out}: {args.route} at {args.distance:.1f} m, {args.weather}, {obs.image.shape[1]}x{obs.image.shape[0]}")
    return 0
