#!/usr/bin/env python
"""Would heads with their own trunk disagree usefully? Compare a second, independently trained network's heads
with the driving network's, on the driving network's own states.

    python examples/independent_heads.py --drive policies/caril_small --other runs/other/best [--episodes 2]
        [--routes straight --weathers ClearNoon]      # the full run takes about 45 ms per tick on a CPU

``--other`` checkpoints are any other runs of ``caril train``; the README's figures used the shipped recipe
(policies/caril_small/README.md) on two other 36-episode recordings, e.g. ``caril collect --routes paper
--weathers ClearNoon,CloudyNoon --episodes 36 --seed 11 --workers 2 --out data/other`` then the recipe's
``caril train`` with ``--data data/other --out runs/other``. Their steering is compared in the driving
checkpoint's units (each net's output is rescaled by the ratio of the steering scales).

The ``--drive`` checkpoint drives the paper's routes with ``regression`` (ClearNoon and HardRainNoon, spawn
offset 0.3 m); at every tick the ``--other`` checkpoints read the same camera frame and route command. Against
the expert's steer in that very state (normalised with the driving checkpoint's steering scale) it prints each
head's mean absolute error, the correlation of every pair of errors, and how the driving regression head's
error grows with the lateral offset against the expert's own feedback gain. Errors correlated near 1 across
networks trained apart mean that giving the classification head its own trunk would not give a correction
independent evidence to work with: the mistake comes from the data, not from the shared trunk.
"""

from __future__ import annotations

import argparse

import numpy as np

from agent.caril_agent import CarilAgent, CarilAgentConfig
from agent.expert import ExpertConfig, ExpertPolicy
from sim.dynamics import VehicleParams
from sim.embedded import EmbeddedSimulator

ROUTES = "straight,one-turn,two-turn"
WEATHERS = "ClearNoon,HardRainNoon"


def drive(agent: CarilAgent, others: list[CarilAgent], sim: EmbeddedSimulator, route: str, weather: str,
          seed: int) -> list[list[float]]:
    """One episode; per tick [lateral offset m, expert, then regression and expected classification steer of
    every network]."""
    obs = sim.reset(route, weather, seed)
    agent.reset(sim.route)
    expert = ExpertPolicy()
    expert.reset(sim.route)
    rows = []
    for _ in range(2000):
        control, record = agent.act(obs)
        row = [obs.lane.lateral_offset_m, float(np.clip(expert.act(obs)[0].steer * agent.ckpt.steer_scale, -1, 1)),
               record["steer_regression"], record["steer_classification"]]
        for other in others:  # in the driving checkpoint's units, whatever steering scale the other has
            steer, probs, _, _ = other.predict(obs.image, obs.command)
            to_drive = agent.ckpt.steer_scale / other.ckpt.steer_scale
            row += [steer * to_drive, float(probs @ other.ckpt.bins.centres) * to_drive]
        rows.append(row)
        obs = sim.step(control)
        if obs.lane.distance_along_m >= sim.route.length_m - 1.0 or obs.collisions:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drive", required=True, help="checkpoint that drives (its regression head)")
    parser.add_argument("--other", required=True, nargs="+", help="independently trained checkpoints to compare")
    parser.add_argument("--episodes", type=int, default=2, help="episodes per route and weather")
    parser.add_argument("--routes", default=ROUTES, help="comma-separated routes")
    parser.add_argument("--weathers", default=WEATHERS, help="comma-separated weather presets")
    args = parser.parse_args()
    settings = CarilAgentConfig(correction="regression", device="cpu")
    agent = CarilAgent(args.drive, settings)
    others = [CarilAgent(path, settings) for path in args.other]
    sim = EmbeddedSimulator(spawn_noise_m=0.3)
    rows = []
    for weather in args.weathers.split(","):
        for route in args.routes.split(","):
            for seed in range(1000, 1000 + args.episodes):
                rows += drive(agent, others, sim, route, weather, seed)
                print(f"\r{len(rows)} ticks ({weather}, {route}, seed {seed})", end="", flush=True)
    data = np.array(rows)
    offset, errors = data[:, 0], data[:, 2:] - data[:, 1:2]
    names = [f"{net}:{head}" for net in ["drive", *(f"other{i}" for i in range(len(others)))]
             for head in ("regression", "classification")]
    print(f"\n\nmean absolute error against the expert ({len(data)} ticks, normalised steer):")
    for name, e in zip(names, errors.T, strict=True):
        print(f"  {name:24s} {np.mean(np.abs(e)):.4f}")
    print("\ncorrelation of the errors:")
    print(" " * 26 + "".join(f"{n:>24s}" for n in names))
    for name, row in zip(names, np.corrcoef(errors.T), strict=True):
        print(f"  {name:24s}" + "".join(f"{v:24.3f}" for v in row))
    slope = np.polyfit(offset, -errors[:, 0], 1)[0]  # expert - regression against the lateral offset
    cfg = ExpertConfig()  # the expert's Stanley term, d(steer)/d(offset), at its cruise speed
    gain = cfg.stanley_gain / (cfg.cruise_speed_mps + 1.0) / np.radians(VehicleParams().max_steer_deg)
    gain *= agent.ckpt.steer_scale
    print(f"\nthe expert steers {slope:+.3f} (normalised) per metre of lateral offset more than the regression "
          f"head; the expert's own feedback at {cfg.cruise_speed_mps:g} m/s is {-gain:+.3f} per metre")


if __name__ == "__main__":
    main()
