"""The closed loop: reset -> act -> step -> ... with consumers that see every tick.

::

    route, weather, seed
          |
          v
    sim.reset --obs--> policy.act --control--> sim.step --obs--> ... until the EpisodeMonitor ends it
                          |                                 |
                          +--- record ----> consumers <-----+   (trajectory, recorder, metrics, display)

Consumers implement any of ``on_reset(obs, info)``, ``on_step(obs, control, record)`` and
``on_end(summary)``; cross-cutting concerns (recording, video, display) live there, not in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.policy import Policy
from sim.episode import EpisodeLimits, EpisodeMonitor
from sim.metrics import TRAJECTORY_COLUMNS, lane_deviation, route_completion
from sim.routes import Route
from sim.simulator import Simulator
from sim.types import Control, Observation
from sim.weather import Weather


class Consumer(Protocol):
    def on_reset(self, obs: Observation, info: dict[str, Any]) -> None: ...
    def on_step(self, obs: Observation, control: Control, record: dict[str, Any]) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...


@dataclass
class TrajectoryLog:
    """Collects the trajectory table (see :data:`sim.metrics.TRAJECTORY_COLUMNS`) and episode counters."""

    rows: list[tuple[float, ...]] = field(default_factory=list)
    collisions: int = 0
    lane_invasions: int = 0
    last: Observation | None = None

    def on_reset(self, obs: Observation, info: dict[str, Any]) -> None:
        self.rows, self.collisions, self.lane_invasions, self.last = [], 0, 0, obs
        self._add(obs, obs.control)

    def on_step(self, obs: Observation, control: Control, record: dict[str, Any]) -> None:
        # a contact that persists over several ticks is one collision, as the leaderboard counts them
        if obs.collisions and not (self.last and self.last.collisions):
            self.collisions += 1
        self.lane_invasions += len(obs.lane_invasions)
        self.last = obs
        self._add(obs, control)

    def on_end(self, summary: dict[str, Any]) -> None:
        pass

    def _add(self, obs: Observation, c: Control) -> None:
        p = obs.pose
        self.rows.append((obs.sim_time_s, p.x_m, p.y_m, p.yaw_deg, obs.speed_mps, obs.lane.lateral_offset_m,
                          c.steer, c.throttle, c.brake))

    def table(self) -> np.ndarray:
        return np.array(self.rows, dtype=np.float64).reshape(-1, len(TRAJECTORY_COLUMNS))


def run_episode(sim: Simulator, policy: Policy, route: Route | str, weather: Weather, seed: int,
                limits: EpisodeLimits | None = None, consumers: tuple[Any, ...] = ()) -> tuple[dict, TrajectoryLog]:
    """Drive one episode to its end; returns the summary metrics and the trajectory."""
    log = TrajectoryLog()
    everyone = (log, *consumers)
    obs = sim.reset(route, weather, seed)
    policy.reset(sim.route)
    monitor = EpisodeMonitor(sim.route.length_m, limits)
    for c in everyone:
        c.on_reset(obs, {"route": sim.route.name, "weather": weather.name, "seed": seed})
    termination = None
    while termination is None:
        control, record = policy.act(obs)
        obs = sim.step(control)
        for c in everyone:
            c.on_step(obs, control, record)
        termination = monitor.update(obs)
    table = log.table()
    summary = {
        "route_completion": route_completion(obs.lane.distance_along_m, sim.route.length_m, termination),
        "collisions": log.collisions,
        "lane_invasions": log.lane_invasions,
        **lane_deviation(table[:, TRAJECTORY_COLUMNS.index("lateral_offset_m")]),
        "termination": termination,
        "sim_time_s": round(obs.sim_time_s, 6),
    }
    for c in everyone:
        c.on_end(summary)
    return summary, log
