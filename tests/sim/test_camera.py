"""Tests of the embedded camera renderer (``sim.camera``): projection, clipping, culling, weather, output.

The scene builders here are also used by benchmarks and preview scripts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.camera import CameraRenderer, overlap_layers
from sim.scene import Material, Scene, box_footprint, quad_strip, straight_test_scene
from sim.types import CameraConfig
from sim.weather import WEATHERS, Weather

CLEAR = WEATHERS["ClearNoon"]
FIVE = ("ClearNoon", "CloudyNoon", "WetNoon", "HardRainNoon", "ClearSunset")


# ---- scenes shared with the benchmark / preview scripts --------------------------------------------------


def _merge(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (quads, material) parts into ground arrays."""
    quads = np.concatenate([q for q, _ in parts])
    mats = np.concatenate([np.full(len(q), m, np.uint8) for q, m in parts])
    return quads, mats


def extended_straight_scene(length_m: float = 300.0) -> Scene:
    """``straight_test_scene`` plus sidewalks, low walls and poles: a realistic straight view."""
    base = straight_test_scene(length_m)
    xs = np.arange(-20.0, length_m + 1e-9, 5.0)

    def strip(y0: float, y1: float) -> np.ndarray:
        return quad_strip(np.stack([xs, np.full_like(xs, y0)], 1), np.stack([xs, np.full_like(xs, y1)], 1))

    quads, mats = _merge([(base.ground_quads, 0)] + [(strip(-7.3, -3.8), Material.SIDEWALK),
                                                     (strip(3.8, 7.3), Material.SIDEWALK)])
    mats[: len(base.ground_quads)] = base.ground_material
    poles = [box_footprint(x, s * 4.2, 0.0, 0.25, 0.25) for x in range(5, int(length_m), 30) for s in (-1, 1)]
    walls = [box_footprint(x + 12.5, s * 8.0, 0.0, 10.0, 0.3) for x in range(0, int(length_m), 50)
             for s in (-1, 1)]
    fp = np.concatenate([base.box_footprints, np.array(poles), np.array(walls)])
    heights = np.concatenate([base.box_heights_m, np.full(len(poles), 5.0), np.full(len(walls), 1.2)])
    mat = np.concatenate([base.box_material, np.full(len(poles), Material.POLE, np.uint8),
                          np.full(len(walls), Material.WALL, np.uint8)])
    shade = np.concatenate([base.box_shade, np.ones(len(poles) + len(walls), np.float32)])
    return Scene(quads, mats, fp, heights, mat, shade)


