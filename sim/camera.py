"""The embedded forward RGB camera: a fast pinhole renderer of a :class:`~sim.scene.Scene` with cv2 polygon fills.

What it draws, back to front, for a vehicle pose ``(x, y, yaw)`` in CARLA's world frame (x forward/east,
y right, z up, metres; yaw in radians, positive from +x towards +y):

1. a precomputed background: a sky gradient above the horizon and olive-green verge below it (plus a sun
   glow when the sun is in view);
2. the ground quads in ascending :class:`~sim.scene.Material` order (markings land on asphalt), one
   ``cv2.fillPoly`` call per colour, after cheap grid culling, vectorised projection and near-plane clipping;
3. a wet sheen (sky reflection near the horizon on asphalt) and distance haze/fog as per-pixel blends over
   precomputed row bands (the depth of a ground pixel does not depend on the vehicle's yaw);
4. the boxes far to near (painter's algorithm), only faces facing the camera, shaded by their orientation to
   the sun and fogged by their distance;
5. rain streaks: one of a few precomputed layers, picked by the frame index.

Everything that does not depend on the pose is computed in the constructor or in :meth:`CameraRenderer.set_weather`,
so :meth:`CameraRenderer.render` is a few dozen numpy/cv2 calls. The output is deterministic bit for bit.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from sim.scene import Material, Scene
from sim.types import CameraConfig
from sim.weather import Weather

SHIFT = 8  # fractional bits of the fixed-point vertex coordinates given to cv2 fills (1/256 px)
_SCALE = float(1 << SHIFT)
_COORD_LIMIT = float(2**30)  # fixed-point coordinates are clipped to this so the int32 cast never wraps
_NEAR_M = 0.1  # near clipping plane, metres in front of the camera
_SMALL_SCENE = 2048  # at most this many ground quads: project them all instead of grid culling
_RAIN_LAYERS = 8  # precomputed rain streak layers, cycled by the frame index
_FOG_START_MIN_M = 8.0  # fog never starts nearer than this (CARLA presets say 0.75 m; keeps blends cheap)

# Albedo-like base colours (RGB at unit light). Unknown ground materials are grey, unknown boxes beige-grey.
GROUND_RGB: dict[int, tuple[int, int, int]] = {
    Material.GRASS: (92, 118, 58),
    Material.SIDEWALK: (170, 166, 158),
    Material.ASPHALT: (82, 82, 86),
    Material.JUNCTION: (88, 87, 90),
    Material.KERB: (198, 196, 188),
    Material.MARKING_WHITE: (240, 240, 234),
    Material.STOP_LINE: (244, 244, 240),
}
BOX_RGB: dict[int, tuple[int, int, int]] = {
    Material.BUILDING: (182, 160, 136),
    Material.WALL: (160, 152, 142),
    Material.POLE: (122, 122, 126),
}
_DEFAULT_GROUND_RGB = (128, 128, 128)
_DEFAULT_BOX_RGB = (150, 146, 140)
_ROOF_RGB = (118, 110, 106)
_DARKENED_BY_WET = {Material.ASPHALT: 0.5, Material.JUNCTION: 0.5, Material.SIDEWALK: 0.7, Material.KERB: 0.8,
                    Material.MARKING_WHITE: 0.88, Material.STOP_LINE: 0.88}

# Faces of a box as indices into its 8 corners (bottom 0-3, top 4-7): 4 sides then the roof.
_FACE_CORNERS = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7], [4, 5, 6, 7]])


# --------------------------------------------------------------------------------------------------------------
# Small maths helpers
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Weather -> look
# --------------------------------------------------------------------------------------------------------------


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
        self.sun = _lerp((1.0, 0.98, 0.95), (1.0, 0.64, 0.36), self.warm) * 0.8 * (1.0 - 0.85 * cloud) * day
        sky_tint = _lerp((0.92, 0.96, 1.05), (1.0, 1.0, 1.0), cloud)
        self.ambient = sky_tint * (0.42 + 0.1 * cloud) * (0.45 + 0.55 * high) * (0.3 + 0.7 * day)
        self.ambient = self.ambient * (1.0 - 0.25 * self.rain)
        # Sky colours: clear blue (orange horizon at sunset) blended towards overcast grey.
        clear_hor = _lerp((198, 218, 238), (252, 168, 100), warm * 0.95)
        clear_zen = _lerp((60, 120, 206), (66, 92, 158), warm)
        grey = 1.0 - 0.3 * self.rain
        cloud_hor, cloud_zen = np.array((200, 202, 206)) * grey, np.array((158, 163, 171)) * grey
        c = cloud**0.7
        bright = 0.55 + 0.45 * high * (0.4 + 0.6 * day) + 0.0 * c
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
        amb = self.ambient * (0.78 + 0.12 * cos_az)[..., None]
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


# --------------------------------------------------------------------------------------------------------------
# Geometry preparation (construction time)
# --------------------------------------------------------------------------------------------------------------


def _cell_pairs(lo: np.ndarray, hi: np.ndarray, origin: np.ndarray, cell_m: float,
                ny: int) -> tuple[np.ndarray, np.ndarray]:
    """(item, cell id) pairs for every grid cell each bounding box [lo, hi] (n, 2) touches; cell = ix*ny + iy."""
    ij0 = np.floor((lo - origin) / cell_m).astype(np.int64)
    ij1 = np.floor((hi - origin) / cell_m).astype(np.int64)
    sx, sy = ij1[:, 0] - ij0[:, 0] + 1, ij1[:, 1] - ij0[:, 1] + 1
    cnt = sx * sy
    item = np.repeat(np.arange(len(lo)), cnt)
    k = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    ix = ij0[item, 0] + k // sy[item]
    iy = ij0[item, 1] + k % sy[item]
    return item, ix * ny + iy


def _sat_overlap(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """True where convex quads ``a[i]`` and ``b[i]`` (P, 4, 2) overlap by more than ``tol`` metres.

    Separating-axis test on the 8 edge normals; touching (shared edges) counts as not overlapping.
    """
    def normals(q: np.ndarray) -> np.ndarray:
        e = np.roll(q, -1, axis=1) - q
        n = np.stack([-e[..., 1], e[..., 0]], axis=-1)
        return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)

    axes = np.concatenate([normals(a), normals(b)], axis=1)  # (P, 8, 2)
    pa = np.einsum("pkd,pvd->pkv", axes, a)
    pb = np.einsum("pkd,pvd->pkv", axes, b)
    overlap = np.minimum(pa.max(-1), pb.max(-1)) - np.maximum(pa.min(-1), pb.min(-1))
    return ~(overlap <= tol).any(axis=1)


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
    lo, hi = quads.min(axis=1), quads.max(axis=1)
    origin = lo.min(axis=0)
    cell = max(8.0, float(np.sqrt(np.prod(hi.max(axis=0) - origin + 1.0) / 4e5)))
    ny = int(np.floor((hi[:, 1].max() - origin[1]) / cell)) + 1
    item, cid = _cell_pairs(lo + tol, hi - tol, origin, cell, ny)
    key = cid * 256 + material[item].astype(np.int64)  # same cell and same material
    order = np.lexsort((item, key))
    item, key = item[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    lengths = np.diff(np.r_[starts, len(key)])
    # All pairs (i, j), i before j, inside each (cell, material) run.
    pos = np.arange(len(key))
    run_end = np.repeat(starts + lengths, lengths)
    partners = run_end - pos - 1
    first = np.repeat(pos, partners)
    second = first + 1 + (np.arange(int(partners.sum())) - np.repeat(np.cumsum(partners) - partners, partners))
    qa, qb = item[first], item[second]
    if len(qa) == 0:
        return layers
    lo_a, hi_a, lo_b, hi_b = lo[qa], hi[qa], lo[qb], hi[qb]
    box_hit = np.all((np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)) > tol, axis=1)
    qa, qb = qa[box_hit], qb[box_hit]
    if len(qa) == 0:
        return layers
    pair = np.unique(np.minimum(qa, qb) * n + np.maximum(qa, qb))
    qa, qb = pair // n, pair % n
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


def _clip_near(poly: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Clip polygons against the plane Z = ``near`` (vectorised Sutherland-Hodgman, one plane).

    ``poly`` (n, k, 3) holds vertices as (a, b, Z) where a, b are any coordinates linear in camera space (here
    K-scaled ``u*Z, v*Z``). Returns the clipped polygons (m, 2k, 3) padded to a fixed size by repeating
    vertices (harmless for fills) and the mask (n,) of the input polygons that kept something. Intersections
    are interpolated from the inside endpoint, so an edge shared by two polygons clips to the same point.
    """
    z = poly[..., 2]
    inside = z > near
    keep = inside.any(axis=1)
    poly, z, inside = poly[keep], z[keep], inside[keep]
    m, k = inside.shape
    nxt = np.roll(poly, -1, axis=1)
    inside_n = np.roll(inside, -1, axis=1)
    cross = inside != inside_n
    a = np.where(inside[..., None], poly, nxt)
    b = np.where(inside[..., None], nxt, poly)
    za, zb = a[..., 2], b[..., 2]
    t = (near - za) / np.where(cross, zb - za, 1.0)
    inter = a + t[..., None] * (b - a)
    inter[..., 2] = near
    out = np.empty((m, 2 * k, 3))
    out[:, 0::2], out[:, 1::2] = poly, inter
    valid = np.empty((m, 2 * k), bool)
    valid[:, 0::2], valid[:, 1::2] = inside, cross
    idx = np.where(valid, np.arange(2 * k), -1)
    np.maximum.accumulate(idx, axis=1, out=idx)
    idx = np.where(idx < 0, valid.argmax(axis=1)[:, None], idx)
    return np.take_along_axis(out, idx[..., None], axis=1), keep


