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

# (kind, lateral band in metres from the driven lane's centre, right +)
_EDGE_IN = ROAD_HALF_WIDTH_M - EDGE_LINE_INSET_M - LINE_WIDTH_M - LANE_HALF_WIDTH_M
MARKINGS: tuple[tuple[str, float, float], ...] = (
    ("Broken", -LANE_HALF_WIDTH_M - LINE_WIDTH_M / 2, -LANE_HALF_WIDTH_M + LINE_WIDTH_M / 2),
    ("Solid", _EDGE_IN, _EDGE_IN + LINE_WIDTH_M),
    ("Solid", -2 * LANE_HALF_WIDTH_M - _EDGE_IN - LINE_WIDTH_M, -2 * LANE_HALF_WIDTH_M - _EDGE_IN),
)


def footprint(x_m: float, y_m: float, yaw_rad: float, params: VehicleParams) -> np.ndarray:
    """(4, 2) corners of the vehicle body in the world frame."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    hl, hw = params.length_m / 2, params.width_m / 2
    local = np.array([[hl, -hw], [hl, hw], [-hl, hw], [-hl, -hw]])
    return np.stack([x_m + local[:, 0] * c - local[:, 1] * s, y_m + local[:, 0] * s + local[:, 1] * c], 1)


class CollisionSensor:
    """Detects overlap between the vehicle footprint and the scene's boxes (separating axis test)."""

    def __init__(self, scene: Scene) -> None:
        self.boxes = scene.box_footprints
        self.centres = self.boxes.mean(axis=1) if len(self.boxes) else np.zeros((0, 2))
        self.radii = (np.linalg.norm(self.boxes - self.centres[:, None, :], axis=2).max(axis=1)
                      if len(self.boxes) else np.zeros(0))

    def hits(self, body: np.ndarray) -> list[int]:
        """Indices of boxes the body (4, 2) overlaps."""
        if not len(self.boxes):
            return []
        centre = body.mean(axis=0)
        reach = np.linalg.norm(body - centre, axis=1).max()
        near = np.flatnonzero(np.hypot(*(self.centres - centre).T) < self.radii + reach)
        return [int(i) for i in near if convex_overlap(body, self.boxes[i])]


def touched_markings(lateral_m: float, heading_error_rad: float, params: VehicleParams) -> frozenset[int]:
    """Indices into :data:`MARKINGS` that the body overlaps, from the lane-relative pose of its centre."""
    hl, hw = params.length_m / 2, params.width_m / 2
    s, c = math.sin(heading_error_rad), math.cos(heading_error_rad)
    corners = [lateral_m + fx * s + fy * c for fx in (hl, -hl) for fy in (hw, -hw)]
    lo, hi = min(corners), max(corners)
    return frozenset(i for i, (_, a, b) in enumerate(MARKINGS) if lo <= b and hi >= a)