def _centreline(step_m: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, headings and arc length of a road: straight, right bend R=60 m, straight, left bend R=90 m."""
    pieces = [(40.0, 0.0), (math.pi / 2 * 60.0, 1 / 60.0), (30.0, 0.0), (math.pi / 2 * 90.0, -1 / 90.0),
              (120.0, 0.0)]
    pts, hdg, s_all = [np.zeros(2)], [0.0], [0.0]
    for length, curvature in pieces:
        n = max(1, int(round(length / step_m)))
        ds = length / n
        for _ in range(n):
            h = hdg[-1] + curvature * ds / 2
            pts.append(pts[-1] + ds * np.array([math.cos(h), math.sin(h)]))
            hdg.append(hdg[-1] + curvature * ds)
            s_all.append(s_all[-1] + ds)
    return np.array(pts), np.array(hdg), np.array(s_all)


def curved_test_scene() -> Scene:
    """A two-lane road with a right and a left bend, kerbs, sidewalks, markings and buildings along it."""
    pts, hdg, s = _centreline()
    right = np.stack([-np.sin(hdg), np.cos(hdg)], 1)

    def off(d: float) -> np.ndarray:
        return pts + right * d

    def strip(a: float, b: float) -> np.ndarray:
        return quad_strip(off(a), off(b))

    centre = strip(-0.075, 0.075)
    mid = 0.5 * (s[:-1] + s[1:])
    dashes = centre[(mid % 9.0) < 3.0]
    parts = [(strip(-3.5, 3.5), Material.ASPHALT), (strip(-7.3, -3.8), Material.SIDEWALK),
             (strip(3.8, 7.3), Material.SIDEWALK), (strip(-3.8, -3.5), Material.KERB),
             (strip(3.5, 3.8), Material.KERB), (strip(-3.4, -3.25), Material.MARKING_WHITE),
             (strip(3.25, 3.4), Material.MARKING_WHITE), (dashes, Material.MARKING_WHITE)]
    quads, mats = _merge(parts)
    boxes, heights = [], []
    for i in range(5, len(pts), 9):
        for side in (-1, 1):
            c = pts[i] + right[i] * side * 15.0
            boxes.append(box_footprint(c[0], c[1], hdg[i], 14.0, 10.0))
            heights.append(6.0 + (i * 7 % 13))
    m = len(boxes)
    return Scene(quads, mats, np.array(boxes), np.array(heights, np.float64),
                 np.full(m, Material.BUILDING, np.uint8), np.linspace(0.65, 1.15, m).astype(np.float32))


def empty_scene() -> Scene:
    """No geometry at all."""
    return Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), np.zeros((0, 4, 2)), np.zeros(0),
                 np.zeros(0, np.uint8), np.zeros(0, np.float32))


def _renderer(scene: Scene | None = None, weather: Weather = CLEAR, **cam) -> CameraRenderer:
    cam.setdefault("width", 160)
    cam.setdefault("height", 160)
    scene = scene if scene is not None else extended_straight_scene()
    return CameraRenderer(scene, CameraConfig(**cam), weather)


# ---- projection ------------------------------------------------------------------------------------------


def test_point_at_camera_height_straight_ahead_is_on_horizon_at_centre():
    r = _renderer(empty_scene())
    cam = r.camera
    uv, depth = r.project_points(np.array([[50.0 + cam.x_m, 0.0, cam.z_m]]), 0.0, 0.0, 0.0)
    np.testing.assert_allclose(uv[0], [cam.width / 2, cam.height / 2], atol=1e-9)
    assert depth[0] == pytest.approx(50.0)


@pytest.mark.parametrize("d", [3.0, 10.0, 40.0])
def test_ground_point_straight_ahead_lands_at_expected_row(d):
    r = _renderer(empty_scene(), width=448, height=448)
    cam = r.camera
    uv, _ = r.project_points(np.array([[cam.x_m + d, 0.0, 0.0]]), 0.0, 0.0, 0.0)
    assert uv[0, 1] == pytest.approx(cam.height / 2 + cam.focal_px * cam.z_m / d)
    assert uv[0, 0] == pytest.approx(cam.width / 2)


def test_point_to_the_right_lands_right_of_centre_and_yaw_rotates_the_view():
    r = _renderer(empty_scene())
    uv, _ = r.project_points(np.array([[20.0, 5.0, 1.0], [20.0, -5.0, 1.0]]), 0.0, 0.0, 0.0)
    assert uv[0, 0] > 80.0 > uv[1, 0]
    # The vehicle at the origin facing +y (yaw 90 deg): a point at +y is straight ahead, +x is on its left.
    pts = np.array([[0.0, 30.0, r.camera.z_m], [10.0, 20.0, 2.4]])
    uv, depth = r.project_points(pts, 0.0, 0.0, math.pi / 2)
    assert uv[0, 0] == pytest.approx(80.0) and depth[0] == pytest.approx(30.0 - r.camera.x_m)
    assert uv[1, 0] < 80.0


def test_mount_pitch_down_moves_the_horizon_up():
    level = _renderer(empty_scene())
    down = _renderer(empty_scene(), pitch_deg=-10.0)
    far = np.array([[1000.0, 0.0, 2.4]])
    v_level = level.project_points(far, 0, 0, 0)[0][0, 1]
    v_down = down.project_points(far, 0, 0, 0)[0][0, 1]
    assert v_down == pytest.approx(80.0 - level.camera.focal_px * math.tan(math.radians(10.0)), abs=0.05)
    assert v_down < v_level


# ---- what the images show --------------------------------------------------------------------------------


def _is_white(img: np.ndarray) -> np.ndarray:
    return np.all(img > 200, axis=-1)


def test_lane_markings_converge_towards_the_vanishing_point():
    r = _renderer(extended_straight_scene(), width=448, height=448)
    img = r.render(0.0, 0.0, 0.0)
    h, w = 448, 448
    centres = []
    for row in (260, 290, 330):
        cols = np.flatnonzero(_is_white(img[row]))
        left, right = cols[cols < w / 2 - 10], cols[cols > w / 2 + 10]  # skip the dashed centre line
        assert len(left) and len(right), f"no edge lines found on row {row}"
        centres.append((row, left.mean(), right.mean()))
    gaps = [b - a for _, a, b in centres]
    assert gaps[0] < gaps[1] < gaps[2]  # lines spread apart towards the bottom of the image
    # Extrapolate each edge line to the horizon: both meet near the image centre.
    rows = np.array([c[0] for c in centres], float)
    for k in (1, 2):
        slope, icpt = np.polyfit(rows, [c[k] for c in centres], 1)
        assert slope * (h / 2) + icpt == pytest.approx(w / 2, abs=6.0)


def test_pose_far_from_geometry_shows_only_sky_and_grass():
    scene = extended_straight_scene()
    r = _renderer(scene)
    img = r.render(5000.0, 5000.0, math.pi)
    blank = _renderer(empty_scene()).render(5000.0, 5000.0, math.pi)
    np.testing.assert_array_equal(img, blank)
    sky, grass = img[:60].reshape(-1, 3).astype(int), img[100:].reshape(-1, 3).astype(int)
    assert np.all(sky[:, 2] > sky[:, 0])  # blue sky
    assert np.all((grass[:, 1] > grass[:, 0]) & (grass[:, 1] > grass[:, 2]))  # green verge


def test_polygon_partly_behind_camera_keeps_the_sky_clean():
    # One big asphalt quad reaching far behind and to the sides of the camera, plus a box beside the car.
    quad = np.array([[[-200.0, -40.0], [60.0, -40.0], [60.0, 40.0], [-200.0, 40.0]]])
    box = box_footprint(0.0, 6.0, 0.0, 40.0, 4.0)[None]
    scene = Scene(quad, np.array([Material.ASPHALT], np.uint8), box, np.array([1.0]),
                  np.array([Material.WALL], np.uint8), np.ones(1, np.float32))
    r = _renderer(scene)
    blank = _renderer(empty_scene()).render(0.0, 0.0, 0.3)
    img = r.render(0.0, 0.0, 0.3)
    np.testing.assert_array_equal(img[:79], blank[:79])  # nothing drawn above the horizon
    asphalt = img[120:, 40:120].reshape(-1, 3)
    assert np.all(asphalt == asphalt[0])  # the ground under the car is one flat asphalt colour


def test_clipping_near_plane_for_every_heading():
    r = _renderer(extended_straight_scene())
    blank = _renderer(empty_scene())
    for yaw in np.linspace(-math.pi, math.pi, 13):
        img = r.render(10.0, 1.5, float(yaw))
        # From this spot no box reaches the top rows: any wrapped (unclipped) geometry would show there.
        np.testing.assert_array_equal(img[:5], blank.render(10.0, 1.5, float(yaw))[:5])


def test_a_long_building_hides_a_small_one_behind_it_whose_centre_is_nearer():
    # Seen from the camera at the origin, the small box lies wholly behind the long one, but its centre is
    # nearer in depth (26.5 m against 30 m): ordered by the centre's depth it was painted over the long one.
    def scene(*boxes: tuple[np.ndarray, int]) -> Scene:
        return Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), np.array([b for b, _ in boxes]),
                     np.full(len(boxes), 10.0), np.array([m for _, m in boxes], np.uint8),
                     np.ones(len(boxes), np.float32))

    long = (box_footprint(30.0, 4.0, 0.0, 40.0, 4.0), Material.BUILDING)  # x 10..50, y 2..6
    small = (box_footprint(26.5, 9.5, 0.0, 3.0, 3.0), Material.WALL)  # x 25..28, y 8..11
    both = _renderer(scene(small, long)).render(-1.5, 0.0, 0.0)  # camera (mounted 1.5 m ahead) at the origin
    np.testing.assert_array_equal(both, _renderer(scene(long)).render(-1.5, 0.0, 0.0))
    assert not np.array_equal(both, _renderer(empty_scene()).render(-1.5, 0.0, 0.0))


def _occluded_before(renderer: CameraRenderer, pos: tuple, heading: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of visible boxes where i is drawn before j but hides part of j (exact ray test at the
    middle of the directions where both are seen)."""
    order, _ = renderer._visible_boxes(pos, heading)
    fp, p = renderer._box_fp, np.asarray(pos[:2])

    def span(i: int) -> tuple[float, float]:
        rel = fp[i] - p
        a = np.arctan2(rel[:, 1], rel[:, 0]) - heading
        a = (a + math.pi) % (2 * math.pi) - math.pi
        return float(a.min()), float(a.max())

    def entry(i: int, d: np.ndarray) -> float:  # distance along the ray from p where it enters box i
        hits = []
        for a, b in zip(fp[i], np.roll(fp[i], -1, 0), strict=True):
            m = np.array([d, a - b]).T
            if abs(np.linalg.det(m)) > 1e-12:
                t, s = np.linalg.solve(m, a - p)
                hits += [t] if t > 0 and 0 <= s <= 1 else []
        return min(hits, default=math.inf)

    bad = []
    for x, i in enumerate(order.tolist()):
        for j in order[x + 1:].tolist():
            (lo_i, hi_i), (lo_j, hi_j) = span(i), span(j)
            lo, hi = max(lo_i, lo_j), min(hi_i, hi_j)
            if hi > lo:
                d = np.array([math.cos(heading + (lo + hi) / 2), math.sin(heading + (lo + hi) / 2)])
                bad += [(i, j)] if entry(i, d) < entry(j, d) else []
    return bad


def test_buildings_are_painted_far_to_near_along_a_drive_through_a_junction():
    from agent.expert import ExpertPolicy
    from sim.embedded import EmbeddedSimulator
    from sim.routes import get_route

    route = get_route("one-turn")
    sim, expert = EmbeddedSimulator(camera=CameraConfig(width=64, height=64)), ExpertPolicy()
    obs = sim.reset(route, "ClearNoon", 0)
    expert.reset(route)
    checked = 0
    for k in range(400):
        obs = sim.step(expert.act(obs)[0])
        if k % 10 == 0:
            _, pos, _ = sim._renderer._world_to_fixed(sim.state.x_m, sim.state.y_m, sim.state.yaw_rad)
            assert _occluded_before(sim._renderer, pos, sim.state.yaw_rad + sim._renderer._wedge_yaw) == [], k
            checked += 1
    assert checked == 40


def test_a_wall_just_in_front_of_the_camera_fills_the_view():
    # The face is 0.3 m ahead (the camera is mounted 1.5 m ahead of the vehicle origin): with the boxes' near
    # plane at 0.5 m it was clipped away whole and the camera saw through the wall.
    box = box_footprint(2.3, 0.0, 0.0, 1.0, 20.0)[None]  # x 1.8..2.8, y -10..10
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), box, np.array([30.0]),
                  np.array([Material.BUILDING], np.uint8), np.ones(1, np.float32))
    img = _renderer(scene).render(0.0, 0.0, 0.0)
    assert np.all(img == img[0, 0]) and not np.array_equal(img[0, 0], _renderer(empty_scene()).render(0, 0, 0)[0, 0])


