"""Road networks in OpenDRIVE's model: roads with a plan view and lanes, junctions with connecting roads.

Every road carries two 3.5 m driving lanes, one per direction (OpenDRIVE lane -1 drives along the reference
line, lane +1 against it; traffic keeps right as in CARLA). Junctions are four-arm crossings: the roads of
the arms end at the junction's boundary and a connecting road (one lane, -1) exists for every movement
(right, straight, left) from every arm, with lane links, as OpenDRIVE junctions describe them. Networks are
built by :class:`NetworkBuilder`, which lays roads one piece after another (``sim.routes`` uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from sim.geometry import PlanView, turn_displacement

LANE_WIDTH_M = 3.5
JUNCTION_HALF_SIZE_M = 15.0  # centre to the boundary where the arms' roads end
STUB_LENGTH_M = 45.0  # length of the arms a route does not use
JUNCTION_SPIRAL_FRACTION = 0.3  # share of a junction turn spent in clothoids; sets the min radius (10.3 m lane)
SAMPLE_STEP_M = 0.5


@dataclass(frozen=True)
class Link:
    """An OpenDRIVE road link: the element at one end of a road (``kind`` 'road' or 'junction')."""

    kind: str
    id: int
    contact: str = ""  # 'start' or 'end' of the linked road; empty for junctions


@dataclass
class Road:
    """One OpenDRIVE road. ``lanes`` are the driving lane ids; connecting roads have only lane -1."""

    id: int
    plan: PlanView
    junction: int = -1
    lanes: tuple[int, ...] = (1, -1)
    lane_width_m: float = LANE_WIDTH_M
    predecessor: Link | None = None
    successor: Link | None = None

    @property
    def length_m(self) -> float:
        return self.plan.length_m

    @cached_property
    def samples(self) -> dict[str, np.ndarray]:
        """The reference line sampled every :data:`SAMPLE_STEP_M` (see :meth:`PlanView.sample`)."""
        return self.plan.sample(SAMPLE_STEP_M)

    def lane_centre(self, lane_id: int) -> dict[str, np.ndarray]:
        """Centre line of ``lane_id`` in its driving direction: x, y, heading (rad), in world metres."""
        smp = self.samples
        offset = -math.copysign(self.lane_width_m / 2, lane_id)  # lane -1 lies right (+) of the line
        h = smp["heading"]
        x = smp["x"] - np.sin(h) * offset
        y = smp["y"] + np.cos(h) * offset
        if lane_id > 0:
            return {"x": x[::-1].copy(), "y": y[::-1].copy(), "heading": h[::-1] + math.pi}
        return {"x": x, "y": y, "heading": h.copy()}


@dataclass(frozen=True)
class Connection:
    """A junction movement: from ``incoming_road`` (at its ``contact`` end) through ``connecting_road``."""

    id: int
    incoming_road: int
    connecting_road: int
    contact_point: str  # where the connecting road touches the incoming road side: always 'start' here
    lane_links: tuple[tuple[int, int], ...]  # (incoming lane id, connecting lane id)
    turn: str  # 'left', 'straight' or 'right'


@dataclass
class Junction:
    """A four-arm crossing: a square of half-size ``half_size_m`` centred at (x, y), turned by ``heading``.

    ``arms[k]`` is (road id, contact) of the road that meets the junction on side k, where side 0 lies
    behind the heading, 1 to its right, 2 ahead and 3 to its left.
    """

    id: int
    x_m: float
    y_m: float
    heading_rad: float
    half_size_m: float = JUNCTION_HALF_SIZE_M
    arms: dict[int, tuple[int, str]] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    route_turn: str = ""  # the movement the route takes from arm 0, painted as lane arrows before the junction

    def arm_direction(self, side: int) -> float:
        """Heading (rad) pointing from the centre out through ``side``."""
        return self.heading_rad + math.pi - side * math.pi / 2

    def arm_point(self, side: int) -> tuple[float, float]:
        """Where the arm's reference line meets the junction boundary."""
        a = self.arm_direction(side)
        return self.x_m + self.half_size_m * math.cos(a), self.y_m + self.half_size_m * math.sin(a)


@dataclass
class RoadNetwork:
    """All roads and junctions of one map."""

    name: str
    roads: dict[int, Road] = field(default_factory=dict)
    junctions: dict[int, Junction] = field(default_factory=dict)

    def connection(self, junction_id: int, incoming_road: int, turn: str) -> Connection:
        for c in self.junctions[junction_id].connections:
            if c.incoming_road == incoming_road and c.turn == turn:
                return c
        raise KeyError(f"junction {junction_id} has no {turn} movement from road {incoming_road}")


