"""CARLA Leaderboard 1.0 scoring: infraction penalty and driving score, and our episode outcomes mapped to it.

Source: leaderboard branch ``leaderboard-1.0``, ``leaderboard/utils/statistics_manager.py``
(``compute_route_statistics``), summarised in ``shared/reference/carla.md`` section 2.1:

- the penalty starts at 1.0 and every infraction instance multiplies it by its coefficient
  (pedestrian 0.50, vehicle 0.60, static layout 0.65, red light 0.70, stop sign 0.80), so repeats compound;
- an ``OUTSIDE_ROUTE_LANES_INFRACTION`` multiplies it by ``1 - percentage / 100``, the percentage being the
  share of the route distance driven outside the route lanes or on the sidewalk;
- route deviation, agent blocked and route timeout carry no multiplier: they end the route, which is then
  scored on the route completion reached so far;
- route completion and driving score are percentages in [0, 100]:
  ``score_composed = max(score_route * score_penalty, 0.0)``.

These are the LB 1.0 coefficients, not the 2019 ones (static 0.80, vehicle 0.70, red light 0.90, stop 0.95)
and not LB 2.x, which adds min-speed, scenario-timeout and yield penalties.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sim.errors import CarilError, unknown_name

PENALTY_COEFFICIENTS: dict[str, float] = {
    "collision_pedestrian": 0.50,  # PENALTY_COLLISION_PEDESTRIAN
    "collision_vehicle": 0.60,  # PENALTY_COLLISION_VEHICLE
    "collision_static": 0.65,  # PENALTY_COLLISION_STATIC (LB label "collisions_layout")
    "red_light": 0.70,  # PENALTY_TRAFFIC_LIGHT
    "stop_sign": 0.80,  # PENALTY_STOP ("stop_infraction")
}
PERCENTAGE_KINDS = ("outside_route_lanes",)  # x (1 - percentage / 100); LB label "Off-road infractions"
COLLISION_KINDS = ("collision_pedestrian", "collision_vehicle", "collision_static")
ROUTE_ENDING_KINDS = ("route_deviation", "agent_blocked", "route_timeout")  # no multiplier
INFRACTION_KINDS = (*PENALTY_COEFFICIENTS, *PERCENTAGE_KINDS, *ROUTE_ENDING_KINDS)

# Our episode terminations (sim.episode.TERMINATIONS) -> the LB 1.0 infraction that ends a route that way.
TERMINATION_INFRACTIONS: dict[str, str | None] = {
    "goal": None,  # route completed
    "collision": None,  # the collisions themselves are the infractions (counted from `collisions`)
    "off_route": "route_deviation",  # LB InRouteTest (route deviation, terminates)
    "blocked": "agent_blocked",  # LB ActorSpeedAboveThresholdTest / VEHICLE_BLOCKED
    "time_limit": "route_timeout",  # LB route timeout
}


class LeaderboardError(CarilError, ValueError):
    """An infraction or score input outside what LB 1.0 defines."""


@dataclass(frozen=True)
class Infraction:
    """One LB 1.0 infraction instance. ``percentage`` (0..100) is required for ``outside_route_lanes`` only."""

    kind: str
    percentage: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in INFRACTION_KINDS:
            raise unknown_name("infraction kind", self.kind, INFRACTION_KINDS)
        if self.kind in PERCENTAGE_KINDS:
            if self.percentage is None or not (0.0 <= self.percentage <= 100.0):
                raise LeaderboardError(f"a {self.kind} infraction needs percentage in [0, 100] (the share of the "
                                       f"route distance driven outside the route lanes), got {self.percentage!r}.")
        elif self.percentage is not None:
            raise LeaderboardError(f"only {', '.join(PERCENTAGE_KINDS)} infractions take a percentage; "
                                   f"drop percentage={self.percentage!r} from the {self.kind} infraction.")

    @property
    def coefficient(self) -> float:
        """The factor this infraction multiplies the penalty by (1.0 for route-ending kinds)."""
        if self.kind in PERCENTAGE_KINDS:
            return 1 - self.percentage / 100
        return PENALTY_COEFFICIENTS.get(self.kind, 1.0)


def infraction_penalty(infractions: Iterable[Infraction]) -> float:
    """LB 1.0 ``score_penalty``: 1.0 multiplied in order by each infraction's coefficient (in [0, 1])."""
    penalty = 1.0
    for infraction in infractions:
        penalty *= infraction.coefficient
    return penalty


def driving_score(route_completion_pct: float, infractions: Iterable[Infraction]) -> float:
    """LB 1.0 per-route driving score in percent: ``max(route_completion_pct * penalty, 0)``.

    ``route_completion_pct`` is a percentage in [0, 100] as in LB 1.0 (``sim.metrics.route_completion``
    returns a fraction: multiply it by 100). The global score is the mean of the per-route scores.
    """
    if not (math.isfinite(route_completion_pct) and 0.0 <= route_completion_pct <= 100.0):
        raise LeaderboardError(f"route_completion_pct must be a percentage in [0, 100], got {route_completion_pct!r};"
                               " multiply a fraction by 100.")
    return max(route_completion_pct * infraction_penalty(infractions), 0.0)


def episode_infractions(collisions: int, termination: str, *, collision_kind: str = "collision_static",
                        outside_lanes_pct: float = 0.0) -> list[Infraction]:
    """The LB 1.0 infractions of one of our episodes.

    Mapping: each of the ``collisions`` counts as one ``collision_kind`` infraction (the embedded world
    holds only static objects, hence ``collision_static``; LB counts collisions after its own de-duplication,
    5 m / 5 s); ``outside_lanes_pct`` > 0 adds one ``outside_route_lanes`` infraction with that percentage;
    the termination adds the route-ending infraction of :data:`TERMINATION_INFRACTIONS` (off_route ->
    route_deviation, blocked -> agent_blocked, time_limit -> route_timeout; goal and collision add none).
    Order follows LB's criteria order: collisions, outside lanes, then the route-ending event.
    """
    if termination not in TERMINATION_INFRACTIONS:
        raise unknown_name("termination", termination, tuple(TERMINATION_INFRACTIONS))
    if collision_kind not in COLLISION_KINDS:
        raise unknown_name("collision kind", collision_kind, COLLISION_KINDS)
    if int(collisions) != collisions or collisions < 0:
        raise LeaderboardError(f"collisions must be a count >= 0, got {collisions!r}.")
    if not (math.isfinite(outside_lanes_pct) and 0.0 <= outside_lanes_pct <= 100.0):
        raise LeaderboardError(f"outside_lanes_pct must be a percentage in [0, 100], got {outside_lanes_pct!r}.")
    if termination == "collision" and collisions < 1:
        raise LeaderboardError("termination 'collision' with collisions=0 is inconsistent; pass the episode's "
                               "collision count (at least 1).")
    out = [Infraction(collision_kind) for _ in range(int(collisions))]
    if outside_lanes_pct > 0:
        out.append(Infraction("outside_route_lanes", percentage=float(outside_lanes_pct)))
    ending = TERMINATION_INFRACTIONS[termination]
    if ending is not None:
        out.append(Infraction(ending))
    return out