def test_touching_buildings_seen_edge_on_from_far_away_keep_their_order():
    # Two buildings 1 cm apart (met on random:1), seen from ~200 m at a grazing angle, here at half scale: the
    # one whose nearest point is nearer is the one hidden, so the nearest-point key alone painted it on top.
    front = np.array([[139.1, -140.1], [155.8, -140.1], [155.8, -131.2], [139.1, -131.2]]) / 2
    back = np.array([[128.9, -161.4], [142.1, -161.4], [142.1, -140.11], [128.9, -140.11]]) / 2
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), np.stack([front, back]), np.array([10.0, 10.0]),
                  np.array([Material.BUILDING, Material.WALL], np.uint8), np.ones(2, np.float32))
    r = _renderer(scene, width=448, height=448)
    heading = math.atan2(-140.0, 140.0)
    _, pos, _ = r._world_to_fixed(-1.5 * math.cos(heading), -1.5 * math.sin(heading), heading)
    assert np.hypot(*pos[:2]) < 1e-9  # the camera is at the origin
    assert len(r._box_pairs) == 1 and r._visible_boxes(pos, heading)[0].tolist() == [1, 0]
    assert _occluded_before(r, pos, heading) == []


def test_three_touching_buildings_are_ordered_together():
    # C hides A and B, A hides B; fixing the wrong pairs one move at a time left (B, C, A): C behind A.
    def rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])

    a, b, c = rect(69.55, 77.9, -70.05, -65.6), rect(64.45, 71.05, -80.7, -70.055), rect(68.9, 69.54, -70.04, -66.0)
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), np.stack([a, b, c]), np.full(3, 10.0),
                  np.array([Material.BUILDING, Material.WALL, Material.POLE], np.uint8), np.ones(3, np.float32))
    r = _renderer(scene, width=448, height=448)
    heading = math.atan2(-140.0, 140.0)
    _, pos, _ = r._world_to_fixed(-1.5 * math.cos(heading), -1.5 * math.sin(heading), heading)
    assert r._visible_boxes(pos, heading)[0].tolist() == [1, 0, 2]
    assert _occluded_before(r, pos, heading) == []


