"""Routes: the lane-centre path an episode drives, and the named route suites.

A :class:`Route` is the centre line of the lanes driven from start to goal, sampled every 0.5 m, with the
map it lives on. Named routes are built on their own small maps by :class:`sim.roadnet.NetworkBuilder`;
``random:<seed>`` builds an unseen map and route from a seed. The paper's suite (``--routes paper``) is
``straight``, ``one-turn`` and ``two-turn`` as in CARIL's Town04 evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sim.errors import UnknownNameError, UsageError, unknown_name
from sim.roadnet import LANE_WIDTH_M, NetworkBuilder, RoadNetwork
from sim.split import HELDOUT_MINI_SUITE, HELDOUT_SUITE
from sim.types import LaneFrame, RoadOption

COMMAND_LOOKAHEAD_M = 20.0  # a junction's command starts this far before its entry (metres along the route)
COMMAND_HOLD_M = 10.0  # ... and holds this far past its exit, until the car has settled in the exit lane
TURN_THRESHOLD_DEG = 30.0  # a heading change through a junction beyond this is a turn, else straight
ROUTE_EXTENSION_M = 60.0  # road laid beyond the goal so the camera never sees the world end
MIN_ROAD_CLEARANCE_M = 22.0  # unrelated roads keep their centre lines at least this far apart


@dataclass(frozen=True)
class Projection:
    """Where a point lies relative to the route: sample index, arc length, offset (right +), heading."""

    index: int
    distance_along_m: float
    lateral_offset_m: float
    heading_rad: float
    curvature_1pm: float


class Route:
    """A sampled lane-centre path. Arrays are indexed by sample; ``s_m`` is the arc length from the start."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, in_junction: np.ndarray, road_id: np.ndarray,
                 lane_id: np.ndarray, network: RoadNetwork | None = None, map_seed: int = 0) -> None:
        self.name, self.network, self.map_seed = name, network, map_seed
        self.x, self.y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.in_junction, self.road_id, self.lane_id = in_junction, road_id, lane_id
        seg = np.hypot(np.diff(self.x), np.diff(self.y))
        self.s_m = np.concatenate([[0.0], np.cumsum(seg)])
        self.heading_rad = np.unwrap(np.arctan2(np.diff(self.y), np.diff(self.x)))
        self.heading_rad = np.append(self.heading_rad, self.heading_rad[-1])
        dh = np.gradient(self.heading_rad, self.s_m)
        self.curvature_1pm = np.convolve(dh, np.ones(5) / 5, mode="same")  # smooth the finite differences
        self.length_m = float(self.s_m[-1])
        self.command = route_commands(self.s_m, self.heading_rad, np.asarray(in_junction, bool))

    def command_at(self, distance_along_m: float) -> RoadOption:
        """The navigation command at ``distance_along_m`` metres along the route (see :class:`RoadOption`)."""
        i = min(int(np.searchsorted(self.s_m, distance_along_m)), len(self.s_m) - 1)
        return RoadOption(int(self.command[i]))

    def __repr__(self) -> str:
        return f"Route({self.name!r}, length_m={self.length_m:.1f})"

    def start_pose(self) -> tuple[float, float, float]:
        """(x, y, heading rad) of the first sample: where the vehicle is spawned."""
        return float(self.x[0]), float(self.y[0]), float(self.heading_rad[0])

    def project(self, x: float, y: float, hint: int | None = None, window: int = 80) -> Projection:
        """Project a point onto the route; ``hint`` (the last index) restricts the search to nearby samples
        so a route that passes near itself is followed in order."""
        lo, hi = (0, len(self.x) - 1) if hint is None else (max(0, hint - window // 4), min(len(self.x) - 1,
                                                                                           hint + window))
        dx, dy = self.x[lo:hi + 1] - x, self.y[lo:hi + 1] - y
        i = lo + int(np.argmin(dx * dx + dy * dy))
        j = min(i, len(self.x) - 2)
        if i > 0 and i == hi:
            j = i - 1
        ex, ey = self.x[j + 1] - self.x[j], self.y[j + 1] - self.y[j]
        seg2 = ex * ex + ey * ey
        t = 0.0 if seg2 == 0 else min(1.0, max(0.0, ((x - self.x[j]) * ex + (y - self.y[j]) * ey) / seg2))
        if j > 0 and t == 0.0:  # the point lies before this segment: use the previous one
            j -= 1
            ex, ey = self.x[j + 1] - self.x[j], self.y[j + 1] - self.y[j]
            seg2 = ex * ex + ey * ey
            t = min(1.0, max(0.0, ((x - self.x[j]) * ex + (y - self.y[j]) * ey) / seg2))
        px, py = self.x[j] + t * ex, self.y[j] + t * ey
        heading = math.atan2(ey, ex)
        lateral = -(x - px) * math.sin(heading) + (y - py) * math.cos(heading)
        s = self.s_m[j] + t * math.sqrt(seg2)
        k = self.curvature_1pm[j] * (1 - t) + self.curvature_1pm[j + 1] * t
        return Projection(j if t < 0.5 else j + 1, float(s), float(lateral), heading, float(k))

    def curvature_ahead(self, s_m: float, distance_m: float) -> np.ndarray:
        """Curvatures of the samples from ``s_m`` to ``s_m + distance_m`` (1/m)."""
        i0, i1 = np.searchsorted(self.s_m, [s_m, s_m + distance_m])
        return self.curvature_1pm[i0:max(i1, i0 + 1)]


