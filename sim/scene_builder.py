"""Turn a road network into the renderer's :class:`sim.scene.Scene`: asphalt, kerbs, sidewalks, markings,
junction surfaces with rounded corners, and buildings along the roads placed from the map seed.

Cross-section of every road (metres from its reference line, both sides): driving lanes to 3.5, solid
edge line just inside, kerb 3.5-3.8, sidewalk 3.8-6.3, buildings set back from 8 m. The centre line is
dashed (3 m dash, 6 m gap, as in CARLA's towns); lines are 0.15 m wide.
"""

from __future__ import annotations

import math

import numpy as np

from sim.geometry import PlanView
from sim.roadnet import JUNCTION_HALF_SIZE_M, LANE_WIDTH_M, Junction, Road, RoadNetwork
from sim.scene import Material, Scene, box_footprint, convex_overlap, quad_strip

ROAD_HALF_WIDTH_M = 3.5
KERB_WIDTH_M = 0.3
SIDEWALK_WIDTH_M = 2.5
LINE_WIDTH_M = 0.15
EDGE_LINE_INSET_M = 0.0
DASH_M, GAP_M = 3.0, 6.0
STRIP_STEP_M = 2.0
CORNER_RADIUS_M = JUNCTION_HALF_SIZE_M - ROAD_HALF_WIDTH_M  # kerb radius joining the arms' road edges
BUILDING_SETBACK_M = 8.0
STOP_LINE_DEPTH_M = 0.4


def _offset(smp: dict[str, np.ndarray], t: float) -> np.ndarray:
    """Points at lateral offset ``t`` (metres, right +) from sampled reference-line points, (K, 2)."""
    h = smp["heading"]
    return np.stack([smp["x"] - np.sin(h) * t, smp["y"] + np.cos(h) * t], axis=1)


def _strip(smp: dict[str, np.ndarray], t0: float, t1: float) -> np.ndarray:
    return quad_strip(_offset(smp, t0), _offset(smp, t1))


def _road_quads(road: Road) -> list[tuple[np.ndarray, Material]]:
    """Surfaces and markings of one ordinary (non-junction) road."""
    smp = road.plan.sample(STRIP_STEP_M)
    w, k, sw = ROAD_HALF_WIDTH_M, KERB_WIDTH_M, SIDEWALK_WIDTH_M
    e0, e1 = w - EDGE_LINE_INSET_M - LINE_WIDTH_M, w - EDGE_LINE_INSET_M
    out = [(_strip(smp, -w, w), Material.ASPHALT)]
    for side in (-1, 1):
        out.append((_strip(smp, side * w, side * (w + k)), Material.KERB))
        out.append((_strip(smp, side * (w + k), side * (w + k + sw)), Material.SIDEWALK))
        out.append((_strip(smp, side * e0, side * e1), Material.MARKING_WHITE))
    out.append((_dashes(road.plan), Material.MARKING_WHITE))
    return out


def _dashes(plan: PlanView) -> np.ndarray:
    """Quads of the dashed centre line, each dash split in two to follow curves."""
    fine = plan.sample(DASH_M / 2)
    s = fine["s"]
    quads = []
    for start in np.arange(GAP_M / 2, plan.length_m - DASH_M, DASH_M + GAP_M):
        idx = np.searchsorted(s, [start, start + DASH_M / 2, start + DASH_M])
        idx = np.clip(idx, 0, len(s) - 1)
        part = {key: v[idx] for key, v in fine.items()}
        quads.append(quad_strip(_offset(part, -LINE_WIDTH_M / 2), _offset(part, LINE_WIDTH_M / 2)))
    return np.concatenate(quads) if quads else np.zeros((0, 4, 2))