def test_a_triangle_given_as_a_quad_makes_no_touching_pair_with_a_box_it_overlaps():
    # Its zero-length edge gave a zero axis, a gap of exactly 0 and the line (0, 0, 0): a pair in fixed order.
    square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]) + (20.0, -2.0)
    triangle = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 2.0], [2.0, 6.0]]) + (20.0, -2.0)
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), np.stack([square, triangle]), np.full(2, 10.0),
                  np.array([Material.BUILDING, Material.WALL], np.uint8), np.ones(2, np.float32))
    assert len(_renderer(scene)._box_pairs) == 0


def test_tall_wall_beside_the_camera_is_clipped_cleanly():
    # A 30 m high wall 4 m to the right, from 20 m behind to 20 m ahead: its face crosses the near plane.
    box = box_footprint(0.0, 6.0, 0.0, 40.0, 4.0)[None]
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), box, np.array([30.0]),
                  np.array([Material.BUILDING], np.uint8), np.ones(1, np.float32))
    r = _renderer(scene)
    img = r.render(0.0, 0.0, 0.0)
    blank = _renderer(empty_scene()).render(0.0, 0.0, 0.0)
    wall = img[0:100, 150]
    assert np.all(wall == wall[0]) and not np.array_equal(wall[0], blank[0, 150])  # one face, top to bottom
    np.testing.assert_array_equal(img[:, :85], blank[:, :85])  # left of the wall's far edge: untouched