def route_commands(s_m: np.ndarray, heading_rad: np.ndarray, in_junction: np.ndarray) -> np.ndarray:
    """Per-sample :class:`RoadOption` values (int8): each junction's movement, from its entry's heading to its
    exit's (unwrapped radians, positive turning right), over the junction, the :data:`COMMAND_LOOKAHEAD_M`
    before it and the :data:`COMMAND_HOLD_M` after it; ``LANEFOLLOW`` elsewhere.

    The hold matters: a policy that leaves a turn wide is still straddling the centre line at the exit, and
    a lane-following command there lets it settle in whichever lane is nearer, the oncoming one included;
    the turn's command keeps asking for the route's lane until it is reached.
    """
    command = np.full(len(s_m), int(RoadOption.LANEFOLLOW), np.int8)
    edges = np.diff(np.concatenate([[0], in_junction.astype(np.int8), [0]]))
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        turn = math.degrees(heading_rad[min(stop, len(s_m) - 1)] - heading_rad[max(start - 1, 0)])
        option = RoadOption.STRAIGHT if abs(turn) < TURN_THRESHOLD_DEG else (
            RoadOption.RIGHT if turn > 0 else RoadOption.LEFT)
        first = int(np.searchsorted(s_m, s_m[start] - COMMAND_LOOKAHEAD_M))
        last = int(np.searchsorted(s_m, s_m[stop - 1] + COMMAND_HOLD_M, side="right"))
        command[first:last] = int(option)
    return command


def lane_frame_on_route(route: Route, x_m: float, y_m: float, yaw_rad: float,
                        hint: int | None) -> tuple[LaneFrame, int]:
    """The lane frame of a vehicle at ``(x_m, y_m)`` heading ``yaw_rad`` on ``route``, computed the same way by
    both backends (projection on the lane centre; heading error wrapped to [-pi, pi)), and the
    route sample index to pass as ``hint`` next time."""
    p = route.project(x_m, y_m, hint)
    err = (yaw_rad - p.heading_rad + math.pi) % (2 * math.pi) - math.pi
    return LaneFrame(
        lateral_offset_m=p.lateral_offset_m,
        heading_error_deg=math.degrees(err),
        route_progress=min(1.0, p.distance_along_m / route.length_m),
        distance_along_m=p.distance_along_m,
        distance_to_goal_m=max(0.0, route.length_m - p.distance_along_m),
        curvature_1pm=p.curvature_1pm,
        in_junction=bool(route.in_junction[p.index]),
        road_id=int(route.road_id[p.index]),
        lane_id=int(route.lane_id[p.index]),
    ), p.index



@dataclass(frozen=True)
class RouteSpec:
    """A named route: its pieces as ``(kind, *args)`` for :class:`NetworkBuilder` and a description."""

    name: str
    pieces: tuple[tuple, ...]
    description: str


