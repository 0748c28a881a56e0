"""The embedded forward RGB camera: a fast pinhole renderer of a :class:`~sim.scene.Scene` using cv2 fills.

What it draws, back to front, for a vehicle pose ``(x, y, yaw)`` in CARLA's world frame (x forward/east,
y right, z up, metres; yaw in radians, positive from +x towards +y):

1. a precomputed background: a sky gradient above the horizon and olive-green verge below it (plus a sun
   glow when the sun is in view);
2. the ground quads in ascending :class:`~sim.scene.Material` order (markings land on asphalt), one
   ``cv2.fillPoly`` call per colour, after cheap grid culling, vectorised projection and near-plane clipping;
3. a wet sheen (sky reflection near the horizon on asphalt) and distance haze/fog as per-pixel blends over
   precomputed row bands (the depth of a ground pixel does not depend on the vehicle's yaw);
4. the boxes far to near (painter's algorithm), only faces facing the camera, shaded by their orientation to
   the sun and fogged by their depth;
5. rain streaks: one of a few precomputed layers, picked by the frame index.

Everything that does not depend on the pose is computed in the constructor or in
:meth:`CameraRenderer.set_weather`, so :meth:`CameraRenderer.render` is about a hundred small numpy/cv2 calls.
The output is deterministic bit for bit.
"""

from __future__ import annotations

import heapq
import math

import cv2
import numpy as np

from sim.scene import Material, Scene
from sim.types import CameraConfig
from sim.weather import Weather

SHIFT = 8  # fractional bits of the fixed-point vertex coordinates given to cv2 fills (1/256 px)
_SCALE = float(1 << SHIFT)
_PAD_PX = 1  # spare columns each side of the ground canvas (_draw_ground)
_COORD_LIMIT = float(2**30)  # fixed-point coordinates are clipped to this so the int32 cast never wraps
_OFFSCREEN = -(2.0**29)  # fixed-point coordinate far outside any image (polygons wholly behind the camera)
_EMPTY_PTS = np.zeros((0, 4, 2), np.int32)
_NEAR_M = 0.1  # near clipping plane for the ground, metres in front of the camera (may be lowered)
_BOX_NEAR_M = 0.1  # near plane for boxes, as for the ground (a wall nearer than 0.5 m must still hide the view);
# cv2's fills walk every (even off-image) row of a polygon, so a face this near costs ~0.1-0.2 ms to fill
_TOUCH_M = 2.0  # boxes nearer each other than this get their draw order checked exactly (_fix_touching)
_MIN_BOX_PX = 0.35  # boxes smaller than this (pixels) even seen broadside are not drawn
_STRIP_QUADS = 16  # at most this many chained strip quads are drawn as one outline polygon
_RAIN_LAYERS = 8  # precomputed rain streak layers, cycled by the frame index
_COLOUR_LUT_BYTES = 16e6  # at most this much memory for the per-face, per-distance box colour table
_FOG_START_MIN_M = 8.0  # fog never starts nearer than this (CARLA presets say 0.75 m; keeps blends cheap)

# Albedo-like base colours (RGB at unit light). Unknown ground materials are grey, unknown boxes beige-grey.
GROUND_RGB: dict[int, tuple[int, int, int]] = {
    Material.GRASS: (92, 118, 58),
    Material.SIDEWALK: (170, 166, 158),
    Material.ASPHALT: (88, 88, 92),
    Material.JUNCTION: (94, 93, 96),
    Material.KERB: (198, 196, 188),
    Material.MARKING_WHITE: (240, 240, 234),
    Material.STOP_LINE: (244, 244, 240),
}
BOX_RGB: dict[int, tuple[int, int, int]] = {
    Material.BUILDING: (200, 178, 150),
    Material.WALL: (176, 168, 156),
    Material.POLE: (150, 150, 156),
}
_DEFAULT_GROUND_RGB = (128, 128, 128)
_DEFAULT_BOX_RGB = (150, 146, 140)
_ROOF_RGB = (130, 122, 116)
_DARKENED_BY_WET = {Material.ASPHALT: 0.68, Material.JUNCTION: 0.68, Material.SIDEWALK: 0.75,
                    Material.KERB: 0.82, Material.MARKING_WHITE: 0.88, Material.STOP_LINE: 0.88}

# Faces of a box as indices into its 8 corners (bottom 0-3, top 4-7): 4 sides then the roof.
_FACE_CORNERS = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7], [4, 5, 6, 7]])
_FIVE = np.arange(5)


# ----------------------------------------------------------------------------------------------------------
# Small maths helpers
# ----------------------------------------------------------------------------------------------------------