def _junction_quads(j: Junction) -> list[tuple[np.ndarray, Material]]:
    """The junction square, sidewalk corners with a rounded kerb, and a stop line on each incoming lane."""
    h = j.half_size_m
    c, s = math.cos(j.heading_rad), math.sin(j.heading_rad)

    def world(px: np.ndarray, py: np.ndarray) -> np.ndarray:  # junction frame (forward, right) -> world
        return np.stack([j.x_m + px * c - py * s, j.y_m + px * s + py * c], axis=-1)

    square = world(np.array([-h, h, h, -h]), np.array([-h, -h, h, h]))[None]
    out: list[tuple[np.ndarray, Material]] = [(square, Material.JUNCTION)]
    ang = np.linspace(0.0, math.pi / 2, 9)
    r, rk = CORNER_RADIUS_M, CORNER_RADIUS_M - KERB_WIDTH_M
    for sx in (-1, 1):
        for sy in (-1, 1):
            # the corner's arc is centred on the square's corner (sx*h, sy*h), bulging towards the centre
            ax, ay = sx * (h - r * np.cos(ang)), sy * (h - r * np.sin(ang))
            kx, ky = sx * (h - rk * np.cos(ang)), sy * (h - rk * np.sin(ang))
            corner = np.broadcast_to(world(np.array(sx * h), np.array(sy * h)), (len(ang), 2))
            arc, inner = world(ax, ay), world(kx, ky)
            out.append((quad_strip(inner, corner), Material.SIDEWALK))
            out.append((quad_strip(arc, inner), Material.KERB))
    for side in range(4):
        a = j.arm_direction(side)
        inward = np.array([-math.cos(a), -math.sin(a)])
        right_in = np.array([-inward[1], inward[0]])
        base = np.array(j.arm_point(side))
        p0, p1 = base + right_in * 0.1, base + right_in * (ROAD_HALF_WIDTH_M - 0.1)
        d = inward * STOP_LINE_DEPTH_M
        out.append((np.array([[p0 - d, p1 - d, p1, p0]]), Material.STOP_LINE))
    return out


ARROW_DISTANCES_M = (6.0, 20.0, 36.0)  # from the junction boundary back along the incoming lane
ARROW_LENGTH_M, ARROW_SHAFT_M, ARROW_HEAD_M = 6.0, 0.35, 1.5
ARROW_REACH_M = LANE_WIDTH_M / 2 - 0.3  # a turn arrow's tip, sideways from the lane centre: it stays in its lane


def _arrow_quads(turn: str) -> np.ndarray:
    """A lane arrow in its own frame (x forward from the arrow's tail, y right), as convex quads: a shaft and a
    head pointing ahead, or a shaft bending to the turn's side with the head pointing there. A turn arrow's tip
    is :data:`ARROW_REACH_M` from the lane centre, inside the lane (not over the kerb or the centre line)."""
    L, w, hw = ARROW_LENGTH_M, ARROW_SHAFT_M / 2, ARROW_HEAD_M / 2
    if turn == "straight":
        shaft = [[0, -w], [L - 2, -w], [L - 2, w], [0, w]]
        head = [[L - 2, -hw], [L, 0], [L, 0], [L - 2, hw]]
        return np.array([shaft, head], np.float64)
    side, knee, tip = 1.0 if turn == "right" else -1.0, 0.75, ARROW_REACH_M
    stem = [[0, -w], [L - 1.5, -w], [L - 1.5, w], [0, w]]
    bar = [[L - 1.5 - 2 * w, 0], [L - 1.5, 0], [L - 1.5, side * knee], [L - 1.5 - 2 * w, side * knee]]
    head = [[L - 1.5 - hw * 1.2, side * knee], [L - 1.5 + hw * 0.2, side * knee], [L - 1.5 - w, side * tip],
            [L - 1.5 - w, side * tip]]
    return np.array([stem, bar, head], np.float64)