NAMED_ROUTES: dict[str, RouteSpec] = {s.name: s for s in (
    RouteSpec("straight", (("straight", 220), ("junction", "straight"), ("straight", 140)),
              "a straight road through one junction (paper: Town04 spawn 81 to 270)"),
    RouteSpec("one-turn", (("straight", 150), ("junction", "right"), ("straight", 150)),
              "one right turn at a junction between straights (paper: Town04 spawn 209 to 18)"),
    RouteSpec("two-turn", (("straight", 120), ("junction", "left"), ("straight", 130), ("junction", "right"),
                           ("straight", 120)),
              "a left then a right junction turn (paper: Town04 spawn 224 to 190)"),
    RouteSpec("s-curve", (("straight", 60), ("curve", 70, 40), ("straight", 25), ("curve", -70, 40),
                          ("straight", 80)),
              "an S-bend of two 70 degree curves of 40 m radius"),
    RouteSpec("curves", (("straight", 50), ("curve", 45, 90), ("straight", 40), ("curve", -90, 28),
                         ("straight", 40), ("curve", 60, 55), ("straight", 60)),
              "curves of 90 m, 28 m and 55 m radius in both directions"),
    RouteSpec("mixed", (("straight", 80), ("curve", 30, 60), ("straight", 50), ("junction", "left"),
                        ("straight", 90), ("curve", -45, 35), ("straight", 40), ("junction", "right"),
                        ("straight", 100), ("curve", 60, 50), ("straight", 60), ("junction", "straight"),
                        ("straight", 80)),
              "a long route mixing curves and all three junction movements"),
)}

ROUTE_SUITES: dict[str, tuple[str, ...]] = {
    "paper": ("straight", "one-turn", "two-turn"),
    "named": tuple(NAMED_ROUTES),
    "heldout": HELDOUT_SUITE,  # generated maps never recorded for training (sim/split.py)
    "heldout-mini": HELDOUT_MINI_SUITE,
}
MAX_RANGE_MAPS = 10_000  # random:<a>-<b> names at most this many maps


def random_pieces(seed: int) -> tuple[tuple, ...]:
    """Pieces of a procedurally generated route: straights, curves of varied radius and junction turns."""
    rng = np.random.default_rng(seed)
    pieces: list[tuple] = [("straight", float(rng.uniform(60, 120)))]
    for _ in range(int(rng.integers(4, 8))):
        if rng.random() < 0.5:
            pieces.append(("junction", str(rng.choice(["left", "right", "straight"]))))
        else:
            angle = float(rng.uniform(20, 90)) * float(rng.choice([-1.0, 1.0]))
            pieces.append(("curve", angle, float(rng.uniform(25, 120))))
        pieces.append(("straight", float(rng.uniform(40, 120))))
    return tuple(pieces)


def build_network(name: str, pieces: tuple[tuple, ...]) -> tuple[RoadNetwork, list[tuple[int, int]]]:
    """Lay the pieces with :class:`NetworkBuilder`, plus the extension beyond the goal."""
    builder = NetworkBuilder(name)
    for kind, *args in pieces:
        getattr(builder, kind)(*args)
    builder.straight(ROUTE_EXTENSION_M)
    return builder.build()


def route_from_legs(name: str, network: RoadNetwork, legs: list[tuple[int, int]], map_seed: int = 0,
                    trim_end_m: float = ROUTE_EXTENSION_M) -> Route:
    """Concatenate the lane centres of ``legs`` into a :class:`Route`, trimming ``trim_end_m`` at the end."""
    xs, ys, junction, roads, lanes = [], [], [], [], []
    for k, (road_id, lane_id) in enumerate(legs):
        road = network.roads[road_id]
        c = road.lane_centre(lane_id)
        sl = slice(1 if k else 0, None)  # consecutive legs share their joining point
        n = len(c["x"][sl])
        xs.append(c["x"][sl])
        ys.append(c["y"][sl])
        junction.append(np.full(n, road.junction >= 0))
        roads.append(np.full(n, road_id, np.int32))
        lanes.append(np.full(n, lane_id, np.int8))
    x, y = np.concatenate(xs), np.concatenate(ys)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    keep = s <= s[-1] - trim_end_m + 1e-9
    cols = [np.concatenate(c)[keep] for c in (junction, roads, lanes)]
    return Route(name, x[keep], y[keep], *cols, network=network, map_seed=map_seed)


