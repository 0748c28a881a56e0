"""Closed-loop evaluation campaign.

    caril evaluate --policy expert --routes paper --weathers ClearNoon,WetNoon --trials 1 --out runs/eval

Writes ``OUT/results.csv`` (one row per episode), ``OUT/trajectories/*.csv`` and ``OUT/config.json`` (the
resolved arguments). ``--resume`` continues an interrupted campaign in the same folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from agent.factory import POLICIES, make_policy
from scripts.args import arg
from sim.backends import BACKENDS, make_simulator
from sim.carla_routes import carla_route_names
from sim.errors import UsageError
from sim.routes import parse_routes
from sim.types import CameraConfig, parse_resolution
from sim.weather import parse_weathers
from training.evaluation import Campaign, plan_episodes

DESCRIPTION = "Run a closed-loop evaluation campaign and write results.csv and trajectories."


@dataclass
class Args:
    out: str = arg(help="output folder")
    policy: str = arg("expert", help="policy to drive", choices=POLICIES)
    routes: str = arg("paper", help="comma-separated routes or suites (paper, named) or random:<seed>")
    weathers: str = arg("ClearNoon", help="comma-separated weather presets, or 'all'")
    trials: int = arg(1, help="episodes per route and weather")
    seed: int = arg(0, help="base seed; trial k uses seed+k")
    backend: str = arg("embedded", help="simulator backend", choices=BACKENDS)
    host: str = arg(os.environ.get("CARLA_HOST", "127.0.0.1"), help="CARLA server host (--backend carla)")
    port: int = arg(int(os.environ.get("CARLA_PORT", 2000)), help="CARLA server RPC port")
    tm_port: int = arg(int(os.environ.get("CARLA_TM_PORT", 8000)), help="CARLA Traffic Manager port")
    timeout: float = arg(10.0, help="CARLA client timeout, seconds")
    town: str = arg("Town04", help="CARLA map to load ('' keeps the loaded one)")
    res: str = arg("448x448", help="camera resolution WIDTHxHEIGHT")
    fov: float = arg(110.0, help="camera horizontal field of view, degrees")
    camera: bool = arg(True, help="render the camera; --no-camera skips it (privileged expert only): faster")
    resume: bool = arg(False, help="continue an interrupted campaign in OUT")

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials must be at least 1, got {self.trials}")
        self.route_names = carla_route_names(self.routes) if self.backend == "carla" else parse_routes(self.routes)
        self.weather_names = [w.name for w in parse_weathers(self.weathers)]
        width, height = parse_resolution(self.res)
        self.camera_config = CameraConfig(width=width, height=height, fov_deg=self.fov)
        if not self.camera and self.policy != "expert":
            raise UsageError("--no-camera only works with the privileged expert policy")


def simulator_settings(args: Args) -> dict:
    """Keyword settings of the chosen backend from the command line."""
    settings = {"camera": args.camera_config, "render_camera": args.camera}
    if args.backend == "carla":
        settings.update(host=args.host, port=args.port, tm_port=args.tm_port, timeout_s=args.timeout,
                        town=args.town or None)
    return settings


def run(args: Args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = asdict(args) | {"route_names": args.route_names, "weather_names": args.weather_names,
                             "camera_config": args.camera_config.to_dict()}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    specs = plan_episodes(args.route_names, args.weather_names, args.trials, args.seed, args.policy)
    campaign = Campaign(out, lambda: make_simulator(args.backend, **simulator_settings(args)),
                        lambda spec: make_policy(spec.policy))
    todo = campaign.pending(specs, args.resume)
    failed = 0
    with tqdm(total=len(specs), initial=len(specs) - len(todo), desc="episodes", unit="ep") as bar:
        def on_episode(spec, row) -> None:
            nonlocal failed
            failed += row["termination"] != "goal"
            bar.set_postfix(route=spec.route, last=row["termination"], failed=failed)
            bar.update()

        rows = campaign.run(specs, resume=args.resume, on_episode=on_episode)
    print(f"{len(rows)} episodes -> {campaign.results_path}")
    for row in rows:
        print(f"  {row['route']:10s} {row['weather']:13s} t{row['trial']} {row['termination']:10s} "
              f"completion={row['route_completion']:.3f} lat_mean={row['lateral_offset_mean_m']:.3f} m "
              f"lat_max={row['lateral_offset_max_m']:.3f} m collisions={row['collisions']}")
    return 0
