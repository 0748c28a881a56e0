"""The static 3D scene the embedded camera renders: flat ground polygons and vertical boxes.

The road network (``sim.roadnet``) is turned into this form once per map (``sim.scene_builder``); the renderer
(``sim.camera``) only knows this module. Coordinates are world metres in CARLA's frame (x, y; ground at z=0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Material(IntEnum):
    """Surface kinds. Ground polygons are painted in ascending order, so markings land on asphalt."""

    GRASS = 0  # what is not covered by anything else (the renderer's ground fill)
    JUNCTION = 1  # asphalt inside junctions (no markings); painted first, corner sidewalks go on top
    SIDEWALK = 2
    ASPHALT = 3
    KERB = 4
    MARKING_WHITE = 5
    STOP_LINE = 6
    BUILDING = 10
    WALL = 11
    POLE = 12


@dataclass(frozen=True)
class Scene:
    """Flat convex quads on the ground plus vertical extruded boxes.

    ``ground_quads`` (N, 4, 2) float64: convex quads on z=0, vertices in order around the quad.
    ``ground_material`` (N,) uint8: a :class:`Material` per quad.
    ``box_footprints`` (M, 4, 2) float64: convex footprints of boxes standing on the ground.
    ``box_heights_m`` (M,) float64 and ``box_material`` (M,) uint8; ``box_shade`` (M,) float32 in [0.6, 1.2],
    a per-box brightness factor so neighbouring buildings differ.
    """

    ground_quads: np.ndarray
    ground_material: np.ndarray
    box_footprints: np.ndarray
    box_heights_m: np.ndarray
    box_material: np.ndarray
    box_shade: np.ndarray

    def __post_init__(self) -> None:
        n, m = len(self.ground_quads), len(self.box_footprints)
        assert self.ground_quads.shape == (n, 4, 2) and self.ground_material.shape == (n,)
        assert self.box_footprints.shape == (m, 4, 2) and self.box_heights_m.shape == (m,)
        assert self.box_material.shape == (m,) and self.box_shade.shape == (m,)


def quad_strip(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Quads between two polylines of equal length (K, 2): returns (K-1, 4, 2) in order around each quad."""
    return np.stack([left[:-1], left[1:], right[1:], right[:-1]], axis=1)


def box_footprint(cx: float, cy: float, yaw_rad: float, length_m: float, width_m: float) -> np.ndarray:
    """The (4, 2) footprint of a rectangle centred at (cx, cy) with its length along ``yaw_rad``."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    fwd, right = np.array([c, s]) * length_m / 2, np.array([-s, c]) * width_m / 2
    centre = np.array([cx, cy])
    return np.stack([centre + fwd - right, centre + fwd + right, centre - fwd + right, centre - fwd - right])


def convex_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons (K, 2) overlap (separating axis test; touching counts as overlap)."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        pa, pb = a @ normals.T, b @ normals.T
        if ((pa.max(axis=0) < pb.min(axis=0)) | (pb.max(axis=0) < pa.min(axis=0))).any():
            return False
    return True


def penetration_depth(a: np.ndarray, b: np.ndarray) -> float:
    """How far two convex polygons (K, 2) overlap along their least-overlapping edge normal, metres (the
    distance one must move to free the other; 0 when they are apart)."""
    depth = math.inf
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        length = np.linalg.norm(normals, axis=1)
        normals = normals[length > 1e-12] / length[length > 1e-12, None]  # a zero-length edge has no normal
        if not len(normals):
            continue
        pa, pb = a @ normals.T, b @ normals.T
        overlap = np.minimum(pa.max(axis=0), pb.max(axis=0)) - np.maximum(pa.min(axis=0), pb.min(axis=0))
        depth = min(depth, float(overlap.min()))
    return max(depth, 0.0)


def straight_test_scene(length_m: float = 200.0, lane_width_m: float = 3.5) -> Scene:
    """A straight two-lane road along +x from x=-20 with dashed centre line, edge lines and a few buildings.

    Small and analytic, for renderer tests and benchmarks that must not depend on the map generator.
    """
    xs = np.arange(-20.0, length_m + 1e-9, 5.0)
    half = lane_width_m

    def strip(y0: float, y1: float) -> np.ndarray:
        return quad_strip(np.stack([xs, np.full_like(xs, y0)], 1), np.stack([xs, np.full_like(xs, y1)], 1))

    quads = [strip(-half, half), strip(-half - 0.3, -half + 0.0), strip(half, half + 0.3)]
    mats = [Material.ASPHALT, Material.KERB, Material.KERB]
    edge = 0.15
    quads += [strip(-half + 0.1, -half + 0.1 + edge), strip(half - 0.1 - edge, half - 0.1)]
    mats += [Material.MARKING_WHITE, Material.MARKING_WHITE]
    dashes = [box_footprint(x + 1.5, 0.0, 0.0, 3.0, 0.15) for x in np.arange(-20.0, length_m, 9.0)]
    quads.append(np.array(dashes))
    mats.append(Material.MARKING_WHITE)
    ground = np.concatenate(quads)
    material = np.concatenate([np.full(len(q), m, np.uint8) for q, m in zip(quads, mats, strict=True)])
    boxes = [box_footprint(x, side * (half + 12.0), 0.0, 14.0, 10.0) for x in range(0, int(length_m), 25)
             for side in (-1, 1)]
    m = len(boxes)
    return Scene(ground, material, np.array(boxes), np.linspace(6.0, 18.0, m), np.full(m, Material.BUILDING, np.uint8),
                 np.linspace(0.7, 1.1, m).astype(np.float32))
