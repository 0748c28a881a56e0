"""The embedded simulator's collision and lane-invasion sensors, with CARLA's event semantics.

Collision: the vehicle's footprint overlaps an obstacle (a building); like CARLA's sensor it reports an event
on every tick in contact, and the body does not pass through (the simulator stops it). Lane invasion: a body
corner crosses a marking that no corner touched on the previous tick; the event names the markings as
CARLA's ``carla.LaneMarkingType`` does (``Broken`` centre line, ``Solid`` edge lines). Junctions have none.
"""

from __future__ import annotations

import math

import numpy as np

from sim.dynamics import VehicleParams
from sim.routes import LANE_HALF_WIDTH_M
from sim.scene import Scene, convex_overlap
from sim.scene_builder import EDGE_LINE_INSET_M, LINE_WIDTH_M, ROAD_HALF_WIDTH_M

VEHICLE_MASS_KG = 1845.0  # CARLA's Model 3, for the collision impulse
GRID_CELL_M = 8.0  # the collision sensor's grid cell, metres

# (kind, lateral band in metres from the driven lane's centre, right +)
_EDGE_IN = ROAD_HALF_WIDTH_M - EDGE_LINE_INSET_M - LINE_WIDTH_M - LANE_HALF_WIDTH_M
MARKINGS: tuple[tuple[str, float, float], ...] = (
    ("Broken", -LANE_HALF_WIDTH_M - LINE_WIDTH_M / 2, -LANE_HALF_WIDTH_M + LINE_WIDTH_M / 2),
    ("Solid", _EDGE_IN, _EDGE_IN + LINE_WIDTH_M),
    ("Solid", -2 * LANE_HALF_WIDTH_M - _EDGE_IN - LINE_WIDTH_M, -2 * LANE_HALF_WIDTH_M - _EDGE_IN),
)


def footprint(x_m: float, y_m: float, yaw_rad: float, params: VehicleParams) -> np.ndarray:
    """(4, 2) corners of the vehicle body in the world frame."""
    x_m, y_m, c, s = float(x_m), float(y_m), math.cos(yaw_rad), math.sin(yaw_rad)
    hl, hw = params.length_m / 2, params.width_m / 2
    return np.array([[x_m + fx * c - fy * s, y_m + fx * s + fy * c]
                     for fx, fy in ((hl, -hw), (hl, hw), (-hl, hw), (-hl, -hw))])


class CollisionSensor:
    """Detects overlap between the vehicle footprint and the scene's boxes (separating axis test).

    A grid of :data:`GRID_CELL_M` cells lists the boxes whose bounding rectangle reaches each cell, so a
    query looks only at the boxes in the cells under the body (plain Python: a handful of numpy calls per
    tick cost more than the whole lookup).
    """

    def __init__(self, scene: Scene) -> None:
        self.boxes = scene.box_footprints
        self._cells: dict[tuple[int, int], list[int]] = {}
        for i, box in enumerate(self.boxes.tolist()):
            for cell in _cells_under(box):
                self._cells.setdefault(cell, []).append(i)

    def hits(self, body: np.ndarray) -> list[int]:
        """Indices (ascending) of boxes the body (4, 2) overlaps."""
        near = sorted({i for cell in _cells_under(body.tolist()) for i in self._cells.get(cell, ())})
        return [i for i in near if convex_overlap(body, self.boxes[i])]


def _cells_under(corners: list[list[float]]) -> list[tuple[int, int]]:
    """The grid cells that the bounding rectangle of ``corners`` [[x, y], ...] (metres) reaches."""
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    if not all(map(math.isfinite, xs + ys)):  # a nan or infinite corner overlaps nothing
        return []
    x0, x1 = math.floor(min(xs) / GRID_CELL_M), math.floor(max(xs) / GRID_CELL_M)
    y0, y1 = math.floor(min(ys) / GRID_CELL_M), math.floor(max(ys) / GRID_CELL_M)
    return [(i, j) for i in range(x0, x1 + 1) for j in range(y0, y1 + 1)]


def touched_markings(lateral_m: float, heading_error_rad: float, params: VehicleParams) -> frozenset[int]:
    """Indices into :data:`MARKINGS` that the body overlaps, from the lane-relative pose of its centre."""
    hl, hw = params.length_m / 2, params.width_m / 2
    s, c = math.sin(heading_error_rad), math.cos(heading_error_rad)
    corners = [lateral_m + fx * s + fy * c for fx in (hl, -hl) for fy in (hw, -hw)]
    lo, hi = min(corners), max(corners)
    return frozenset(i for i, (_, a, b) in enumerate(MARKINGS) if lo <= b and hi >= a)