def road_clearance_violations(network: RoadNetwork) -> list[tuple[int, int, float]]:
    """Pairs of unrelated roads whose centre lines come closer than :data:`MIN_ROAD_CLEARANCE_M`.

    Roads are related when they share a junction or a link; connecting roads are checked through their
    junction's arms. Returns ``(road_a, road_b, distance_m)`` for each violation.
    """
    group = {}
    for road in network.roads.values():
        keys = {("road", road.id)}
        for link in (road.predecessor, road.successor):
            if link is not None:
                keys.add((link.kind, link.id))
        if road.junction >= 0:
            keys.add(("junction", road.junction))
        group[road.id] = keys
    plain = [r for r in network.roads.values() if r.junction < 0]
    pts = {r.id: np.stack([r.samples["x"][::4], r.samples["y"][::4]], 1) for r in plain}
    bad = []
    for i, a in enumerate(plain):
        for b in plain[i + 1:]:
            if group[a.id] & group[b.id]:
                continue
            d = np.sqrt(((pts[a.id][:, None, :] - pts[b.id][None, :, :]) ** 2).sum(-1)).min()
            if d < MIN_ROAD_CLEARANCE_M:
                bad.append((a.id, b.id, float(d)))
    return bad


@lru_cache(maxsize=32)
def get_route(name: str) -> Route:
    """The route called ``name`` (a named route or ``random:<seed>``); cached, routes are immutable."""
    if name.startswith("random:"):
        try:
            seed = int(name.split(":", 1)[1])
        except ValueError:
            seed = -1
        if seed < 0:
            raise unknown_name("route", name, list(NAMED_ROUTES), "Random routes are random:<seed>, a seed of 0 "
                               "or more.")
        for attempt in range(100):  # re-draw until the layout does not cross itself
            network, legs = build_network(name, random_pieces(seed * 1000 + attempt))
            if not road_clearance_violations(network):
                return route_from_legs(name, network, legs, map_seed=seed)
        raise RuntimeError(f"could not lay a non-overlapping random route for seed {seed}")
    if name not in NAMED_ROUTES:
        suite = f" {name!r} is a suite of routes: name one of them here." if name in ROUTE_SUITES else ""
        raise unknown_name("route", name, list(NAMED_ROUTES), f"Or random:<seed> for a generated route.{suite}")
    network, legs = build_network(name, NAMED_ROUTES[name].pieces)
    return route_from_legs(name, network, legs, map_seed=sum(map(ord, name)))


def route_names() -> list[str]:
    """Valid route names (besides ``random:<seed>``) and suite names."""
    return [*NAMED_ROUTES, *ROUTE_SUITES]


def expand_map_range(item: str) -> tuple[str, ...]:
    """``random:<a>-<b>`` -> the generated maps ``random:a`` .. ``random:b`` (inclusive); any other name as is."""
    if not item.startswith("random:") or "-" not in item[7:]:
        return (item,)
    lo, _, hi = item[7:].partition("-")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        raise UsageError(f"route range {item!r}: write random:<first>-<last> with whole seeds, e.g. "
                         "random:100000-100099") from None
    if a < 0 or b < a or b - a + 1 > MAX_RANGE_MAPS:
        raise UsageError(f"route range {item!r}: the seeds must satisfy 0 <= first <= last and name at most "
                         f"{MAX_RANGE_MAPS} maps")
    return tuple(f"random:{s}" for s in range(a, b + 1))


def parse_routes(spec: str) -> list[str]:
    """Expand a comma-separated list of route and suite names (``paper``, ``named``, ``heldout``) and map ranges
    (``random:100000-100095``) into route names."""
    names: list[str] = []
    seen: set[str] = set()
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        expanded = ROUTE_SUITES.get(item) or expand_map_range(item)
        for name in expanded:
            try:
                get_route(name)
            except UnknownNameError as e:  # here suites are valid too: say so
                raise UnknownNameError(f"{e.args[0]} Suites: {', '.join(ROUTE_SUITES)}.") from None
            if name not in seen:
                names.append(name)
                seen.add(name)
    if not names:
        raise unknown_name("route", spec, route_names())
    return names


LANE_HALF_WIDTH_M = LANE_WIDTH_M / 2