def _route_arrows(j: Junction) -> np.ndarray:
    """Arrows on the route's incoming lane before junction ``j``, telling a camera-only policy the movement (as
    the turn-lane arrows of real roads do); none when the junction carries no route movement."""
    if not j.route_turn:
        return np.zeros((0, 4, 2))
    a = j.arm_direction(0)
    inward = np.array([-math.cos(a), -math.sin(a)])
    right_in = np.array([-inward[1], inward[0]])
    base = np.array(j.arm_point(0)) + right_in * (ROAD_HALF_WIDTH_M / 2)  # lane centre at the boundary
    shape = _arrow_quads(j.route_turn)
    out = []
    for d in ARROW_DISTANCES_M:
        tail = base - inward * (d + ARROW_LENGTH_M)
        out.append(tail + shape[..., :1] * inward + shape[..., 1:] * right_in)
    return np.concatenate(out)


def _buildings(network: RoadNetwork, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Building footprints and heights along both sides of every ordinary road, kept clear of all roads."""
    candidates = []
    for road in (r for r in network.roads.values() if r.junction < 0):
        for side in (-1.0, 1.0):
            s = float(rng.uniform(0, 6))
            while s < road.length_m - 4:
                length, depth = rng.uniform(8, 22), rng.uniform(8, 16)
                mid = min(s + length / 2, road.length_m)
                g = next(g for g in reversed(road.plan.records) if g.s0_m <= mid)
                x, y, hd, _ = g.sample(np.array([mid - g.s0_m]))
                t = side * (BUILDING_SETBACK_M + rng.uniform(0, 4) + depth / 2)
                cx, cy = x[0] - math.sin(hd[0]) * t, y[0] + math.cos(hd[0]) * t
                candidates.append((box_footprint(cx, cy, hd[0], length, depth), float(rng.uniform(5, 24))))
                s += length + rng.uniform(2, 12)
    return _clear_of_roads(network, candidates)


def _clear_of_roads(network: RoadNetwork, boxes: list[tuple[np.ndarray, float]]) -> list[tuple[np.ndarray, float]]:
    """Drop boxes that come within a sidewalk of any road or junction, or that overlap a kept box."""
    pts = np.concatenate([np.stack([r.samples["x"], r.samples["y"]], 1) for r in network.roads.values()])
    clear = ROAD_HALF_WIDTH_M + KERB_WIDTH_M + SIDEWALK_WIDTH_M + 0.5
    kept: list[tuple[np.ndarray, float]] = []
    for fp, height in boxes:
        corners = np.concatenate([fp, fp.mean(0, keepdims=True), (fp + np.roll(fp, 1, 0)) / 2])
        near = np.abs(pts[:, None, :] - corners[None, :, :]).max(-1).min() if len(pts) else np.inf
        if near < clear or _inside_any_junction(network, corners):
            continue
        if any(convex_overlap(fp, other) for other, _ in kept):
            continue
        kept.append((fp, height))
    return kept


def _inside_any_junction(network: RoadNetwork, points: np.ndarray) -> bool:
    for j in network.junctions.values():
        margin = j.half_size_m + 2.0
        if (np.abs(points - [j.x_m, j.y_m]).max(-1) < margin).any():
            return True
    return False


def build_scene(network: RoadNetwork, seed: int) -> Scene:
    """The renderable scene of ``network``; buildings are placed from ``seed`` (deterministic)."""
    parts: list[tuple[np.ndarray, Material]] = []
    for road in network.roads.values():
        if road.junction < 0:
            parts += _road_quads(road)
    for junction in network.junctions.values():
        parts += _junction_quads(junction)
        parts.append((_route_arrows(junction), Material.MARKING_WHITE))
    parts = [(q, m) for q, m in parts if len(q)]
    ground = np.concatenate([q for q, _ in parts]).astype(np.float64)
    material = np.concatenate([np.full(len(q), m, np.uint8) for q, m in parts])
    order = np.argsort(material, kind="stable")
    rng = np.random.default_rng(seed)
    boxes = _buildings(network, rng)
    n = len(boxes)
    footprints = np.array([b for b, _ in boxes]).reshape(n, 4, 2)
    heights = np.array([h for _, h in boxes], np.float64)
    shade = rng.uniform(0.65, 1.15, n).astype(np.float32)
    return Scene(ground[order], material[order], footprints, heights, np.full(n, Material.BUILDING, np.uint8),
                 shade)