def carla_rotation(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """CARLA's ``Transform`` rotation matrix (3x3): maps local (forward, right, up) to the parent frame.

    Yaw turns about z (from +x towards +y), pitch about y (positive looks up), roll about x, as Unreal does.
    """
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cr, sr = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    return np.array([
        [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
        [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
        [sp, -cp * sr, cp * cr],
    ])


# Local (forward, right, up) -> OpenCV camera frame (x right, y down, z forward).
_LOCAL_TO_CV = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _smoothstep(t: np.ndarray | float) -> np.ndarray:
    """Hermite ramp 0 -> 1 of ``t`` clipped to [0, 1] (no units)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lerp(a, b, t):
    """Linear blend ``a + (b - a) * t`` (broadcasts colours and weights)."""
    a = np.asarray(a, np.float64)
    return a + (np.asarray(b, np.float64) - a) * t


# ----------------------------------------------------------------------------------------------------------
# Weather -> look
# ----------------------------------------------------------------------------------------------------------


class _Look:
    """Colours and light derived once from a :class:`Weather` (all RGB in 0-255 unless said otherwise).

    ``ambient``/``sun`` are RGB light multipliers (1 = albedo shown as is), ``sun_dir`` the world unit vector
    towards the sun (azimuth from +x towards +y, as a yaw), ``fog_k`` the fog extinction (1/m) starting at
    ``fog_start_m``, ``wet`` in [0, 1], ``rain`` the precipitation in [0, 1], ``wind`` in [0, 1].
    """

    def __init__(self, w: Weather) -> None:
        cloud = float(np.clip(w.cloudiness / 100.0, 0.0, 1.0))
        self.rain = float(np.clip(w.precipitation / 100.0, 0.0, 1.0))
        self.wind = float(np.clip(w.wind_intensity / 100.0, 0.0, 1.0))
        self.wet = float(np.clip(max(w.wetness, w.precipitation_deposits) / 100.0, 0.0, 1.0))
        alt_deg = float(np.clip(w.sun_altitude_angle_deg, -90.0, 90.0))
        alt, az = math.radians(alt_deg), math.radians(w.sun_azimuth_angle_deg)
        self.sun_dir = np.array([math.cos(alt) * math.cos(az), math.cos(alt) * math.sin(az), math.sin(alt)])
        self.sun_alt_rad = alt
        self.cloud = cloud
        warm = float(_smoothstep((25.0 - alt_deg) / 20.0))  # 1 at <= 5 deg, 0 at >= 25 deg
        day = float(_smoothstep((alt_deg + 5.0) / 15.0))  # fades light out around sunset/night
        high = float(_smoothstep(alt_deg / 30.0))
        self.warm = warm * (1.0 - 0.7 * cloud)
        # Light: direct sun dimmed by clouds, warmer when low; sky ambient weaker when the sun is low.
        self.sun = _lerp((1.0, 0.98, 0.95), (1.0, 0.64, 0.36), self.warm) * 0.7 * (1.0 - 0.85 * cloud) * day
        sky_tint = _lerp((0.92, 0.96, 1.05), (1.0, 1.0, 1.0), cloud)
        self.ambient = sky_tint * (0.5 + 0.1 * cloud) * (0.45 + 0.55 * high) * (0.3 + 0.7 * day)
        self.ambient = self.ambient * (1.0 - 0.15 * self.rain)
        # Sky colours: clear blue (orange horizon at sunset) blended towards overcast grey.
        clear_hor = _lerp((198, 218, 238), (252, 168, 100), warm * 0.95)
        clear_zen = _lerp((60, 120, 206), (66, 92, 158), warm)
        grey = 1.0 - 0.3 * self.rain
        cloud_hor, cloud_zen = np.array((200, 202, 206)) * grey, np.array((158, 163, 171)) * grey
        c = cloud**0.7
        bright = 0.55 + 0.45 * high * (0.4 + 0.6 * day)
        self.horizon = _lerp(clear_hor, cloud_hor, c) * (0.7 + 0.3 * bright)
        self.zenith = _lerp(clear_zen, cloud_zen, c) * bright
        # Fog: a haze ramp near the far distance always, plus CARLA's fog density and rain as extinction.
        self.fog_k = 0.0025 * max(w.fog_density - 2.0, 0.0) + 0.00012 * w.precipitation
        self.fog_start_m = max(float(w.fog_distance_m), _FOG_START_MIN_M)
        self.fog_rgb = self.horizon.copy()
        self.zenith = _lerp(self.zenith, self.horizon, min(1.0, self.fog_k * 25.0))

    def ground_light(self) -> np.ndarray:
        """RGB light on a horizontal surface (ambient + direct sun times sin(altitude))."""
        return self.ambient + self.sun * max(math.sin(self.sun_alt_rad), 0.0)

    def wall_light(self, normals_xy: np.ndarray) -> np.ndarray:
        """RGB light (..., 3) on vertical faces with outward unit normals ``normals_xy`` (..., 2).

        Faces towards the sun get direct light times cos(altitude) times the cosine to its azimuth; all get
        an ambient term that varies a little with orientation so shaded faces still differ.
        """
        s = self.sun_dir
        horiz = math.hypot(s[0], s[1])
        sh = s[:2] / horiz if horiz > 1e-9 else np.zeros(2)
        cos_az = normals_xy @ sh
        amb = self.ambient * (1.05 + 0.2 * cos_az)[..., None]
        direct = self.sun * (max(horiz, 0.0) * np.maximum(cos_az, 0.0))[..., None]
        return amb + direct

    def sky_rgb(self, elevation_rad: np.ndarray) -> np.ndarray:
        """Sky colour (..., 3) float for view rays at ``elevation_rad`` above the horizon."""
        t = 1.0 - np.exp(-np.maximum(elevation_rad, 0.0) / 0.32)
        return _lerp(self.horizon, self.zenith, t[..., None])

    def fog_weight(self, dist_m: np.ndarray, far_m: float) -> np.ndarray:
        """Blend weight [0, 1] towards the fog colour at distance ``dist_m`` (metres along the ray).

        A smooth haze ramp from 45 % of ``far_m`` to 1 at ``far_m`` hides the culling edge; fog from the
        weather adds exponential extinction beyond its start distance.
        """
        d = np.asarray(dist_m, np.float64)
        haze = _smoothstep((d - 0.45 * far_m) / (0.55 * far_m))
        fog = 1.0 - np.exp(-self.fog_k * np.maximum(d - self.fog_start_m, 0.0))
        return 1.0 - (1.0 - haze) * (1.0 - fog)


# ----------------------------------------------------------------------------------------------------------
# Geometry preparation (construction time)
# ----------------------------------------------------------------------------------------------------------


def _cell_pairs(lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, cell_m: float,
                ny: int) -> tuple[np.ndarray, np.ndarray]:
    """(item, cell id) pairs for every cell each bounding box [lo, hi] (n, 2) touches (id = ix*ny + iy)."""
    ij0 = np.floor((lo - origin) / cell_m).astype(np.int64)
    ij1 = np.floor((hi - origin) / cell_m).astype(np.int64)
    sx, sy = ij1[:, 0] - ij0[:, 0] + 1, ij1[:, 1] - ij0[:, 1] + 1
    cnt = sx * sy
    item = np.repeat(np.arange(len(lo)), cnt)
    k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    ix = ij0[item, 0] + k // sy[item]
    iy = ij0[item, 1] + k % sy[item]
    return item, ix * ny + iy


def _near_pairs(lo: np.ndarray, hi: np.ndarray, group: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique index pairs (a < b) of one ``group`` whose bounding boxes ``[lo, hi]`` (n, 2) overlap by more
    than ``tol`` metres on both axes (a negative ``tol``: come within ``-tol`` of each other). Bucketed on a
    grid, so near-linear in n."""
    n = len(lo)
    lo, hi = lo + tol / 2, hi - tol / 2  # overlapping by more than tol = these overlapping at all
    origin = lo.min(axis=0)
    cell = max(8.0, float(np.sqrt(np.prod(hi.max(axis=0) - origin + 1.0) / 4e5)))
    ny = int(np.floor((hi[:, 1].max() - origin[1]) / cell)) + 1
    item, cid = _cell_pairs(lo, hi, origin, cell, ny)
    key = cid * 256 + np.asarray(group)[item].astype(np.int64)  # same cell and same group
    order = np.lexsort((item, key))
    item, key = item[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    lengths = np.diff(np.r_[starts, len(key)])
    # All pairs (i, j), i before j, inside each (cell, group) run.
    pos = np.arange(len(key))
    run_end = np.repeat(starts + lengths, lengths)
    partners = run_end - pos - 1
    first = np.repeat(pos, partners)
    within = np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners)
    qa, qb = item[first], item[first + 1 + within]
    box_hit = np.all((np.minimum(hi[qa], hi[qb]) - np.maximum(lo[qa], lo[qb])) > 0.0, axis=1)
    pair = np.unique(np.minimum(qa, qb)[box_hit] * n + np.maximum(qa, qb)[box_hit])
    return pair // n, pair % n


def _sat_overlap(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """True where convex quads ``a[i]`` and ``b[i]`` (P, 4, 2) overlap by more than ``tol`` metres.

    Separating-axis test on the 8 edge normals; touching (shared edges) counts as not overlapping. A
    zero-length edge (a triangle given as a quad with a repeated corner) has no normal and separates nothing.
    """
    def normals(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.roll(q, -1, axis=1) - q
        n = np.stack([-e[..., 1], e[..., 0]], axis=-1)
        length = np.linalg.norm(n, axis=-1)
        return n / np.maximum(length, 1e-12)[..., None], length > 1e-9

    (na, va), (nb, vb) = normals(a), normals(b)
    axes = np.concatenate([na, nb], axis=1)  # (P, 8, 2)
    pa = np.einsum("pkd,pvd->pkv", axes, a)
    pb = np.einsum("pkd,pvd->pkv", axes, b)
    overlap = np.minimum(pa.max(-1), pb.max(-1)) - np.maximum(pa.min(-1), pb.min(-1))
    return ~((overlap <= tol) & np.concatenate([va, vb], axis=1)).any(axis=1)


def overlap_layers(quads: np.ndarray, material: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """A layer index per quad so that quads of one material and one layer never overlap each other.

    Why: ``cv2.fillPoly`` fills several polygons with the even-odd rule, so two overlapping quads drawn in
    one call would punch a hole. Quads are coloured greedily in index order (deterministic); most scenes
    need one layer, overlapping junction or corner pieces a few more.
    """
    n = len(quads)
    layers = np.zeros(n, np.int32)
    if n < 2:
        return layers
    qa, qb = _near_pairs(quads.min(axis=1), quads.max(axis=1), material, tol)
    hit = _sat_overlap(quads[qa], quads[qb], tol)
    qa, qb = qa[hit], qb[hit]
    if len(qa) == 0:
        return layers
    neighbours: dict[int, list[int]] = {}
    for i, j in zip(qa.tolist(), qb.tolist(), strict=True):
        neighbours.setdefault(j, []).append(i)  # i < j: j must avoid i's layer
    for j in sorted(neighbours):
        used = {int(layers[i]) for i in neighbours[j]}
        layer = 0
        while layer in used:
            layer += 1
        layers[j] = layer
    return layers


def _touching_pairs(fp: np.ndarray, normal: np.ndarray, gap_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (k, 2) of disjoint convex footprints ``fp`` (m, 4, 2; ``normal``: their outward edge normals)
    less than ``gap_m`` apart, and for each a separating line (k, 3): ``line . (x, y, 1) < 0`` on the first
    one's side, so a camera there sees the first in front of the second (it can hide part of the second,
    never the reverse). Separating-axis test over the 8 edge normals; the widest gap gives the line."""
    none = (np.zeros((0, 2), np.int64), np.zeros((0, 3)))
    if len(fp) < 2:
        return none
    qa, qb = _near_pairs(fp.min(axis=1), fp.max(axis=1), np.zeros(len(fp), np.int64), -gap_m)
    if len(qa) == 0:
        return none
    a, b = fp[qa], fp[qb]
    axes = np.concatenate([normal[qa], -normal[qb]], axis=1)  # (k, 8, 2), each pointing from a towards b
    pa, pb = np.einsum("kad,kvd->kav", axes, a), np.einsum("kad,kvd->kav", axes, b)
    gaps = pb.min(axis=-1) - pa.max(axis=-1)  # (k, 8): the gap between the two along each axis
    gaps[np.einsum("kad,kad->ka", axes, axes) < 0.25] = -np.inf  # a zero-length edge has no normal: no axis
    best = gaps.argmax(axis=1)
    gap = gaps[np.arange(len(qa)), best]
    keep = (gap > -1e-9) & (gap < gap_m)
    n = axes[np.arange(len(qa)), best][keep]
    mid = pa.max(axis=-1)[np.arange(len(qa)), best][keep] + gap[keep] / 2
    return np.stack([qa[keep], qb[keep]], axis=1), np.column_stack([n, -mid])


def _constrained(n: int, first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """A permutation of ``range(n)`` that puts every ``first[i]`` before ``then[i]`` and is otherwise as near
    to ``0, 1, ..., n-1`` as it can be (Kahn's algorithm, always taking the smallest index that is free). A
    cycle, which only boxes around the camera that hide nothing of each other can form, is broken at its
    smallest index."""
    succ: list[list[int]] = [[] for _ in range(n)]
    waiting = [0] * n
    for a, b in zip(first.tolist(), then.tolist(), strict=True):
        succ[a].append(b)
        waiting[b] += 1
    ready = [i for i in range(n) if waiting[i] == 0]
    heapq.heapify(ready)
    done = [False] * n
    out: list[int] = []
    while len(out) < n:
        if not ready:
            heapq.heappush(ready, next(i for i in range(n) if not done[i]))
        i = heapq.heappop(ready)
        if done[i]:
            continue
        done[i] = True
        out.append(i)
        for j in succ[i]:
            waiting[j] -= 1
            if waiting[j] == 0 and not done[j]:
                heapq.heappush(ready, j)
    return np.array(out, np.intp)


def _clip_near(homog: np.ndarray, near: float, fill: np.ndarray | None = None) -> np.ndarray:
    """Clip polygons against the plane Z = ``near`` and project them to int32 fixed-point pixels.

    ``homog`` (n, k, 3) holds vertices as K-scaled homogeneous camera points (S*u*Z, S*v*Z, Z). Vectorised
    Sutherland-Hodgman on one plane, in a fixed-size layout (n, 2k, 2): each vertex slot is followed by an
    edge slot. A vertex in front keeps its projection, the slot of an edge crossing the plane gets the
    intersection, and every other slot gets a point on the line where the polygon's plane meets the near
    plane: ``fill`` (2, 1, 1) when the caller knows one (the ground), else the polygon's first intersection.
    All intersections lie on that line, so those repeats only run along the clipped edge: exact for convex
    polygons, and for the ground's non-convex strips the line's image is far outside the picture (see
    ``_ground_clip_line``). A polygon wholly behind collapses to one point: off-screen, or ``fill``. The
    intersection formula is symmetric in the edge's endpoints, so a shared edge clips to bit-identical points.
    """
    n, k, _ = homog.shape
    nxt = _next_index(k)
    abz = np.ascontiguousarray(homog.transpose(2, 0, 1))
    ab, z = abz[:2], abz[2]
    zq = z.take(nxt, axis=1)
    inside = z > near
    cross = inside != inside.take(nxt, axis=1)
    r = 1.0 / (np.where(cross, zq - z, 1.0) * near)
    inter = (ab * (zq - near) - ab.take(nxt, axis=2) * (z - near)) * r
    out = np.empty((2, n, k, 2))
    if fill is None:
        fill = inter[:, np.arange(n), cross.argmax(axis=1)][:, :, None]
        behind = ~inside.any(axis=1)
        if behind.any():
            fill[:, behind] = _OFFSCREEN
    out[..., 0] = np.where(inside, ab * (1.0 / np.maximum(z, near)), fill)
    out[..., 1] = np.where(cross, inter, out[..., 0])
    np.clip(out, -_COORD_LIMIT, _COORD_LIMIT, out=out)
    return out.transpose(1, 2, 3, 0).astype(np.int32).reshape(n, 2 * k, 2)


def _clip_face(corners: list, rows: list, near: float) -> np.ndarray:
    """Near-clip one convex face given by world corners (4 lists of x, y, z) and project it (plain Python).

    ``rows`` is the 3x4 world -> (S*u*Z, S*v*Z, Z) matrix as lists. For the one or two faces per frame that
    cross the near plane this beats the vectorised :func:`_clip_near`. Returns int32 fixed-point (k, 2); a
    face wholly behind collapses to an off-screen point.
    """
    (a0, a1, a2, a3), (b0, b1, b2, b3), (c0, c1, c2, c3) = rows
    hom = [(a0 * x + a1 * y + a2 * z + a3, b0 * x + b1 * y + b2 * z + b3, c0 * x + c1 * y + c2 * z + c3)
           for x, y, z in corners]
    out = []
    for i, (pa, pb, pz) in enumerate(hom):
        qa, qb, qz = hom[i - 3]  # the next vertex (index i + 1 modulo 4)
        if pz > near:
            out.append((pa / pz, pb / pz))
        if (pz > near) != (qz > near):
            r = 1.0 / ((qz - pz) * near)
            out.append(((pa * (qz - near) - qa * (pz - near)) * r, (pb * (qz - near) - qb * (pz - near)) * r))
    if not out:
        return np.full((3, 2), int(_OFFSCREEN), np.int32)
    return np.clip(np.array(out), -_COORD_LIMIT, _COORD_LIMIT).astype(np.int32)


_NEXT_INDEX: dict[int, np.ndarray] = {}


def _next_index(k: int) -> np.ndarray:
    """Cached ``[1, 2, ..., k-1, 0]``: the index of each polygon vertex's successor."""
    idx = _NEXT_INDEX.get(k)
    if idx is None:
        idx = _NEXT_INDEX[k] = np.r_[np.arange(1, k), 0]
    return idx


def strip_pieces(quads: np.ndarray, group: np.ndarray, max_quads: int) -> list[tuple[int, int]]:
    """Split quads (sorted by paint group) into runs ``(start, count)`` that can be drawn as one polygon.

    Quads ``i`` and ``i+1`` chain when they are in the same group and share an edge the way
    :func:`sim.scene.quad_strip` builds strips (vertices 1, 2 of ``i`` are vertices 0, 3 of ``i+1``). Why:
    ``cv2.fillPoly`` costs about as much per polygon as per 20 vertices, so a strip of quads is far cheaper as
    its outline. Runs hold at most ``max_quads`` quads; unchained quads are runs of one.
    """
    n = len(quads)
    if n == 0:
        return []
    link = (group[1:] == group[:-1]) & np.all(quads[:-1, 1] == quads[1:, 0], axis=1) & np.all(
        quads[:-1, 2] == quads[1:, 3], axis=1)
    breaks = np.flatnonzero(~link) + 1
    pieces = []
    for start, end in zip(np.r_[0, breaks].tolist(), np.r_[breaks, n].tolist(), strict=True):
        for s in range(start, end, max_quads):
            pieces.append((s, min(max_quads, end - s)))
    return pieces


def strip_outline(quads: np.ndarray, size: int) -> np.ndarray:
    """The outline (2 * size + 2, 2) of a chained run of quads (k, 4, 2), padded by repeating its last vertex.

    Left side forwards (vertices 0 then 1 of each quad), right side backwards (vertices 2 then 3).
    """
    k = len(quads)
    left = np.concatenate([quads[:1, 0], quads[:, 1]])
    right = np.concatenate([quads[-1:, 2], quads[::-1, 3]])
    out = np.concatenate([left, right])
    return np.concatenate([out, np.repeat(out[-1:], 2 * (size - k), axis=0)])


class _Grid:
    """A uniform grid of square cells over the ground, and per heading the cells a camera can see.

    Which window cells are visible depends only on the camera's heading once its position is snapped to its
    cell, so it is tabulated at construction for ``bins`` headings, conservatively: each cell is tested by
    its bounding circle, grown by how far the camera can be from its cell's centre, against the far distance
    and the view wedge widened by half a heading bin. A query is then one table lookup and one addition.
    The grid is padded by twice the window radius, so window cells never leave it while the camera is near
    the scene; farther away nothing can be visible.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, cell_m: float, far_m: float, half_angle: float | None,
                 bins: int = 720) -> None:
        extent = hi - lo
        self.cell = cell = max(cell_m, float(np.sqrt((extent[0] + 1.0) * (extent[1] + 1.0) / 4e6)))
        r_cell = cell * math.sqrt(0.5)
        reach = far_m + 2.0 * r_cell
        self.r = r = int(math.ceil(reach / cell)) + 1
        self.origin = lo - 2 * r * cell
        self.nx = int(extent[0] // cell) + 1 + 4 * r
        self.ny = int(extent[1] // cell) + 1 + 4 * r
        self.bins = bins
        ox, oy = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
        px, py = (ox * cell).ravel(), (oy * cell).ravel()
        delta = (ox * self.ny + oy).ravel()
        near = px * px + py * py <= reach * reach
        if half_angle is None:
            self.table = [delta[near]]
            return
        heading = np.arange(bins)[:, None] * (2.0 * math.pi / bins)
        a = half_angle + math.pi / bins
        grow = 2.0 * r_cell
        left = px * np.sin(heading - a) - py * np.cos(heading - a) <= grow
        right = -px * np.sin(heading + a) + py * np.cos(heading + a) <= grow
        ok = near & left & right
        self.table = [delta[row] for row in ok]

    def visible_cells(self, x: float, y: float, heading: float) -> np.ndarray | None:
        """Ids (ix * ny + iy) of the cells a camera at (x, y) with this heading (rad) may see, or None."""
        fx = math.floor((x - self.origin[0]) / self.cell)
        fy = math.floor((y - self.origin[1]) / self.cell)
        r = self.r
        if not (r <= fx < self.nx - r and r <= fy < self.ny - r):
            return None
        table = self.table[int(round(heading * self.bins / (2.0 * math.pi))) % self.bins] if len(
            self.table) > 1 else self.table[0]
        return table + (fx * self.ny + fy)


class _Ground:
    """All ground polygons of a scene, sorted by paint group and listed per grid cell.

    Strip runs are merged into outline polygons (see :func:`strip_pieces`) when most quads chain, and every
    polygon is padded to one vertex count so projection and clipping are single vectorised passes. A polygon
    is listed in every cell its bounding box touches, so long ones are never missed; a query expands the
    visible cells' item ranges and de-duplicates them through a boolean mask, which also keeps group order.
    """

    def __init__(self, quads: np.ndarray, group: np.ndarray, n_groups: int, grid: _Grid) -> None:
        pieces = strip_pieces(quads, group, _STRIP_QUADS)
        chained = sum(k for _, k in pieces if k > 1)
        size = _STRIP_QUADS if chained * 2 >= len(quads) else 1
        if size == 1:
            pieces = [(i, 1) for i in range(len(quads))]
        polys = np.stack([strip_outline(quads[s:s + k], size) for s, k in pieces]) if pieces else np.zeros(
            (0, 2 * size + 2, 2))
        piece_group = group[[s for s, _ in pieces]] if pieces else np.zeros(0, np.int64)
        self.polys = np.ascontiguousarray(polys, np.float64)
        self.polys_h = np.concatenate([self.polys, np.ones(self.polys.shape[:2] + (1,))], axis=2)
        self.n = len(polys)
        lo, hi = self.polys.min(axis=1), self.polys.max(axis=1)
        centre = 0.5 * (lo + hi)
        self.centre_h = np.column_stack([centre, np.ones(self.n)])  # bounding circles, for cheap depth bounds
        self.radius = np.linalg.norm(0.5 * (hi - lo), axis=1)
        self.group_start = np.searchsorted(piece_group, np.arange(n_groups + 1)).astype(np.int64)
        self.empty = np.zeros(n_groups + 1, np.int64).tolist()
        if self.n == 0:
            return
        item, cid = _cell_pairs(lo, hi, grid.origin, grid.cell, grid.ny)
        order = np.lexsort((item, cid))
        self.items = item[order].astype(np.int64)
        counts = np.bincount(cid, minlength=grid.nx * grid.ny).astype(np.int64)
        self.count = counts
        self.start = np.cumsum(counts) - counts

    def select(self, cells: np.ndarray) -> np.ndarray:
        """Sorted indices of the polygons listed in ``cells``."""
        counts = self.count[cells]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        ends = np.cumsum(counts)
        offs = np.repeat(self.start[cells] - ends + counts, counts) + np.arange(total)
        mask = np.zeros(self.n, bool)
        mask[self.items[offs]] = True
        return np.flatnonzero(mask)

    def project(self, cells: np.ndarray, hom: np.ndarray, near: float, fill: np.ndarray) -> tuple:
        """Fixed-point image polygons of the ground in ``cells``, split by whether they needed near-clipping.

        ``hom`` maps world (x, y, 1) on the ground to (S*u*Z, S*v*Z, Z). Returns ``(pts, bounds, clipped,
        clipped_bounds)``: int32 polygons wholly in front of the near plane, the near-clipped ones (or None),
        and for each the paint-group boundaries as lists.
        """
        sel = self.select(cells)
        n = len(sel)
        if n == 0:
            return _EMPTY_PTS, self.empty, None, None
        bounds = np.searchsorted(sel, self.group_start)
        # Depth bounds from bounding circles: Z is affine on the ground with gradient |(h20, h21)|.
        zc = self.centre_h.take(sel, axis=0) @ hom[2]
        zr = self.radius.take(sel) * math.hypot(hom[2, 0], hom[2, 1])
        allin = zc - zr > near
        polys = self.polys.take(sel, axis=0)
        uv = cv2.perspectiveTransform(polys.reshape(-1, 1, 2), hom)
        np.clip(uv, -_COORD_LIMIT, _COORD_LIMIT, out=uv)
        pts = uv.astype(np.int32).reshape(n, -1, 2)
        if allin.all():
            return pts, bounds.tolist(), None, None
        idx_in = np.flatnonzero(allin)
        idx_near = np.flatnonzero((zc + zr > near) & ~allin)  # wholly behind: dropped
        near_h = self.polys_h.take(sel.take(idx_near), axis=0)
        clipped = _clip_near(near_h @ hom.T, near, fill)
        return (pts.take(idx_in, axis=0), np.searchsorted(idx_in, bounds).tolist(), clipped,
                np.searchsorted(idx_near, bounds).tolist())


# ----------------------------------------------------------------------------------------------------------
# The renderer
# ----------------------------------------------------------------------------------------------------------


class CameraRenderer:
    """Renders HxWx3 uint8 RGB images of a :class:`Scene` from a vehicle pose, as the mounted camera sees it.

    ``far_m`` is the culling distance (fog/haze reaches the horizon colour there); ``cell_m`` the ground grid
    cell size used to cull large scenes. ``seed`` only drives the rain streak layers. The renderer keeps no
    state between calls that could change a later image; every call returns a fresh array.
    """

    def __init__(self, scene: Scene, camera: CameraConfig, weather: Weather, seed: int = 0, *,
                 far_m: float = 150.0, cell_m: float = 20.0) -> None:
        self.scene = scene
        self.camera = camera
        self.seed = int(seed)
        self.far_m = float(far_m)
        self.width, self.height = int(camera.width), int(camera.height)
        self.focal_px = camera.focal_px
        self._init_camera(camera)
        self._init_rays()
        self._init_ground(scene, cell_m)
        self._init_boxes(scene)
        self.weather = weather
        self.set_weather(weather)

    # ---- construction -----------------------------------------------------------------------------------

    def _init_camera(self, cam: CameraConfig) -> None:
        """Fixed parts of the projection: K scaled to fixed point, vehicle->camera rotation, view wedge."""
        f = self.focal_px
        cx, cy = self.width / 2.0, self.height / 2.0
        # Pixel (i, j) covers [j, j+1) x [i, i+1); cv2 fills address pixel centres, hence the -0.5.
        self._k = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        ks = np.array([[f * _SCALE, 0.0, (cx - 0.5) * _SCALE], [0.0, f * _SCALE, (cy - 0.5) * _SCALE],
                       [0.0, 0.0, 1.0]])
        self._mount_rot = carla_rotation(cam.pitch_deg, cam.yaw_deg, cam.roll_deg)  # camera local -> vehicle
        self._cv_from_vehicle = _LOCAL_TO_CV @ self._mount_rot.T
        self._ks_cv_from_vehicle = ks @ self._cv_from_vehicle
        self._ks_rows = [tuple(float(v) for v in row) for row in self._ks_cv_from_vehicle]
        self._mount_xy = (float(cam.x_m), float(cam.y_m))
        self._cam_z = float(cam.z_m)
        self._wedge_half, self._wedge_yaw = self._view_wedge()
        self._ground_near, self._ground_fill = self._ground_clip_line()

    def _ground_clip_line(self) -> tuple[float, np.ndarray]:
        """Near distance (m) for clipping the ground, and the fixed-point image (2, 1, 1) of a point on its
        clip line.

        The clip line is where the plane Z = near meets the ground; its image lies about f*h/near pixels from
        the principal point, so near is halved from 0.1 m until that is beyond twice the image size. Then the
        detours along it that :func:`_clip_near` makes are never visible. Near starts at most at half the
        camera height: a camera 6 cm up looking down sees only ground nearer than 0.1 m, which was all cut.
        """
        a, b, c = (float(v) for v in self._cv_from_vehicle[:, 2])  # ground normal in camera coordinates
        h, f = self._cam_z, self.focal_px
        ab2 = a * a + b * b
        near = min(_NEAR_M, 0.5 * h)
        if ab2 < 1e-18:
            return near, np.full((2, 1, 1), _OFFSCREEN)  # image plane parallel to the ground: never cut
        limit = 2.0 * max(self.width, self.height)
        while f * abs(h + c * near) / (near * math.sqrt(ab2)) < limit and near > 1e-5:
            near *= 0.5
        x, y = a * (-h - c * near) / ab2, b * (-h - c * near) / ab2  # the line's point nearest the axis
        u = (self.width / 2.0 + f * x / near - 0.5) * _SCALE
        v = (self.height / 2.0 + f * y / near - 0.5) * _SCALE
        return near, np.clip(np.array([u, v]), -_COORD_LIMIT, _COORD_LIMIT).reshape(2, 1, 1)

    def _view_wedge(self) -> tuple[float | None, float]:
        """Half-angle and centre yaw (rad, vehicle frame) of the horizontal wedge holding every view ray.

        Sampled on the image border (azimuth is extreme there); None when rays point too steeply or the wedge
        is wider than a half-plane, in which case only distance culling is used.
        """
        w, h = self.width, self.height
        t = np.linspace(0.0, 1.0, 33)
        zero, one = np.zeros_like(t), np.ones_like(t)
        border = np.concatenate([np.stack([t * w, zero], 1), np.stack([t * w, one * h], 1),
                                 np.stack([zero, t * h], 1), np.stack([one * w, t * h], 1)])
        rays = self._rays_vehicle(border)
        fwd = self._mount_rot[:, 0]
        centre = math.atan2(fwd[1], fwd[0])
        horiz = np.hypot(rays[:, 0], rays[:, 1])
        if np.any(horiz < 0.05 * np.linalg.norm(rays, axis=1)):
            return None, centre
        az = np.arctan2(rays[:, 1], rays[:, 0]) - centre
        az = (az + np.pi) % (2 * np.pi) - np.pi
        half = float(np.abs(az).max()) + math.radians(2.0)
        return (half if half < math.radians(88.0) else None), centre

    def _rays_vehicle(self, uv: np.ndarray) -> np.ndarray:
        """View ray directions (n, 3) in the vehicle frame for continuous pixel coordinates ``uv`` (n, 2)."""
        f, cx, cy = self.focal_px, self.width / 2.0, self.height / 2.0
        d_cv = np.stack([(uv[:, 0] - cx) / f, (uv[:, 1] - cy) / f, np.ones(len(uv))], axis=1)
        return d_cv @ self._cv_from_vehicle  # inverse rotation = transpose

    def _init_rays(self) -> None:
        """Per-pixel elevation and ground distance; both independent of the vehicle's yaw (flat vehicle)."""
        w, h = self.width, self.height
        jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        rays = self._rays_vehicle(np.stack([jj.ravel(), ii.ravel()], 1)).reshape(h, w, 3)
        norm = np.linalg.norm(rays, axis=2)
        dz = rays[..., 2] / norm
        self._elevation = np.arcsin(np.clip(dz, -1.0, 1.0))
        self._ground_px = dz < -1e-9
        with np.errstate(divide="ignore"):
            self._ground_dist = np.where(self._ground_px, self._cam_z / np.maximum(-dz, 1e-9), np.inf)
        ground_rows = np.flatnonzero(self._ground_px.any(axis=1))
        self._sky_rows = int(ground_rows[0]) if len(ground_rows) else h  # rows above any ground pixel
        # Where a rolled horizon leaves sky below _sky_rows, the sun is masked to the sky pixels instead.
        tilted = bool((~self._ground_px[self._sky_rows:]).any())
        self._sky_mask = (~self._ground_px).astype(np.uint8) if tilted else None

    def _init_ground(self, scene: Scene, cell_m: float) -> None:
        """Sort quads into paint groups (material, overlap layer), merge strips, build the culling grid."""
        quads = np.asarray(scene.ground_quads, np.float64).reshape(-1, 4, 2)
        mats = np.asarray(scene.ground_material, np.int64)
        layers = overlap_layers(quads, mats) if len(quads) else np.zeros(0, np.int32)
        order = np.lexsort((np.arange(len(quads)), layers, mats))
        quads, mats = quads[order], mats[order]
        key = mats * 4096 + layers[order]
        new_group = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
        self._group_material = [int(m) for m in mats[new_group]]
        group = np.cumsum(new_group) - 1
        if len(quads):
            lo, hi = quads.reshape(-1, 2).min(axis=0), quads.reshape(-1, 2).max(axis=0)
        else:
            lo, hi = np.zeros(2), np.ones(2)
        self._grid = _Grid(lo, hi, cell_m, self.far_m, self._wedge_half)
        self._ground = _Ground(quads, group, len(self._group_material), self._grid)

    def _init_boxes(self, scene: Scene) -> None:
        """Per box face (4 sides then the roof, flattened to m*5 faces): corners and facing plane.

        Footprints are made counter-clockwise so side normals point outwards; a face faces the camera when
        the camera is on the positive side of its plane (``plane . [x, y, z, 1] > 0``).
        """
        fp = np.asarray(scene.box_footprints, np.float64).reshape(-1, 4, 2).copy()
        m = len(fp)
        hgt = np.asarray(scene.box_heights_m, np.float64)
        x, y = fp[..., 0], fp[..., 1]
        area = 0.5 * np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)
        fp[area < 0] = fp[area < 0][:, ::-1]
        edge = np.roll(fp, -1, axis=1) - fp
        normal = np.stack([edge[..., 1], -edge[..., 0]], axis=-1)
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
        self._box_normal = normal  # (m, 4, 2)
        self._box_fp = fp  # (m, 4, 2) corners
        # Per box, rows x, y of the corners, x, y of the edges leaving them, 1/|edge|^2: one take per frame for
        # the painter's key (_far_to_near).
        self._box_segments = np.stack([fp[..., 0], fp[..., 1], edge[..., 0], edge[..., 1],
                                       1.0 / np.maximum(np.einsum("mkd,mkd->mk", edge, edge), 1e-12)], axis=1)
        self._box_pairs, self._box_pair_line = _touching_pairs(fp, normal, _TOUCH_M)
        self._box_paired = np.zeros(m, bool)  # boxes in a touching pair: only those need _fix_touching
        self._box_paired[self._box_pairs.ravel()] = True
        corners = np.ones((m, 8, 4))
        corners[:, :4, :2], corners[:, 4:, :2] = fp, fp
        corners[:, :4, 2], corners[:, 4:, 2] = 0.0, hgt[:, None]
        self._face_corners = np.ascontiguousarray(corners[:, _FACE_CORNERS, :3].reshape(m * 5, 4, 3))
        plane = np.zeros((m, 5, 4))
        plane[:, :4, :2] = normal
        plane[:, :4, 3] = -np.sum(normal * fp, axis=-1)
        plane[:, 4, 2], plane[:, 4, 3] = 1.0, -hgt
        self._face_plane = plane.reshape(m * 5, 4)
        self._box_centre = fp.mean(axis=1)
        self._box_radius = np.linalg.norm(fp - self._box_centre[:, None], axis=-1).max(axis=1, initial=0.0)
        # Seen broadside, a box is at least its longest side by its height: a 10 m wall 0.3 m thick must not
        # go when its thickness would be under a pixel (a pole, 0.25 m every way, still does).
        broadside = np.minimum(np.linalg.norm(edge, axis=-1).max(axis=1, initial=0.0), hgt)
        lod = self.focal_px * broadside / _MIN_BOX_PX
        self._box_reach = np.minimum(self.far_m + self._box_radius, lod)
        # A drawn corner in front of the near plane has |X|, |Y| <= extent, so |S*u| <= S*(f*extent/near + W):
        # skip the int32 guard clip when that cannot overflow.
        radius = float(np.max(self._box_radius, initial=0.0))
        reach = float(np.max(self._box_reach, initial=0.0))
        spread = math.tan(self._wedge_half) if self._wedge_half is not None else 0.0
        extent = reach * (1.0 + spread) + 3.0 * radius + float(np.max(hgt, initial=0.0))
        bound_px = self.focal_px * extent / _BOX_NEAR_M + 2 * max(self.width, self.height)
        self._box_coords_bounded = bound_px * _SCALE < _COORD_LIMIT
        # [cx, cy, 1, radius, reach]: one product with these rows gives all culling tests (_visible_boxes).
        self._box_aug = np.column_stack([self._box_centre, np.ones(m), self._box_radius, self._box_reach])
        self._box_material = np.asarray(scene.box_material, np.int64)
        self._box_shade = np.asarray(scene.box_shade, np.float64)

    # ---- weather ----------------------------------------------------------------------------------------

    def set_weather(self, weather: Weather) -> None:
        """Recompute everything weather-dependent: colours, background, fog and sheen bands, rain layers."""
        self.weather = weather
        look = _Look(weather)
        self._ground_colours = self._ground_palette(look)
        self._face_rgb = self._box_palette(look)
        self._colour_lut, self._colour_bins_per_m = self._box_colour_lut(look)
        self._bg = self._background(look)
        self._bg_canvas = np.pad(self._bg, ((0, 0), (_PAD_PX, _PAD_PX), (0, 0)), mode="edge")
        self._sheen = self._sheen_band(look)
        self._fog = self._fog_band(look)
        self._sun = self._sun_sprite(look)
        self._sun_dir = tuple(float(v) for v in look.sun_dir)
        self._rain = self._rain_layers(look)

    def _ground_palette(self, look: _Look) -> list[tuple[int, int, int]]:
        """Integer RGB per paint group: albedo x horizontal light, darkened where wet."""
        light = look.ground_light()
        out = []
        for mat in self._group_material:
            rgb = np.asarray(GROUND_RGB.get(mat, _DEFAULT_GROUND_RGB), np.float64) * light
            rgb *= 1.0 - (1.0 - _DARKENED_BY_WET.get(mat, 1.0)) * look.wet
            out.append(tuple(int(v) for v in np.clip(np.rint(rgb), 0, 255)))
        return out

    def _material_rgb(self, mat: int, look: _Look) -> np.ndarray:
        """Integer-valued float RGB of a ground material under ``look`` (used for sheen matching)."""
        rgb = np.asarray(GROUND_RGB.get(mat, _DEFAULT_GROUND_RGB), np.float64) * look.ground_light()
        rgb *= 1.0 - (1.0 - _DARKENED_BY_WET.get(mat, 1.0)) * look.wet
        return np.clip(np.rint(rgb), 0, 255)

    def _box_palette(self, look: _Look) -> np.ndarray:
        """Unfogged RGB (m, 5, 3) per box face: 4 sides lit by their orientation to the sun, then the roof."""
        m = len(self._box_material)
        base = np.array([BOX_RGB.get(int(k), _DEFAULT_BOX_RGB) for k in self._box_material], np.float64)
        base = base.reshape(m, 3) * self._box_shade.reshape(m, 1) * (1.0 - 0.15 * look.wet)
        out = np.empty((m, 5, 3))
        out[:, :4] = base[:, None, :] * look.wall_light(self._box_normal)
        roof = np.asarray(_ROOF_RGB, np.float64) * self._box_shade.reshape(m, 1)
        out[:, 4] = roof * look.ground_light()
        return np.clip(out, 0.0, 255.0).reshape(m * 5, 3)

    def _box_colour_lut(self, look: _Look) -> tuple[np.ndarray, float]:
        """Fogged uint8 RGB per box face and depth bin (m*5, bins, 3), and the bins per metre.

        Why: looking a face's colour up is one gather per frame instead of a dozen small float operations.
        Bins are at most 0.5 m deep and cover the deepest box that can be drawn.
        """
        faces = len(self._face_rgb)
        reach = self.far_m + float(self._box_radius.max(initial=0.0)) + 1.0
        bins = int(np.clip(_COLOUR_LUT_BYTES // max(3 * faces, 1), 16, math.ceil(reach / 0.5)))
        per_m = bins / reach
        fog = look.fog_weight((np.arange(bins) + 0.5) / per_m, self.far_m)[None, :, None]
        rgb = self._face_rgb[:, None, :]
        lut = rgb + (np.asarray(look.fog_rgb) - rgb) * fog
        return np.clip(np.rint(lut), 0, 255).astype(np.uint8), per_m

    def _background(self, look: _Look) -> np.ndarray:
        """Sky gradient (by ray elevation) above the horizon and unfogged verge below: (H, W, 3) uint8."""
        sky = look.sky_rgb(self._elevation)
        grass = self._material_rgb(Material.GRASS, look) * (1.0 - 0.2 * look.wet)
        bg = np.where(self._ground_px[..., None], grass, sky)
        return np.ascontiguousarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8))

    def _row_band(self, weight: np.ndarray, threshold: float) -> tuple[int, int] | None:
        """First and one-past-last image rows where ``weight`` (H, W) exceeds ``threshold``, or None."""
        rows = np.flatnonzero(weight.max(axis=1) > threshold)
        return (int(rows[0]), int(rows[-1]) + 1) if len(rows) else None

    def _fog_band(self, look: _Look) -> tuple | None:
        """Rows and fixed-point factors of the per-pixel ground fog blend, or None when nothing is fogged.

        The blend ``img * (1 - w) + fog * w`` runs as ``cv2.multiply`` by ``(1 - w) * 255`` (scale 1/255) and
        ``cv2.add`` of ``fog * w``, both uint8: about five times faster than ``cv2.blendLinear``, at most one
        level off. The weights depend on the pixel's ground distance only, which the pose cannot change.
        """
        w = np.where(self._ground_px, look.fog_weight(np.where(self._ground_px, self._ground_dist, 0.0),
                                                      self.far_m), 0.0)
        band = self._row_band(w, 0.5 / 255.0)
        if band is None:
            return None
        r0, r1 = band
        wb = w[r0:r1, :, None]
        keep = np.clip(np.rint((1.0 - wb) * 255.0), 0, 255).astype(np.uint8).repeat(3, axis=2)
        add = np.clip(np.rint(wb * np.asarray(look.fog_rgb)), 0, 255).astype(np.uint8)
        return r0, r1, np.ascontiguousarray(keep), np.ascontiguousarray(add)

    def _sheen_band(self, look: _Look) -> tuple | None:
        """Rows, colour bounds and reflection image for the wet-road sheen, or None when dry.

        A wet road mirrors the sky: Schlick's Fresnel term grows towards grazing angles, so the asphalt gets
        lighter and sky-tinted towards the horizon. Applied only to pixels painted in the asphalt colours.
        """
        if look.wet <= 0.02:
            return None
        dz = np.sin(-self._elevation)  # cos of the incidence angle for ground pixels
        fresnel = 0.02 + 0.98 * (1.0 - np.clip(dz, 0.0, 1.0)) ** 4
        # Faded in from Fresnel 0.15 (about 5 m ahead) so the band is short and has no visible edge.
        weight = np.where(self._ground_px, np.clip((fresnel - 0.15) / 0.85, 0.0, 1.0) * 0.9 * look.wet, 0.0)
        band = self._row_band(weight, 0.5 / 255.0)
        if band is None:
            return None
        r0, r1 = band
        asphalt = self._material_rgb(Material.ASPHALT, look)
        junction = self._material_rgb(Material.JUNCTION, look)
        mirror = look.sky_rgb(-self._elevation[r0:r1])  # the sky seen in the mirror direction
        img = _lerp(asphalt, mirror, weight[r0:r1, :, None])
        lo, hi = np.minimum(asphalt, junction), np.maximum(asphalt, junction)
        return (r0, r1, tuple(float(v) for v in lo), tuple(float(v) for v in hi),
                np.clip(np.rint(img), 0, 255).astype(np.uint8))

    def _sun_sprite(self, look: _Look) -> np.ndarray | None:
        """Additive glow sprite (S, S, 3) uint8 for the sun, or None when it is down or hidden by clouds."""
        strength = (1.0 - look.cloud) ** 3 * float(_smoothstep(math.degrees(look.sun_alt_rad) / 4.0))
        if strength < 0.05:
            return None
        size = max(9, int(0.16 * self.width) | 1)
        r = np.hypot(*np.meshgrid(np.arange(size) - size // 2, np.arange(size) - size // 2)) / (size / 2.0)
        colour = _lerp((255, 250, 235), (255, 205, 140), look.warm)
        glow = 0.75 * np.exp(-((r / 0.45) ** 2)) + np.where(r < 0.12, 1.0, 0.0)
        glow *= (r < 1.0)
        return np.clip(np.rint(glow[..., None] * colour * strength), 0, 255).astype(np.uint8)

    def _rain_layers(self, look: _Look) -> list[np.ndarray]:
        """Additive rain streak images (H, W, 3) uint8, deterministic from the seed; empty list when dry.

        Streaks are thin anti-aliased lines slanted by the wind; their count and brightness grow with the
        precipitation. ``render`` picks layer ``frame % len(layers)``, which animates the rain.
        """
        if look.rain <= 0.01:
            return []
        rng = np.random.default_rng([self.seed, 0x5241494E])
        w, h = self.width, self.height
        count = max(1, int(look.rain * 0.0016 * w * h))
        slant = 0.12 + 0.35 * look.wind
        tint = np.array([0.92, 0.95, 1.0]) * (0.55 + 0.45 * look.rain)
        layers = []
        for _ in range(_RAIN_LAYERS):
            layer = np.zeros((h, w), np.uint8)
            x0 = rng.uniform(-0.3 * w, w, count)
            y0 = rng.uniform(-0.1 * h, h, count)
            length = rng.uniform(0.02, 0.06, count) * h
            bright = rng.uniform(20, 70, count)
            x1, y1 = x0 + slant * length, y0 + length
            thick = np.where(rng.uniform(size=count) < 0.1 * w / 448.0, 2, 1)
            for a, b, c, d, v, t in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), bright.tolist(),
                                        thick.tolist(), strict=True):
                cv2.line(layer, (int(a * 16), int(b * 16)), (int(c * 16), int(d * 16)), int(v), int(t),
                         cv2.LINE_AA, 4)
            layers.append(np.ascontiguousarray(np.clip(layer[..., None] * tint, 0, 255).astype(np.uint8)))
        return layers

    # ---- projection ---------------------------------------------------------------------------------------

    def camera_pose(self, x_m: float, y_m: float, yaw_rad: float) -> tuple[np.ndarray, np.ndarray]:
        """The camera's world position (3,) in metres and the world->OpenCV-camera rotation (3, 3)."""
        c, s = math.cos(yaw_rad), math.sin(yaw_rad)
        mx, my = self._mount_xy
        pos = np.array([x_m + c * mx - s * my, y_m + s * mx + c * my, self._cam_z])
        rz_t = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        return pos, self._cv_from_vehicle @ rz_t

    def _world_to_fixed(self, x_m: float, y_m: float, yaw_rad: float) -> tuple[np.ndarray, tuple, list]:
        """The 3x4 matrix from homogeneous world points to (S*u*Z, S*v*Z, Z), S = 2**SHIFT, the camera
        position, and the matrix again as rows of plain floats.

        Plain float arithmetic: for 3x3 matrices that is faster than numpy calls.
        """
        c, s = math.cos(yaw_rad), math.sin(yaw_rad)
        mx, my = self._mount_xy
        px, py, pz = x_m + c * mx - s * my, y_m + s * mx + c * my, self._cam_z
        rows = []
        for a0, a1, a2 in self._ks_rows:
            k0, k1 = a0 * c - a1 * s, a0 * s + a1 * c
            rows.append((k0, k1, a2, -(k0 * px + k1 * py + a2 * pz)))
        return np.array(rows), (px, py, pz), rows

    def project_points(self, points_xyz: np.ndarray, x_m: float, y_m: float,
                       yaw_rad: float) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) for a vehicle pose: pixel coordinates (N, 2) and depth (N,) in metres.

        ``u`` grows right and ``v`` down, continuous with pixel (row i, column j) covering [j, j+1) x
        [i, i+1), so the principal point is (W/2, H/2). Depth is along the optical axis; points with
        depth <= 0 are behind the camera and get nan pixel coordinates.
        """
        pts = np.asarray(points_xyz, np.float64).reshape(-1, 3)
        pos, rot = self.camera_pose(x_m, y_m, yaw_rad)
        cam = (pts - pos) @ rot.T
        depth = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam @ self._k.T)[:, :2] / np.where(depth > 0, depth, np.nan)[:, None]
        return uv, depth

    # ---- rendering ----------------------------------------------------------------------------------------

    def render(self, x_m: float, y_m: float, yaw_rad: float, frame: int = 0) -> np.ndarray:
        """HxWx3 uint8 RGB image of the scene from the vehicle pose; ``frame`` only animates rain.

        The returned array is freshly allocated (C-contiguous); the renderer keeps no reference to it.
        """
        canvas = self._bg_canvas.copy()  # the background with spare columns: see _draw_ground
        img = canvas[:, _PAD_PX:_PAD_PX + self.width]
        t, pos, rows = self._world_to_fixed(x_m, y_m, yaw_rad)
        heading = yaw_rad + self._wedge_yaw
        if self._sun is not None:
            self._draw_sun(img, rows)
        cells = self._grid.visible_cells(pos[0], pos[1], heading)
        if cells is not None and self._ground.n:
            self._draw_ground(canvas, t, cells)
        img = np.ascontiguousarray(img)
        if self._sheen is not None:
            r0, r1, lo, hi, sheen = self._sheen
            band = img[r0:r1]
            cv2.copyTo(sheen, cv2.inRange(band, lo, hi), band)
        if self._fog is not None:
            r0, r1, keep, add = self._fog
            band = img[r0:r1]
            cv2.multiply(band, keep, dst=band, scale=1.0 / 255.0)
            cv2.add(band, add, dst=band)
        if len(self._box_centre):
            self._draw_boxes(img, t, pos, heading)
        if self._rain:
            cv2.add(img, self._rain[frame % len(self._rain)], dst=img)
        return img

    def _draw_sun(self, img: np.ndarray, rows: list) -> None:
        """Add the sun glow sprite at the sun's pixel when it is in front of the camera.

        Only sky pixels get it: the rows above the highest ground pixel, or, where a rolled camera tilts the
        horizon, every pixel of the sky mask (clipping to those rows cut the glow off, or hid it at 45 deg).
        """
        sx, sy, sz = self._sun_dir
        d0, d1, d2 = ((r0 * sx + r1 * sy + r2 * sz) for r0, r1, r2, _ in rows)
        if d2 <= 1e-6:
            return
        u, v = d0 / d2 / _SCALE + 0.5, d1 / d2 / _SCALE + 0.5
        sprite = self._sun
        half = sprite.shape[0] // 2
        x0, y0 = int(math.floor(u)) - half, int(math.floor(v)) - half
        x1, y1 = x0 + sprite.shape[1], y0 + sprite.shape[0]
        mask = self._sky_mask
        bottom = self.height if mask is not None else self._sky_rows
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, bottom)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        roi = img[cy0:cy1, cx0:cx1]
        part = sprite[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        if mask is None:
            cv2.add(roi, part, dst=roi)
        else:
            cv2.add(roi, part, dst=roi, mask=mask[cy0:cy1, cx0:cx1])

    def _draw_ground(self, canvas: np.ndarray, t: np.ndarray, cells: np.ndarray) -> None:
        """Project, near-clip and fill the ground polygons of ``cells``: one fillPoly call per paint group.

        ``canvas`` is the image with :data:`_PAD_PX` spare columns each side: ``cv2.fillPoly`` clamps a span
        that lies wholly left or right of its image into the border column, so a thin polygon just off-screen
        painted a 1-pixel stripe down the image's edge (in 6 of 108 sampled frames of ``curves``); the
        spare columns take those spans and are cut away.
        """
        hom = t[:, (0, 1, 3)]  # the ground plane z=0 maps by a homography
        pts, b, clipped, bc = self._ground.project(cells, hom, self._ground_near, self._ground_fill)
        fill, line, shift, offset = cv2.fillPoly, cv2.LINE_8, SHIFT, (_PAD_PX << SHIFT, 0)
        # Lists of 2-D arrays convert faster than 3-D arrays in cv2's bindings; a group's polygons never
        # overlap, so its unclipped and clipped ones go in one call.
        if bc is None:
            for g, colour in enumerate(self._ground_colours):
                if b[g + 1] > b[g]:
                    fill(canvas, list(pts[b[g]:b[g + 1]]), colour, line, shift, offset)
            return
        for g, colour in enumerate(self._ground_colours):
            if b[g + 1] > b[g] or bc[g + 1] > bc[g]:
                fill(canvas, [*pts[b[g]:b[g + 1]], *clipped[bc[g]:bc[g + 1]]], colour, line, shift, offset)

    def _visible_boxes(self, pos: tuple[float, ...], heading: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices of boxes in the view wedge and within their reach, ordered far to near, and their depths.

        A box's reach is the far distance, capped where it would be under ~0.35 px even broadside (LOD).
        With a view wedge, all tests are linear in the box centre, so they are one product with ``_box_aug``.
        The depth (of the box centre, metres; for fog) is not the drawing order: see :meth:`_far_to_near`.
        """
        px, py = pos[0], pos[1]
        fx, fy = math.cos(heading), math.sin(heading)
        if self._wedge_half is None:
            rel = self._box_centre - (px, py)
            d2 = np.einsum("ij,ij->i", rel, rel)
            vis = np.flatnonzero(d2 <= self._box_reach**2)
            depth = np.sqrt(d2[vis])
        else:
            left, right = heading - self._wedge_half, heading + self._wedge_half
            lx, ly, rx, ry = math.sin(left), -math.cos(left), -math.sin(right), math.cos(right)
            w = np.array([[lx, rx, fx, fx], [ly, ry, fy, fy], [-lx * px - ly * py, -rx * px - ry * py,
                          -fx * px - fy * py, -fx * px - fy * py], [-1.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]])
            q = self._box_aug @ w  # left and right wedge distance - radius, depth - reach, depth
            vis = np.flatnonzero(q[:, :3].max(axis=1) <= 0.0)
            depth = q[vis, 3]
        order = self._far_to_near(vis, px, py)
        return vis[order], depth[order]

    def _far_to_near(self, vis: np.ndarray, px: float, py: float) -> np.ndarray:
        """The painter's order of boxes ``vis``: by the distance from the camera's ground point (px, py) to the
        nearest point of each footprint, farthest first.

        Boxes stand on the ground with disjoint footprints, so what hides what is decided in the ground plane.
        Checked against an exact order (a ray test on every pair whose views overlap) every 5th frame of expert
        drives: on one-turn, two-turn and mixed, the centre's depth drew a farther building over a nearer one
        in 27 of 900 frames (18 of 300 on one-turn). This key alone still swapped buildings that nearly touch,
        seen edge-on (random:1: 52 of 300 frames), which :meth:`_fix_touching` corrects: with it, no frame of
        those routes or of random:1, 2, 3, 7 and 11 (3,000 frames) differs from the exact order.
        """
        ax, ay, ex, ey, inv = self._box_segments.take(vis, axis=0).transpose(1, 0, 2)  # each (n, 4)
        rx, ry = px - ax, py - ay
        t = rx * ex
        t += ry * ey
        t *= inv
        np.clip(t, 0.0, 1.0, out=t)  # the nearest point of each edge, as a fraction along it
        rx -= t * ex
        ry -= t * ey
        rx *= rx
        ry *= ry
        rx += ry
        order = np.argsort(-rx.min(axis=1), kind="stable")
        return self._fix_touching(vis, order, px, py) if self._box_paired.take(vis).any() else order

    def _fix_touching(self, vis: np.ndarray, order: np.ndarray, px: float, py: float) -> np.ndarray:
        """Correct ``order`` (into ``vis``) for boxes less than :data:`_TOUCH_M` apart, where the nearest-point
        key can fail (two touching buildings seen edge-on): for those, the side of their separating line the
        camera is on says exactly which is in front. When the key breaks any such pair, every visible pair
        becomes a constraint of a topological sort that otherwise keeps the key's order (:func:`_constrained`).
        """
        rank = np.full(len(self._box_centre), -1, np.int64)
        rank[vis[order]] = np.arange(len(order))
        ra, rb = rank[self._box_pairs[:, 0]], rank[self._box_pairs[:, 1]]
        a_front = self._box_pair_line @ np.array([px, py, 1.0]) < 0.0
        live = (ra >= 0) & (rb >= 0)
        if not ((ra < rb) == a_front)[live].any():
            return order
        back, front = np.where(a_front, rb, ra)[live], np.where(a_front, ra, rb)[live]
        return order[_constrained(len(order), back, front)]

    def _draw_boxes(self, img: np.ndarray, t: np.ndarray, pos: tuple[float, ...], heading: float) -> None:
        """Fill the camera-facing faces of visible boxes far to near, shaded and fogged by the box's depth."""
        vis, depth = self._visible_boxes(pos, heading)
        if len(vis) == 0:
            return
        fids = (vis[:, None] * 5 + _FIVE).ravel()
        facing = self._face_plane.take(fids, axis=0) @ np.array([pos[0], pos[1], pos[2], 1.0]) > 1e-6
        fids = fids[facing]
        nf = len(fids)
        if nf == 0:
            return
        # One C call projects all corners: rows S*u*Z, S*v*Z, 1, Z give (S*u, S*v, 1/Z) after the division.
        rows = t.tolist()
        m44 = np.array([rows[0], rows[1], [0.0, 0.0, 0.0, 1.0], rows[2]])
        corners = self._face_corners.take(fids, axis=0)
        proj = cv2.perspectiveTransform(corners.reshape(-1, 1, 3), m44).reshape(nf, 4, 3)
        inv_z, uv = proj[..., 2], proj[..., :2]
        all_front = inv_z.min() > 0.0 and inv_z.max() < 1.0 / _BOX_NEAR_M
        if not (all_front and self._box_coords_bounded):
            np.clip(uv, -_COORD_LIMIT, _COORD_LIMIT, out=uv)
        pts = uv.astype(np.int32)
        if not all_front:
            # Faces reaching beside or behind the camera: clip those few in place, keeping the order.
            bad = (inv_z <= 0.0) | (inv_z >= 1.0 / _BOX_NEAR_M)
            pts = list(pts)
            for i in np.flatnonzero(bad.any(axis=1)).tolist():
                pts[i] = _clip_face(corners[i].tolist(), rows, _BOX_NEAR_M)
        # Depth is of the box centre: negative for a box reaching past the camera, hence the floor at 0; the
        # table has bins up to the largest reach, so no upper clip is needed.
        fog_bin = (np.maximum(depth, 0.0) * self._colour_bins_per_m).astype(np.intp)
        colours = self._colour_lut[fids, np.repeat(fog_bin, 5)[facing]].tolist()
        fill, line, shift = cv2.fillConvexPoly, cv2.LINE_8, SHIFT
        for p, colour in zip(pts, colours, strict=True):
            fill(img, p, colour, line, shift)
