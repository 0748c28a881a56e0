"""Closed-loop evaluation campaigns: every (route, weather, trial) is one episode.

Results are appended to ``results.csv`` as each episode finishes (so an interrupted campaign keeps what it
did and resumes with ``resume=True``), and each episode's trajectory goes to ``trajectories/<key>.csv``.
The runner knows nothing about particular policies or backends: callers pass factories.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.policy import Policy
from sim.episode import EpisodeLimits
from sim.errors import SimulatorConnectionLost
from sim.metrics import TRAJECTORY_COLUMNS
from sim.routes import get_route
from sim.simulator import Simulator
from sim.weather import get_weather
from training.rollout import run_episode

log = logging.getLogger(__name__)

SPEC_COLUMNS = ("route", "weather", "seed", "trial", "policy")
METRIC_COLUMNS = ("route_completion", "collisions", "lane_invasions", "lateral_offset_mean_m",
                  "lateral_offset_rms_m", "lateral_offset_max_m", "termination", "sim_time_s")
RESULT_COLUMNS = SPEC_COLUMNS + METRIC_COLUMNS


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode of a campaign. ``seed`` fixes everything random in it."""

    route: str
    weather: str
    trial: int
    seed: int
    policy: str

    @property
    def key(self) -> str:
        """A file-name-safe unique name of this episode."""
        return f"{self.route.replace(':', '-')}__{self.weather}__{self.policy}__t{self.trial}"


def plan_episodes(routes: Iterable[str], weathers: Iterable[str], trials: int, seed: int,
                  policy: str) -> list[EpisodeSpec]:
    """All combinations, in a fixed order; trial ``k`` uses seed ``seed + k`` on every route and weather."""
    return [EpisodeSpec(r, w, k, seed + k, policy) for r in routes for w in weathers for k in range(trials)]


def write_trajectory(path: Path, table: np.ndarray) -> None:
    """Write a trajectory table as CSV with :data:`TRAJECTORY_COLUMNS` (6 decimals)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    np.savetxt(tmp, table, delimiter=",", header=",".join(TRAJECTORY_COLUMNS), comments="", fmt="%.6f")
    tmp.replace(path)


def read_results(path: Path) -> list[dict[str, str]]:
    """Rows of a results file (empty if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class Campaign:
    """Runs episode specs with a simulator and a policy factory, writing results as it goes."""

    def __init__(self, out_dir: Path, make_sim: Callable[[], Simulator], make_policy: Callable[[EpisodeSpec], Policy],
                 limits: EpisodeLimits | None = None) -> None:
        self.out_dir, self.make_sim, self.make_policy = Path(out_dir), make_sim, make_policy
        self.limits = limits or EpisodeLimits()
        self.results_path = self.out_dir / "results.csv"

    def pending(self, specs: list[EpisodeSpec], resume: bool) -> list[EpisodeSpec]:
        """The specs still to run: all of them, or with ``resume`` those not yet in results.csv."""
        if not resume:
            return list(specs)
        done = {(r["route"], r["weather"], r["trial"], r["policy"]) for r in read_results(self.results_path)}
        return [s for s in specs if (s.route, s.weather, str(s.trial), s.policy) not in done]

    def run(self, specs: list[EpisodeSpec], resume: bool = False,
            on_episode: Callable[[EpisodeSpec, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the pending specs in order; ``on_episode`` is called after each (for progress bars)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        todo = self.pending(specs, resume)
        if not resume or not self.results_path.exists():
            with self.results_path.open("w", newline="") as f:
                csv.writer(f).writerow(RESULT_COLUMNS)
        rows = []
        sim = self.make_sim()
        try:
            for spec in todo:
                try:
                    row = self._run_one(sim, spec)
                except SimulatorConnectionLost as e:
                    row = self._record_failure(spec, e)
                    sim.close()
                    sim = self._reconnect()
                rows.append(row)
                if on_episode:
                    on_episode(spec, row)
        finally:
            sim.close()
        return rows

    def _record_failure(self, spec: EpisodeSpec, error: SimulatorConnectionLost) -> dict[str, Any]:
        """A lost simulator fails the episode with its reason; the campaign goes on after reconnecting."""
        log.warning("episode %s failed: %s; reconnecting", spec.key, error)
        nan = float("nan")
        row = {**asdict(spec), "route_completion": 0.0, "collisions": 0, "lane_invasions": 0,
               "lateral_offset_mean_m": nan, "lateral_offset_rms_m": nan, "lateral_offset_max_m": nan,
               "termination": f"failed:{error.reason}", "sim_time_s": 0.0}
        self._append(row)
        return row

    def _reconnect(self) -> Simulator:
        from sim.carla_backend import reconnect_with_backoff  # generic retry; imports no carla

        return reconnect_with_backoff(self.make_sim, attempts=5, base_delay_s=5.0)

    def _append(self, row: dict[str, Any]) -> None:
        with self.results_path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row[c]) for c in RESULT_COLUMNS])

    def _run_one(self, sim: Simulator, spec: EpisodeSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        policy = self.make_policy(spec)
        route = getattr(sim, "resolve_route", get_route)(spec.route)
        summary, traj = run_episode(sim, policy, route, get_weather(spec.weather), spec.seed, self.limits)
        write_trajectory(self.out_dir / "trajectories" / f"{spec.key}.csv", traj.table())
        row = {**asdict(spec), **summary}
        self._append(row)
        log.info("episode %s: %s in %.2fs", spec.key, summary["termination"], time.perf_counter() - t0)
        return row


def _fmt(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)