def _to_fixed(homog: np.ndarray) -> np.ndarray:
    """(..., 3) K-scaled homogeneous points with Z > 0 -> (..., 2) int32 fixed-point pixel coordinates."""
    uv = homog[..., :2] / homog[..., 2:3]
    np.clip(uv, -_COORD_LIMIT, _COORD_LIMIT, out=uv)
    return uv.astype(np.int32)


class _GroundIndex:
    """A uniform grid of cells over the ground quads; a query returns the quads in cells the camera can see.

    A quad is listed in every cell its bounding box touches, so long quads are never missed. The query tests
    a fixed window of cells around the camera against the view wedge and the far distance (vectorised), then
    expands the selected cells' item ranges and de-duplicates through a boolean mask, which also sorts them.
    """

    def __init__(self, quads: np.ndarray, cell_m: float, far_m: float) -> None:
        lo, hi = quads.min(axis=1), quads.max(axis=1)
        self.n = len(quads)
        self.origin = lo.min(axis=0)
        extent = hi.max(axis=0) - self.origin
        self.cell = max(cell_m, float(np.sqrt((extent[0] + 1.0) * (extent[1] + 1.0) / 1e6)))
        self.nx = int(extent[0] // self.cell) + 1
        self.ny = int(extent[1] // self.cell) + 1
        item, cid = _cell_pairs(lo, hi, self.origin, self.cell, self.ny)
        order = np.lexsort((item, cid))
        self.items = item[order].astype(np.int32)
        counts = np.bincount(cid, minlength=self.nx * self.ny)
        self.count = counts.astype(np.int64)
        self.start = (np.cumsum(counts) - counts).astype(np.int64)
        r = int(math.ceil(far_m / self.cell)) + 1
        ox, oy = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
        self.ox, self.oy = ox.ravel(), oy.ravel()
        self.oxm, self.oym = self.ox * self.cell, self.oy * self.cell
        self.radius = self.cell * math.sqrt(0.5)

    def select(self, cam_xy: tuple[float, float], wedge: tuple | None, far_m: float) -> np.ndarray:
        """Sorted indices of the quads in cells within ``far_m`` of ``cam_xy`` and inside ``wedge``.

        ``wedge`` is ``(nlx, nly, nrx, nry)``: outward unit normals of the view wedge's left and right
        boundaries in world xy, or None for no angular culling.
        """
        cx, cy = cam_xy
        fx = math.floor((cx - self.origin[0]) / self.cell)
        fy = math.floor((cy - self.origin[1]) / self.cell)
        px = self.oxm + ((fx + 0.5) * self.cell + self.origin[0] - cx)
        py = self.oym + ((fy + 0.5) * self.cell + self.origin[1] - cy)
        r = self.radius
        ok = px * px + py * py <= (far_m + r) ** 2
        if wedge is not None:
            ok &= (px * wedge[0] + py * wedge[1] <= r) & (px * wedge[2] + py * wedge[3] <= r)
        ix, iy = self.ox + fx, self.oy + fy
        ok &= (ix >= 0) & (ix < self.nx) & (iy >= 0) & (iy < self.ny)
        cells = (ix * self.ny + iy)[ok]
        counts = self.count[cells]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        ends = np.cumsum(counts)
        offs = np.repeat(self.start[cells] - ends + counts, counts) + np.arange(total)
        mask = np.zeros(self.n, bool)
        mask[self.items[offs]] = True
        return np.flatnonzero(mask)


# --------------------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------------------


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
        self._mount_xy = (float(cam.x_m), float(cam.y_m))
        self._cam_z = float(cam.z_m)
        self._wedge_half, self._wedge_yaw = self._view_wedge()

    def _view_wedge(self) -> tuple[float | None, float]:
        """Half-angle (rad) and centre yaw (rad, vehicle frame) of the horizontal wedge holding every view ray.

        Sampled on the image border (azimuth is extreme there); None when rays point too steeply or the wedge
        is wider than a half-plane, in which case only distance culling is used.
        """
        w, h = self.width, self.height
        t = np.linspace(0.0, 1.0, 33)
        border = np.concatenate([np.stack([t * w, np.zeros_like(t)], 1), np.stack([t * w, np.full_like(t, h)], 1),
                                 np.stack([np.zeros_like(t), t * h], 1), np.stack([np.full_like(t, w), t * h], 1)])
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
        self._sky_mask = np.where(self._ground_px, 0, 255).astype(np.uint8)

    def _init_ground(self, scene: Scene, cell_m: float) -> None:
        """Sort quads into paint groups (material, overlap layer) and build the culling grid."""
        quads = np.asarray(scene.ground_quads, np.float64)
        mats = np.asarray(scene.ground_material, np.int64)
        layers = overlap_layers(quads, mats) if len(quads) else np.zeros(0, np.int32)
        order = np.lexsort((np.arange(len(quads)), layers, mats))
        self._quads = np.ascontiguousarray(quads[order])
        key = mats[order] * 4096 + layers[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        self._group_material = [int(mats[order][s]) for s in starts]
        self._group_start = np.r_[starts, len(key)].astype(np.int64)
        self._all_quads = np.arange(len(quads))
        self._index = _GroundIndex(self._quads, cell_m, self.far_m) if len(quads) > _SMALL_SCENE else None

    def _init_boxes(self, scene: Scene) -> None:
        """Box corners, outward face normals (footprints made counter-clockwise), face centres, bounds."""
        fp = np.asarray(scene.box_footprints, np.float64).copy()
        m = len(fp)
        hgt = np.asarray(scene.box_heights_m, np.float64)
        if m:
            x, y = fp[..., 0], fp[..., 1]
            area = 0.5 * np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1)
            fp[area < 0] = fp[area < 0][:, ::-1]
        edge = np.roll(fp, -1, axis=1) - fp
        normal = np.stack([edge[..., 1], -edge[..., 0]], axis=-1)
        normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
        self._box_normal = normal  # (m, 4, 2)
        self._box_plane = np.sum(normal * fp, axis=-1)  # (m, 4): n . p for points on each side
        self._box_height = hgt
        corners = np.ones((m, 8, 4))
        corners[:, :4, :2], corners[:, 4:, :2] = fp, fp
        corners[:, :4, 2], corners[:, 4:, 2] = 0.0, hgt[:, None]
        self._box_corners = corners
        centres = np.zeros((m, 5, 3))
        centres[:, :4, :2] = 0.5 * (fp + np.roll(fp, -1, axis=1))
        centres[:, :4, 2] = hgt[:, None] / 2.0
        centres[:, 4, :2] = fp.mean(axis=1)
        centres[:, 4, 2] = hgt
        self._face_centre = centres
        self._box_centre = fp.mean(axis=1) if m else np.zeros((0, 2))
        self._box_radius = (np.linalg.norm(fp - self._box_centre[:, None], axis=-1).max(axis=1) if m
                            else np.zeros(0))
        self._box_material = np.asarray(scene.box_material, np.int64)
        self._box_shade = np.asarray(scene.box_shade, np.float64)

    # ---- weather ----------------------------------------------------------------------------------------

    def set_weather(self, weather: Weather) -> None:
        """Recompute everything weather-dependent: colours, background, fog and sheen bands, rain layers."""
        self.weather = weather
        look = _Look(weather)
        self._look = look
        self._fog_rgb = look.fog_rgb
        self._ground_colours = self._ground_palette(look)
        self._face_rgb = self._box_palette(look)
        self._bg = self._background(look)
        self._sheen = self._sheen_band(look)
        self._fog = self._fog_band(look)
        self._sun = self._sun_sprite(look)
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
        return np.clip(out, 0.0, 255.0)

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
        """Rows, weights and fog colour image for the per-pixel ground fog blend (cv2.blendLinear)."""
        w = np.where(self._ground_px, look.fog_weight(np.where(self._ground_px, self._ground_dist, 0.0),
                                                      self.far_m), 0.0)
        band = self._row_band(w, 0.5 / 255.0)
        if band is None:
            return None
        r0, r1 = band
        wb = w[r0:r1].astype(np.float32)
        colour = np.empty((r1 - r0, self.width, 3), np.uint8)
        colour[:] = np.clip(np.rint(look.fog_rgb), 0, 255).astype(np.uint8)
        return r0, r1, np.ascontiguousarray(1.0 - wb), np.ascontiguousarray(wb), colour

    def _sheen_band(self, look: _Look) -> tuple | None:
        """Rows, colour bounds and reflection image for the wet-road sheen, or None when dry.

        A wet road mirrors the sky: Schlick's Fresnel term grows towards grazing angles, so the asphalt gets
        lighter and sky-tinted towards the horizon. Applied only to pixels painted in the asphalt/junction colour.
        """
        if look.wet <= 0.02:
            return None
        dz = np.sin(-self._elevation)  # cos of the incidence angle for ground pixels
        fresnel = 0.02 + 0.98 * (1.0 - np.clip(dz, 0.0, 1.0)) ** 5
        weight = np.where(self._ground_px, fresnel * 0.75 * look.wet, 0.0)
        band = self._row_band(weight, 3.0 / 255.0)
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
        strength = (1.0 - look.cloud) ** 1.5 * float(_smoothstep(math.degrees(look.sun_alt_rad) / 4.0))
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
        count = max(1, int(look.rain * 0.0035 * w * h))
        slant = 0.12 + 0.35 * look.wind
        tint = np.array([0.92, 0.95, 1.0]) * (0.55 + 0.45 * look.rain)
        layers = []
        for _ in range(_RAIN_LAYERS):
            layer = np.zeros((h, w), np.uint8)
            x0 = rng.uniform(-0.3 * w, w, count)
            y0 = rng.uniform(-0.1 * h, h, count)
            length = rng.uniform(0.03, 0.09, count) * h
            bright = rng.uniform(35, 95, count)
            x1, y1 = x0 + slant * length, y0 + length
            thick = np.where(rng.uniform(size=count) < 0.15 * w / 448.0, 2, 1)
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

    def _world_to_fixed(self, x_m: float, y_m: float, yaw_rad: float) -> tuple[np.ndarray, np.ndarray]:
        """The 3x4 matrix from homogeneous world points to (S*u*Z, S*v*Z, Z), S = 2**SHIFT; and the camera position."""
        c, s = math.cos(yaw_rad), math.sin(yaw_rad)
        mx, my = self._mount_xy
        pos = np.array([x_m + c * mx - s * my, y_m + s * mx + c * my, self._cam_z])
        km = self._ks_cv_from_vehicle @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        t = np.empty((3, 4))
        t[:, :3] = km
        t[:, 3] = -(km @ pos)
        return t, pos

    def project_points(self, points_xyz: np.ndarray, x_m: float, y_m: float,
                       yaw_rad: float) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) for a vehicle pose: pixel coordinates (N, 2) and depth (N,) in metres.

        ``u`` grows right and ``v`` down, continuous with pixel (row i, column j) covering [j, j+1) x [i, i+1),
        so the principal point is (W/2, H/2). Depth is along the optical axis; points with depth <= 0 are
        behind the camera and their pixel coordinates are meaningless (nan).
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
        img = self._bg.copy()
        t, pos = self._world_to_fixed(x_m, y_m, yaw_rad)
        wedge = self._wedge(yaw_rad)
        if self._sun is not None:
            self._draw_sun(img, t)
        self._draw_ground(img, t, pos, wedge)
        if self._sheen is not None:
            r0, r1, lo, hi, sheen = self._sheen
            band = img[r0:r1]
            cv2.copyTo(sheen, cv2.inRange(band, lo, hi), band)
        if self._fog is not None:
            r0, r1, w_img, w_fog, colour = self._fog
            band = img[r0:r1]
            cv2.blendLinear(band, colour, w_img, w_fog, dst=band)
        if len(self._box_centre):
            self._draw_boxes(img, t, pos, wedge)
        if self._rain:
            cv2.add(img, self._rain[frame % len(self._rain)], dst=img)
        return img

    def _wedge(self, yaw_rad: float) -> tuple[float, float, float, float] | None:
        """Outward unit normals (left x, left y, right x, right y) of the horizontal view wedge in world xy."""
        if self._wedge_half is None:
            return None
        centre = yaw_rad + self._wedge_yaw
        right, left = centre + self._wedge_half, centre - self._wedge_half
        return (math.sin(left), -math.cos(left), -math.sin(right), math.cos(right))

    def _draw_sun(self, img: np.ndarray, t: np.ndarray) -> None:
        """Add the sun glow sprite at the sun's pixel, on sky pixels only, when it is in front of the camera."""
        d = t[:, :3] @ self._look.sun_dir
        if d[2] <= 1e-6:
            return
        u, v = d[0] / d[2] / _SCALE + 0.5, d[1] / d[2] / _SCALE + 0.5
        sprite = self._sun
        half = sprite.shape[0] // 2
        x0, y0 = int(math.floor(u)) - half, int(math.floor(v)) - half
        x1, y1 = x0 + sprite.shape[1], y0 + sprite.shape[0]
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, self.width), min(y1, self.height)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        roi = img[cy0:cy1, cx0:cx1]
        cv2.add(roi, sprite[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0], dst=roi, mask=self._sky_mask[cy0:cy1, cx0:cx1])

    def _draw_ground(self, img: np.ndarray, t: np.ndarray, pos: np.ndarray, wedge: tuple | None) -> None:
        """Cull, project, near-clip and fill the ground quads, one fillPoly call per paint group and kind."""
        if self._index is None:
            sel = self._all_quads
            bounds = self._group_start
        else:
            sel = self._index.select((pos[0], pos[1]), wedge, self.far_m)
            bounds = np.searchsorted(sel, self._group_start)
        n = len(sel)
        if n == 0:
            return
        quads = self._quads.take(sel, axis=0) if self._index is not None else self._quads
        hom = np.ascontiguousarray(t[:, [0, 1, 3]])  # ground plane z=0: a homography
        flat = quads.reshape(-1, 1, 2)
        fixed = cv2.perspectiveTransform(flat, hom).reshape(n, 4, 2)
        z = (flat.reshape(-1, 2) @ hom[2, :2] + hom[2, 2]).reshape(n, 4)
        zmin = np.minimum(np.minimum(z[:, 0], z[:, 1]), np.minimum(z[:, 2], z[:, 3]))
        np.clip(fixed, -_COORD_LIMIT, _COORD_LIMIT, out=fixed)
        pts = fixed.astype(np.int32)
        allin = zmin > _NEAR_M
        colours = self._ground_colours
        if allin.all():
            b = bounds.tolist()
            for g, colour in enumerate(colours):
                if b[g + 1] > b[g]:
                    cv2.fillPoly(img, pts[b[g]:b[g + 1]], colour, cv2.LINE_8, SHIFT)
            return
        idx_in = np.flatnonzero(allin)
        b_in = np.searchsorted(idx_in, bounds).tolist()
        pts_in = pts[idx_in]
        near = np.flatnonzero(~allin)
        zn = z[near]
        near = near[np.maximum(np.maximum(zn[:, 0], zn[:, 1]), np.maximum(zn[:, 2], zn[:, 3])) > _NEAR_M]
        b_near = np.searchsorted(near, bounds).tolist()
        if len(near):
            q = quads[near]
            homog = q @ hom[:, :2].T + hom[:, 2]
            clipped, _ = _clip_near(homog, _NEAR_M)
            pts_near = _to_fixed(clipped)
        for g, colour in enumerate(colours):
            if b_in[g + 1] > b_in[g]:
                cv2.fillPoly(img, pts_in[b_in[g]:b_in[g + 1]], colour, cv2.LINE_8, SHIFT)
            if b_near[g + 1] > b_near[g]:
                cv2.fillPoly(img, pts_near[b_near[g]:b_near[g + 1]], colour, cv2.LINE_8, SHIFT)

    def _visible_boxes(self, pos: np.ndarray, wedge: tuple | None) -> np.ndarray:
        """Indices of boxes within the far distance and the view wedge, ordered far to near."""
        rel = self._box_centre - pos[:2]
        px, py = rel[:, 0], rel[:, 1]
        r = self._box_radius
        d2 = px * px + py * py
        ok = d2 <= (self.far_m + r) ** 2
        if wedge is not None:
            ok &= (px * wedge[0] + py * wedge[1] <= r) & (px * wedge[2] + py * wedge[3] <= r)
        vis = np.flatnonzero(ok)
        return vis[np.argsort(-d2[vis], kind="stable")]

    def _draw_boxes(self, img: np.ndarray, t: np.ndarray, pos: np.ndarray, wedge: tuple | None) -> None:
        """Fill the camera-facing faces of visible boxes far to near, each shaded and fogged by distance."""
        vis = self._visible_boxes(pos, wedge)
        if len(vis) == 0:
            return
        k = len(vis)
        facing = np.empty((k, 5), bool)
        facing[:, :4] = self._box_normal[vis] @ pos[:2] > self._box_plane[vis] + 1e-6
        facing[:, 4] = self._box_height[vis] < pos[2] - 1e-6
        corners = (self._box_corners[vis].reshape(-1, 4) @ t.T).reshape(k, 8, 3)
        faces = corners[:, _FACE_CORNERS][facing]  # (nf, 4, 3), far boxes first
        if len(faces) == 0:
            return
        clipped, keep = _clip_near(faces, _NEAR_M)
        if len(clipped) == 0:
            return
        pts = _to_fixed(clipped)
        centres = self._face_centre[vis][facing][keep] - pos
        dist = np.sqrt(np.einsum("ij,ij->i", centres, centres))
        fog = self._look.fog_weight(dist, self.far_m)[:, None]
        rgb = self._face_rgb[vis][facing][keep]
        colours = (rgb + (self._fog_rgb - rgb) * fog).tolist()
        fill = cv2.fillConvexPoly
        for p, colour in zip(pts, colours, strict=True):
            fill(img, p, colour, cv2.LINE_8, SHIFT)