def test_overlapping_quads_of_one_material_do_not_punch_holes():
    a = box_footprint(20.0, 0.0, 0.0, 20.0, 6.0)
    b = box_footprint(22.0, 1.0, 0.3, 20.0, 6.0)  # overlaps a
    quads = np.stack([a, b])
    mats = np.full(2, Material.ASPHALT, np.uint8)
    assert overlap_layers(quads, mats).tolist() == [0, 1]
    no_boxes = (np.zeros((0, 4, 2)), np.zeros(0), np.zeros(0, np.uint8), np.zeros(0, np.float32))
    scene = Scene(quads, mats, *no_boxes)
    r = _renderer(scene)
    img = r.render(0.0, 0.0, 0.0)
    uv, _ = r.project_points(np.array([[21.0, 0.5, 0.0]]), 0.0, 0.0, 0.0)  # inside both quads
    u, v = int(uv[0, 0]), int(uv[0, 1])
    assert tuple(img[v, u]) == r._ground_colours[0]


def test_a_triangle_given_as_a_quad_still_counts_as_overlapping():
    # A repeated corner makes a zero-length edge; its (zero) normal used to read as a separating axis, so the
    # triangle shared a layer with a quad it overlaps and the even-odd fill punched a hole where they overlap.
    square = np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])
    triangle = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 2.0], [2.0, 6.0]])
    apart = triangle + 10.0
    mats = np.zeros(3, np.uint8)
    assert overlap_layers(np.stack([square, triangle, apart]), mats).tolist() == [0, 1, 0]


