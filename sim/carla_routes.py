"""Routes on a CARLA map: the paper's Town04 routes and any ``start:end`` spawn-point pair, planned by our own
A* over the lane graph of ``map.get_topology()`` (CARLA's ``agents`` package is not in the ``carla`` wheel).

The graph: each topology pair ``(entry, exit)`` is one lane of one lane section, an edge from its entry
node to its exit node whose cost is its length (the lane walked with ``waypoint.next`` every
``graph_resolution_m``). Nodes are lane ends, merged when closer than ``node_tolerance_m`` (so a lane
flows into the junction lanes that start where it ends). Lane changes are extra edges from a lane's entry
node to the entry node of its neighbour in the same direction, costing ``lane_change_penalty_m``; the
route then moves across over ``lane_change_length_m``.

The chosen lanes are then walked every ``resolution_m`` (0.5 m, as the embedded routes) into a
:class:`sim.routes.Route` in CARLA's world frame, which is ours: no conversion at all.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import UsageError, unknown_name
from sim.routes import Route

PAPER_TOWN = "Town04"
# CARIL's Town04 evaluation routes as (start, end) spawn-point indices, under our route names
PAPER_ROUTES: dict[str, tuple[int, int]] = {"straight": (81, 270), "one-turn": (209, 18), "two-turn": (224, 190)}
ROUTE_SUITES: dict[str, tuple[str, ...]] = {"paper": ("straight", "one-turn", "two-turn")}


def map_base_name(map_name: str) -> str:
    """``Carla/Maps/Town04_Opt`` -> ``Town04_Opt``."""
    return map_name.rsplit("/", 1)[-1]


def is_paper_town(map_name: str) -> bool:
    """Town04 or its layered variant Town04_Opt (the same roads and spawn points)."""
    return map_base_name(map_name).split("_")[0] == PAPER_TOWN


def parse_route_name(name: str) -> tuple[int, int] | None:
    """``(start, end)`` spawn indices of a ``start:end`` name, None for a paper route name; anything else
    raises an error listing the valid forms."""
    if name in PAPER_ROUTES:
        return None
    parts = name.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    raise unknown_name("CARLA route", name, [*PAPER_ROUTES, *ROUTE_SUITES],
                       "Or start:end spawn-point indices of the map, e.g. 81:270.")


def carla_route_names(spec: str) -> list[str]:
    """Expand a comma-separated list of CARLA route names and suites (``paper``) and check their form
    (whether the spawn indices exist is only known once connected)."""
    names: list[str] = []
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        for name in ROUTE_SUITES.get(item, (item,)):
            parse_route_name(name)
            if name not in names:
                names.append(name)
    if not names:
        raise unknown_name("CARLA route", spec, [*PAPER_ROUTES, *ROUTE_SUITES])
    return names


def spawn_indices(name: str, map_name: str, n_spawn_points: int) -> tuple[int, int]:
    """The (start, end) spawn-point indices of route ``name`` on map ``map_name``, validated."""
    pair = parse_route_name(name)
    if pair is None:
        if not is_paper_town(map_name):
            raise UsageError(f"route {name!r} is one of the paper's {PAPER_TOWN} routes but the server runs "
                             f"{map_base_name(map_name)}; pass --town {PAPER_TOWN} or use start:end spawn indices")
        pair = PAPER_ROUTES[name]
    for index in pair:
        if not 0 <= index < n_spawn_points:
            raise UsageError(f"spawn point {index} of route {name!r} does not exist: "
                             f"{map_base_name(map_name)} has spawn points 0..{n_spawn_points - 1}")
    if pair[0] == pair[1]:
        raise UsageError(f"route {name!r} starts and ends at the same spawn point; choose two different ones")
    return pair


def _xyz(waypoint: Any) -> tuple[float, float, float]:
    loc = waypoint.transform.location
    return float(loc.x), float(loc.y), float(loc.z)


def _dist(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


def _key(waypoint: Any) -> tuple[int, int, int]:
    return int(waypoint.road_id), int(waypoint.section_id), int(waypoint.lane_id)


def walk_lane(start: Any, target: tuple[float, float, float], step_m: float, max_m: float) -> list[Any]:
    """Waypoints from ``start`` every ``step_m`` along its lane until within ``step_m`` of ``target``
    (the target itself is not included); where the lane splits, the successor nearest the target."""
    points, w = [start], start
    for _ in range(int(max_m / step_m) + 2):
        if _dist(_xyz(w), target) <= step_m:
            break
        nxt = w.next(step_m)
        if not nxt:
            break
        w = nxt[0] if len(nxt) == 1 else min(nxt, key=lambda c: _dist(_xyz(c), target))
        points.append(w)
    return points


@dataclass
class _Edge:
    """A lane of one lane section from its entry to its exit node, or (``lane_change``) a move at the start
    of a lane section from the entry node of a lane to the entry node of its neighbour (no length)."""

    entry: Any
    exit: Any
    start_node: int
    end_node: int
    cost_m: float
    length_m: float
    lane_change: bool = False


class RoutePlanner:
    """A* over a CARLA map's lane graph. Build once per map (it walks every lane), plan many routes.

    A lane change is an edge between the entry nodes of two neighbouring lanes of the same direction; the
    route then blends from the old lane's centre to the new one's over the next ``lane_change_length_m``.
    Two lane changes never follow each other (each would need its own stretch), and the lane section the
    route starts in is driven to its end before any change.
    """

    def __init__(self, carla_map: Any, resolution_m: float = 0.5, graph_resolution_m: float = 2.0,
                 node_tolerance_m: float = 0.5, lane_change_penalty_m: float = 20.0,
                 lane_change_length_m: float = 20.0) -> None:
        if not 0.05 <= resolution_m <= graph_resolution_m:
            raise UsageError(f"route resolution {resolution_m} m must be in 0.05..{graph_resolution_m} m")
        self.map = carla_map
        self.resolution_m, self.graph_resolution_m = resolution_m, graph_resolution_m
        self.node_tolerance_m = node_tolerance_m
        self.lane_change_penalty_m, self.lane_change_length_m = lane_change_penalty_m, lane_change_length_m
        self.nodes: list[tuple[float, float, float]] = []
        self._grid: dict[tuple[int, ...], list[int]] = {}
        self.edges: list[_Edge] = []
        self._lane_edge: dict[tuple[int, int, int], int] = {}
        self._out: dict[int, list[int]] = {}
        self._build()

    # -- graph ------------------------------------------------------------------------------------------
    def _node(self, p: tuple[float, float, float]) -> int:
        """The node at ``p``: an existing one within the tolerance, else a new one."""
        tol = self.node_tolerance_m
        cell = tuple(math.floor(c / tol) for c in p)
        for offset in itertools.product((-1, 0, 1), repeat=3):
            for n in self._grid.get(tuple(c + o for c, o in zip(cell, offset, strict=True)), ()):
                if _dist(self.nodes[n], p) <= tol:
                    return n
        self.nodes.append(p)
        self._grid.setdefault(cell, []).append(len(self.nodes) - 1)
        return len(self.nodes) - 1

    def _add_edge(self, edge: _Edge) -> int:
        self.edges.append(edge)
        self._out.setdefault(edge.start_node, []).append(len(self.edges) - 1)
        return len(self.edges) - 1

    def _build(self) -> None:
        for entry, exit_ in self.map.get_topology():
            a, b = _xyz(entry), _xyz(exit_)
            pts = [_xyz(w) for w in walk_lane(entry, b, self.graph_resolution_m, 1e5)] + [b]
            length = sum(_dist(p, q) for p, q in itertools.pairwise(pts))
            index = self._add_edge(_Edge(entry, exit_, self._node(a), self._node(b), length, length))
            self._lane_edge[_key(entry)] = index
        for index in range(len(self.edges)):
            self._add_lane_changes(self.edges[index])

    def _add_lane_changes(self, edge: _Edge) -> None:
        entry = edge.entry
        if entry.is_junction:
            return
        allowed = str(getattr(entry, "lane_change", "Both"))
        for side, flag in (("get_left_lane", "Left"), ("get_right_lane", "Right")):
            if "Both" not in allowed and flag not in allowed:
                continue
            neighbour = getattr(entry, side)()
            if neighbour is None or neighbour.lane_id * entry.lane_id <= 0:  # none, or the other direction
                continue
            target = self._lane_edge.get(_key(neighbour))
            if target is None:
                continue
            other = self.edges[target]
            self._add_edge(_Edge(entry, other.entry, edge.start_node, other.start_node,
                                 self.lane_change_penalty_m, 0.0, lane_change=True))

    def _edge_of(self, waypoint: Any) -> int:
        index = self._lane_edge.get(_key(waypoint))
        if index is None:
            raise UsageError(f"waypoint on road {waypoint.road_id} lane {waypoint.lane_id} is not on a driving lane "
                             "of the map's topology; choose other spawn points")
        return index

    def _astar(self, source: int, goal: int) -> list[int] | None:
        """Edge indices of the cheapest path from node ``source`` to node ``goal`` (None if unreachable).
        States are (node, arrived by a lane change) so that two lane changes never follow each other."""
        goal_p = self.nodes[goal]
        start = (source, False)
        best = {start: 0.0}
        came: dict[tuple[int, bool], tuple[tuple[int, bool], int]] = {}
        frontier = [(_dist(self.nodes[source], goal_p), 0.0, start)]
        while frontier:
            _, cost, state = heapq.heappop(frontier)
            node, changed = state
            if node == goal:
                path = []
                while state != start:
                    state, edge = came[state]
                    path.append(edge)
                return path[::-1]
            if cost > best.get(state, math.inf):
                continue
            for e in self._out.get(node, ()):
                edge = self.edges[e]
                if changed and edge.lane_change:
                    continue
                nxt, new = (edge.end_node, edge.lane_change), cost + edge.cost_m
                if new < best.get(nxt, math.inf):
                    best[nxt] = new
                    came[nxt] = (state, e)
                    heapq.heappush(frontier, (new + _dist(self.nodes[edge.end_node], goal_p), new, nxt))
        return None

    # -- planning ---------------------------------------------------------------------------------------
    def plan_waypoints(self, start: Any, end: Any) -> list[tuple[tuple[float, float, float], Any]]:
        """``(position, waypoint)`` pairs every ~``resolution_m`` from waypoint ``start`` to waypoint ``end``."""
        step = self.resolution_m
        first, last = self._edge_of(start), self._edge_of(end)
        end_p = _xyz(end)
        if first == last:
            direct = walk_lane(start, end_p, step, _walk_limit(self.edges[first], step))
            if _dist(_xyz(direct[-1]), end_p) <= step:
                return [(_xyz(w), w) for w in direct] + [(end_p, end)]
        path = self._astar(self.edges[first].end_node, self.edges[last].start_node)
        if path is None:
            raise UsageError(f"no drivable path from road {start.road_id} lane {start.lane_id} to road "
                             f"{end.road_id} lane {end.lane_id} on this map; choose other spawn points")
        out = [(_xyz(w), w) for w in walk_lane(start, _xyz(self.edges[first].exit), step, 1e5)]
        change_from = None
        for e in path:
            edge = self.edges[e]
            if edge.lane_change:
                change_from = edge.entry
                continue
            walked = walk_lane(edge.entry, _xyz(edge.exit), step, _walk_limit(edge, step))
            out.extend(self._blend(change_from, [(_xyz(w), w) for w in walked] + [(_xyz(edge.exit), edge.exit)]))
            change_from = None
        last_edge = self.edges[last]
        walked = walk_lane(last_edge.entry, end_p, step, _walk_limit(last_edge, step))
        out.extend(self._blend(change_from, [(_xyz(w), w) for w in walked] + [(end_p, end)]))
        return out

    def _blend(self, change_from: Any, points: list[tuple[tuple[float, float, float], Any]]
               ) -> list[tuple[tuple[float, float, float], Any]]:
        """After a lane change from the lane of ``change_from``: start on the old lane's centre (the
        neighbour of each point) and move across smoothly over ``lane_change_length_m``."""
        if change_from is None or len(points) < 2:
            return points
        back = "get_left_lane" if _is_left_of(change_from, points[0][1]) else "get_right_lane"
        total = sum(_dist(p, q) for (p, _), (q, _) in itertools.pairwise(points))
        span = max(self.resolution_m, min(self.lane_change_length_m, 0.8 * total))
        blended, along = [], 0.0
        for k, (p, w) in enumerate(points):
            if k:
                along += _dist(points[k - 1][0], p)
            weight = _smoothstep(min(1.0, along / span))
            old = getattr(w, back)() if weight < 1.0 else None
            if old is None or old.lane_id * w.lane_id <= 0:
                blended.append((p, w))
                continue
            q = _xyz(old)
            mix = tuple(qi + (pi - qi) * weight for pi, qi in zip(p, q, strict=True))
            blended.append((mix, old if weight < 0.5 else w))
        return blended

    def route(self, name: str, start_location: Any, end_location: Any) -> tuple[Route, np.ndarray]:
        """The :class:`Route` called ``name`` from the lane at ``start_location`` to the lane at
        ``end_location``, and the road height (m) at each of its samples."""
        start, end = self.map.get_waypoint(start_location), self.map.get_waypoint(end_location)
        if start is None or end is None:
            raise UsageError(f"route {name!r}: its start or end is not on a road of the map")
        return route_from_points(name, self.plan_waypoints(start, end), min_spacing_m=self.resolution_m / 2)


def _walk_limit(edge: _Edge, step_m: float) -> float:
    """How far :func:`walk_lane` may go along ``edge``. ``waypoint.next(d)`` advances the road's reference
    ``s`` by ``d``, and on the inside of a curve a lane's centre is shorter than its ``s`` span, by a factor
    R / (R - offset) that stays under 1.5 even for a junction's tightest turn; the walk stops at its target
    anyway, so the bound only keeps a walk that misses it finite."""
    return 1.5 * edge.length_m + 2 * step_m


def _is_left_of(a: Any, b: Any) -> bool:
    """Whether lane ``a`` is the left neighbour of lane ``b`` (same road and section)."""
    left = b.get_left_lane()
    return left is not None and _key(left)[2] == int(a.lane_id)


def _smoothstep(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def route_from_points(name: str, points: list[tuple[tuple[float, float, float], Any]],
                      min_spacing_m: float = 0.25) -> tuple[Route, np.ndarray]:
    """A :class:`Route` through ``(position, waypoint)`` pairs, skipping points closer than ``min_spacing_m``
    to the last kept one (repeated lane ends would make the curvature infinite), and the heights (m)."""
    kept: list[tuple[tuple[float, float, float], Any]] = []
    for p, w in points:
        if kept and math.hypot(p[0] - kept[-1][0][0], p[1] - kept[-1][0][1]) < min_spacing_m:
            continue
        kept.append((p, w))
    if len(kept) < 3:
        raise UsageError(f"route {name!r} is shorter than {3 * min_spacing_m:g} m; choose spawn points farther apart")
    x = np.array([p[0] for p, _ in kept])
    y = np.array([p[1] for p, _ in kept])
    junction = np.array([bool(w.is_junction) for _, w in kept])
    roads = np.array([int(w.road_id) for _, w in kept], np.int32)
    lanes = np.array([int(w.lane_id) for _, w in kept], np.int8)
    z = np.array([p[2] for p, _ in kept])
    return Route(name, x, y, junction, roads, lanes), z
