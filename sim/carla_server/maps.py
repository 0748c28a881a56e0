"""The maps ``caril serve`` can load: our routes' road networks, as OpenDRIVE plus spawn points and a scene.

A map is named after a route (``straight``, ``one-turn``, ..., ``mixed``, ``random:<seed>``) and holds that
route's whole network. Its spawn points (``map.get_spawn_points()``) are, in order: the route's start
(index 0), its goal (index 1), then the centres of both lanes of every road outside junctions every
:data:`SPAWN_SPACING_M` metres. So ``0:1`` is the route itself for scripts that pick spawn indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sim.carla_server.encoding import Transform
from sim.embedded import scene_for
from sim.errors import UsageError
from sim.opendrive import to_opendrive
from sim.roadnet import RoadNetwork
from sim.routes import NAMED_ROUTES, Route, get_route
from sim.scene import Scene
from sim.sensors import CollisionSensor

MAP_PATH_PREFIX = "Carla/Maps/"
SPAWN_SPACING_M = 40.0
SPAWN_END_MARGIN_M = 10.0  # no spawn points this close to a road's ends (junction entries)
SPAWN_Z_M = 0.3  # spawn points float a little above the road, as in CARLA's towns
DEFAULT_MAP = "mixed"


@dataclass(frozen=True)
class ServedMap:
    """One loadable map: the route and its network, the OpenDRIVE text, spawn points and the scene."""

    name: str
    route: Route
    xodr: str
    spawn_points: tuple[Transform, ...]
    scene: Scene
    collision: CollisionSensor

    @property
    def network(self) -> RoadNetwork:
        return self.route.network

    @property
    def path(self) -> str:
        """The name the client sees (``Carla/Maps/NAME``); it keeps the part after the last ``/``."""
        return MAP_PATH_PREFIX + self.name


def available_maps() -> list[str]:
    """Names for ``client.get_available_maps()`` (``random:<seed>`` also loads)."""
    return [MAP_PATH_PREFIX + name for name in NAMED_ROUTES]


def spawn_points(route: Route) -> list[Transform]:
    """Route start, route goal, then lane centres along every ordinary road (see the module docstring)."""
    def transform(x: float, y: float, heading: float) -> Transform:
        yaw = (math.degrees(heading) + 180.0) % 360.0 - 180.0
        return Transform(float(x), float(y), SPAWN_Z_M, 0.0, yaw, 0.0)

    points = [transform(*route.start_pose()),
              transform(route.x[-1], route.y[-1], route.heading_rad[-1])]
    for road_id in sorted(route.network.roads):
        road = route.network.roads[road_id]
        if road.junction >= 0 or road.length_m < 2 * SPAWN_END_MARGIN_M:
            continue
        s = road.samples["s"]
        for lane in sorted(road.lanes):
            centre = road.lane_centre(lane)
            along = s if lane < 0 else road.length_m - s[::-1]  # distance in the lane's driving direction
            for d in np.arange(SPAWN_END_MARGIN_M, road.length_m - SPAWN_END_MARGIN_M + 1e-9, SPAWN_SPACING_M):
                k = int(np.argmin(np.abs(along - d)))
                points.append(transform(centre["x"][k], centre["y"][k], centre["heading"][k]))
    return points


@lru_cache(maxsize=8)
def load_map(name: str) -> ServedMap:
    """The map called ``name`` (cached: maps are immutable); an unknown name lists the valid ones."""
    base = name.rsplit("/", 1)[-1]
    try:
        route = get_route(base)
    except KeyError:
        raise UsageError(f"Map '{base}' not found: caril serve's maps are its routes: {', '.join(NAMED_ROUTES)} "
                         "or random:<seed>") from None
    scene = scene_for(route.name)
    return ServedMap(route.name, route, to_opendrive(route.network, route.name), tuple(spawn_points(route)), scene,
                     CollisionSensor(scene))