def test_a_marking_just_off_screen_paints_no_stripe_down_the_image_edge():
    # cv2.fillPoly clamps a span lying wholly left of the image into column 0: a lane line just off-screen
    # painted column 0 white (226, 228, 229) from row 329 to the bottom, beside asphalt (83, 84, 90).
    from sim.embedded import scene_for

    img = CameraRenderer(scene_for("curves"), CameraConfig(), CLEAR).render(134.5546, 35.4764, 0.78003)
    brighter = (img[:, 0].astype(int) - img[:, 2].astype(int)).sum(axis=-1) > 60
    assert brighter.sum() <= 1  # one row may be the line's own corner


@pytest.mark.parametrize("roll", [20.0, 45.0])
def test_a_rolled_camera_sees_the_whole_sun_glow_and_only_in_the_sky(roll):
    # The glow was clipped to the rows above the highest ground pixel: at 20 deg roll 1,115 of its 3,969
    # pixels were drawn, at 45 deg none.
    def glow(r: CameraRenderer) -> np.ndarray:
        lit = r.render(0.0, 0.0, math.radians(-25))
        sun, r._sun = r._sun, None
        dark = r.render(0.0, 0.0, math.radians(-25))
        r._sun = sun
        return (lit != dark).any(axis=-1)

    level = glow(_renderer(empty_scene(), WEATHERS["ClearSunset"], width=448, height=448))
    rolled_renderer = _renderer(empty_scene(), WEATHERS["ClearSunset"], width=448, height=448, roll_deg=roll)
    rolled = glow(rolled_renderer)
    assert rolled.sum() == level.sum() == 3969
    assert not (rolled & rolled_renderer._ground_px).any()


def test_a_camera_just_above_the_road_looking_down_sees_the_road():
    # 6 cm up, looking down: every visible ground point is nearer than the 0.1 m near plane, so it was all cut
    # and the image was the background's grass.
    r = _renderer(straight_test_scene(), z_m=0.06, pitch_deg=-89.9, x_m=0.0)
    img = r.render(20.0, 1.75, 0.0)  # over the right lane
    asphalt = r._ground_colours[r._group_material.index(Material.ASPHALT)]
    assert (img == asphalt).all(axis=-1).mean() > 0.9


