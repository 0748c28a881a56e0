"""Episode termination on simulation time, shared by the Gymnasium env and the evaluation campaign.

An episode ends when the goal is reached, on a collision, when the vehicle is off the route, when it has
been blocked (standing still) for too long, or when the route's time budget is spent. Only the time limit
is a truncation; the others are terminations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.types import Observation

TERMINATIONS = ("goal", "collision", "off_route", "blocked", "time_limit")


@dataclass(frozen=True)
class EpisodeLimits:
    """When an episode ends. Distances in metres, times in simulated seconds, speeds in m/s."""

    goal_tolerance_m: float = 1.0
    off_route_m: float = 5.0
    off_route_heading_deg: float = 100.0
    blocked_speed_mps: float = 0.5
    blocked_time_s: float = 20.0
    min_average_speed_mps: float = 2.0  # time limit = route length / this + slack
    time_slack_s: float = 30.0

    def time_limit_s(self, route_length_m: float) -> float:
        return route_length_m / self.min_average_speed_mps + self.time_slack_s

    def to_dict(self) -> dict:
        return asdict(self)


class EpisodeMonitor:
    """Feed it each observation; it answers the termination reason once the episode is over, else None."""

    def __init__(self, route_length_m: float, limits: EpisodeLimits | None = None) -> None:
        self.limits = limits or EpisodeLimits()
        self.time_limit_s = self.limits.time_limit_s(route_length_m)
        self._slow_since_s: float | None = None

    def update(self, obs: Observation) -> str | None:
        lim = self.limits
        if obs.lane.distance_to_goal_m <= lim.goal_tolerance_m:
            return "goal"
        if obs.collisions:
            return "collision"
        if abs(obs.lane.lateral_offset_m) > lim.off_route_m or abs(obs.lane.heading_error_deg) > \
                lim.off_route_heading_deg:
            return "off_route"
        if obs.speed_mps < lim.blocked_speed_mps:
            self._slow_since_s = obs.sim_time_s if self._slow_since_s is None else self._slow_since_s
            if obs.sim_time_s - self._slow_since_s >= lim.blocked_time_s:
                return "blocked"
        else:
            self._slow_since_s = None
        if obs.sim_time_s >= self.time_limit_s:
            return "time_limit"
        return None