_TURNS = {1: "right", 2: "straight", 3: "left"}  # side offset from the incoming side -> movement


def _connecting_plan(junction: Junction, side_in: int, side_out: int) -> PlanView:
    """Reference line of the connecting road from arm ``side_in`` into the junction and out of ``side_out``.

    It starts on the incoming arm's reference line heading inwards, so lane -1 continues the incoming lane,
    and ends on the outgoing arm's reference line heading outwards. Turns are clothoid-arc-clothoid curves
    whose size is fitted to the junction so the ends land exactly on the boundary.
    """
    x, y = junction.arm_point(side_in)
    heading = junction.arm_direction(side_in) + math.pi
    plan = PlanView(x, y, heading)
    turn = _TURNS[(side_out - side_in) % 4]
    if turn == "straight":
        return plan.line(2 * junction.half_size_m)
    angle = math.pi / 2 if turn == "right" else -math.pi / 2
    unit_forward, _ = turn_displacement(angle, 1.0, JUNCTION_SPIRAL_FRACTION)
    return plan.turn(angle, junction.half_size_m / unit_forward, JUNCTION_SPIRAL_FRACTION)


class NetworkBuilder:
    """Lays a network piece by piece along a path: straights and curves extend the current road, a
    junction ends it, adds the crossing with its stubs and connecting roads, and starts the next road.

    The path actually driven (road id, lane id) is kept in :attr:`legs`, lanes always being -1 on the
    roads this builder lays and on connecting roads.
    """

    def __init__(self, name: str, x_m: float = 0.0, y_m: float = 0.0, heading_rad: float = 0.0) -> None:
        self.network = RoadNetwork(name)
        self.legs: list[tuple[int, int]] = []
        self._ids = 0
        self._current = self._new_road(PlanView(x_m, y_m, heading_rad))
        self.legs.append((self._current.id, -1))

    def _new_road(self, plan: PlanView, **kwargs) -> Road:
        road = Road(self._ids, plan, **kwargs)
        self.network.roads[road.id] = road
        self._ids += 1
        return road

    def straight(self, length_m: float) -> NetworkBuilder:
        self._current.plan.line(length_m)
        return self

    def curve(self, angle_deg: float, radius_m: float) -> NetworkBuilder:
        """Turn by ``angle_deg`` (positive right) with minimum radius ``radius_m``, clothoids at both ends."""
        self._current.plan.turn(math.radians(angle_deg), radius_m)
        return self

    def junction(self, turn: str) -> NetworkBuilder:
        """End the current road at a new four-arm junction and continue out of it by ``turn``."""
        road = self._current
        if road.plan.length_m == 0:
            road.plan.line(1.0)
        x, y, heading = road.plan.end_pose
        h = JUNCTION_HALF_SIZE_M
        junction = Junction(len(self.network.junctions), x + h * math.cos(heading), y + h * math.sin(heading),
                            heading, route_turn=turn)
        self.network.junctions[junction.id] = junction
        road.successor = Link("junction", junction.id)
        junction.arms[0] = (road.id, "end")
        side_out = {v: k for k, v in _TURNS.items()}[turn]
        for side in (1, 2, 3):
            px, py = junction.arm_point(side)
            arm = self._new_road(PlanView(px, py, junction.arm_direction(side)))
            arm.predecessor = Link("junction", junction.id)
            junction.arms[side] = (arm.id, "start")
            if side != side_out:
                arm.plan.line(STUB_LENGTH_M)
            else:
                nxt = arm
        self._connect_all(junction)
        connection = self.network.connection(junction.id, road.id, turn)
        self.legs += [(connection.connecting_road, -1), (nxt.id, -1)]
        self._current = nxt
        return self

    def _connect_all(self, junction: Junction) -> None:
        for side_in, (road_in, contact) in sorted(junction.arms.items()):
            lane_in = -1 if contact == "end" else 1
            for delta, turn in _TURNS.items():
                side_out = (side_in + delta) % 4
                conn = self._new_road(_connecting_plan(junction, side_in, side_out), junction=junction.id,
                                      lanes=(-1,))
                road_out, contact_out = junction.arms[side_out]
                conn.predecessor = Link("road", road_in, contact)
                conn.successor = Link("road", road_out, contact_out)
                junction.connections.append(
                    Connection(len(junction.connections), road_in, conn.id, "start", ((lane_in, -1),), turn))

    def build(self) -> tuple[RoadNetwork, list[tuple[int, int]]]:
        """Finish: the network and the driven legs (road id, lane id) from start to end."""
        if self._current.plan.length_m == 0:
            self._current.plan.line(1.0)
        return self.network, list(self.legs)