def test_a_thin_wall_seen_broadside_is_not_dropped_for_its_thickness():
    # 10 m long, 0.3 m thick, 1.2 m high, 25 m ahead across the view of a 64x64 camera: ~20 x 2 pixels. The
    # level of detail went by the narrowest side (0.3 m), so it was dropped beyond 19 m.
    wall = box_footprint(25.0, 0.0, math.pi / 2, 10.0, 0.3)[None]
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), wall, np.array([1.2]),
                  np.array([Material.WALL], np.uint8), np.ones(1, np.float32))
    img = _renderer(scene, width=64, height=64).render(-1.5, 0.0, 0.0)
    drawn = (img != _renderer(empty_scene(), width=64, height=64).render(-1.5, 0.0, 0.0)).any(axis=-1)
    assert drawn.sum() >= 20


def test_adjacent_quads_share_layers():
    xs = np.arange(0.0, 50.0, 5.0)
    strip = quad_strip(np.stack([xs, np.zeros_like(xs)], 1), np.stack([xs, np.full_like(xs, 3.0)], 1))
    assert overlap_layers(strip, np.zeros(len(strip), np.uint8)).max() == 0


def test_grid_culling_matches_drawing_everything():
    # Tile the curved scene over a large area, then compare against a grid with one huge cell (no culling).
    base = curved_test_scene()
    tiles = [base.ground_quads + np.array([dx, dy]) for dx in (0.0, 400.0) for dy in (0.0, 400.0)]
    quads = np.concatenate(tiles)
    mats = np.tile(base.ground_material, 4)
    scene = Scene(quads, mats, base.box_footprints, base.box_heights_m, base.box_material, base.box_shade)
    cam = CameraConfig(width=160, height=160)
    culled = CameraRenderer(scene, cam, CLEAR)
    exhaustive = CameraRenderer(scene, cam, CLEAR, cell_m=5000.0)
    for x, y, yaw in [(0.0, 0.0, 0.0), (60.0, 30.0, 0.8), (410.0, 0.0, 0.0), (100.0, 100.0, 2.5)]:
        np.testing.assert_array_equal(culled.render(x, y, yaw), exhaustive.render(x, y, yaw))


def test_strips_are_merged_into_outlines():
    r = _renderer(curved_test_scene())
    n_polys = r._ground.n
    assert n_polys < len(r.scene.ground_quads) / 4


# ---- weather, determinism, output contract ---------------------------------------------------------------


def test_weather_presets_give_different_images():
    scene = extended_straight_scene()
    means = {}
    for name in FIVE:
        img = _renderer(scene, WEATHERS[name]).render(0.0, 0.0, 0.0, frame=3)
        means[name] = img.reshape(-1, 3).mean(axis=0)
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).max() > 2.0, f"{a} and {b} look alike"
    assert means["ClearSunset"][0] - means["ClearSunset"][2] > means["ClearNoon"][0] - means["ClearNoon"][2]
    assert means["HardRainNoon"].mean() < means["ClearNoon"].mean()


def test_wet_road_is_darker_near_the_car():
    scene = extended_straight_scene()
    dry = _renderer(scene, WEATHERS["ClearNoon"]).render(0.0, 0.0, 0.0)
    wet = _renderer(scene, WEATHERS["WetNoon"]).render(0.0, 0.0, 0.0)
    assert wet[150, 80].sum() < dry[150, 80].sum()


def test_render_is_deterministic_and_frames_differ_only_in_rain():
    scene = curved_test_scene()
    for name in ("ClearNoon", "HardRainNoon"):
        a = CameraRenderer(scene, CameraConfig(width=160, height=160), WEATHERS[name], seed=7)
        b = CameraRenderer(scene, CameraConfig(width=160, height=160), WEATHERS[name], seed=7)
        first = a.render(30.0, 1.0, 0.2, frame=5)
        a.render(80.0, 20.0, 1.0, frame=6)  # an unrelated call in between must not leak into the next one
        assert first.tobytes() == a.render(30.0, 1.0, 0.2, frame=5).tobytes()
        assert first.tobytes() == b.render(30.0, 1.0, 0.2, frame=5).tobytes()
        other = a.render(30.0, 1.0, 0.2, frame=6)
        if name == "ClearNoon":
            assert other.tobytes() == first.tobytes()
        else:
            changed = np.any(other != first, axis=-1)
            assert changed.any()
            streaks = np.any(a._rain[5 % len(a._rain)] > 0, -1) | np.any(a._rain[6 % len(a._rain)] > 0, -1)
            assert not np.any(changed & ~streaks)


def test_seed_changes_only_the_rain():
    scene = extended_straight_scene()
    cam = CameraConfig(width=160, height=160)
    dry = [CameraRenderer(scene, cam, CLEAR, seed=s).render(0.0, 0.0, 0.0) for s in (1, 2)]
    assert dry[0].tobytes() == dry[1].tobytes()
    wet = [CameraRenderer(scene, cam, WEATHERS["HardRainNoon"], seed=s).render(0.0, 0.0, 0.0) for s in (1, 2)]
    assert wet[0].tobytes() != wet[1].tobytes()


def test_output_is_fresh_contiguous_uint8_rgb():
    r = _renderer(curved_test_scene(), width=96, height=64)
    a = r.render(0.0, 0.0, 0.0)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"]
    keep = a.copy()
    a[:] = 0  # the caller may scribble on its image
    b = r.render(0.0, 0.0, 0.0)
    assert b is not a and np.array_equal(b, keep)


def test_set_weather_switches_the_look_and_back():
    r = _renderer(extended_straight_scene())
    clear = r.render(0.0, 0.0, 0.0)
    r.set_weather(WEATHERS["ClearSunset"])
    assert not np.array_equal(r.render(0.0, 0.0, 0.0), clear)
    r.set_weather(CLEAR)
    assert np.array_equal(r.render(0.0, 0.0, 0.0), clear)


def test_buildings_show_lit_and_shaded_faces():
    # Looking diagonally at a box shows two side faces; with the sun along +x they get different light.
    box = box_footprint(30.0, 10.0, 0.0, 10.0, 10.0)[None]
    scene = Scene(np.zeros((0, 4, 2)), np.zeros(0, np.uint8), box, np.array([20.0]),
                  np.array([Material.BUILDING], np.uint8), np.ones(1, np.float32))
    weather = Weather("Test", sun_azimuth_angle_deg=180.0, sun_altitude_angle_deg=30.0, fog_density=0.0)
    r = _renderer(scene, weather)
    img = r.render(0.0, 0.0, math.atan2(10.0, 30.0))
    uv, _ = r.project_points(np.array([[25.0, 8.0, 5.0], [30.0, 5.0, 5.0]]), 0.0, 0.0, math.atan2(10.0, 30.0))
    front = img[int(uv[0, 1]), int(uv[0, 0])].astype(int)  # face towards -x, facing the sun
    side = img[int(uv[1, 1]), int(uv[1, 0])].astype(int)  # face towards -y
    assert front.sum() > side.sum() + 30


MOUNTS = [dict(pitch_deg=-15.0, roll_deg=5.0), dict(pitch_deg=-70.0), dict(fov_deg=30.0),
          dict(fov_deg=160.0, width=96, height=64), dict(yaw_deg=30.0, y_m=0.5)]


@pytest.mark.parametrize("cam", MOUNTS)
def test_other_mounts_render_sensibly(cam):
    scene = curved_test_scene()
    r = _renderer(scene, **cam)
    for pose in [(0.0, 0.0, 0.0), (60.0, 10.0, 0.7), (30.0, 1.0, -2.0)]:
        img = r.render(*pose)
        assert img.shape == (r.height, r.width, 3)
        assert img.tobytes() == r.render(*pose).tobytes()
    # What lies straight ahead on the ground lands where project_points says.
    if cam.get("pitch_deg", 0.0) > -30.0 and "yaw_deg" not in cam:
        uv, depth = r.project_points(np.array([[r.camera.x_m + 20.0, 0.0, 0.0]]), 0.0, 0.0, 0.0)
        assert depth[0] > 0 and 0 <= uv[0, 0] < r.width
