import math

import numpy as np
import pytest

from sim.embedded import EmbeddedSimulator
from sim.episode import EpisodeLimits, EpisodeMonitor
from sim.routes import get_route
from sim.types import Control


@pytest.fixture()
def sim():
    s = EmbeddedSimulator(render_camera=False)
    s.reset("straight", "ClearNoon", seed=0)
    return s


def test_drifting_left_crosses_the_broken_centre_line_once(sim):
    sim.place(40.0)
    sim.state.speed_mps = 8.0
    events = []
    for _ in range(30):
        obs = sim.step(Control(steer=-0.02, throttle=0.3))
        events += list(obs.lane_invasions)
    assert [e.markings for e in events] == [("Broken",)]
    assert -1.5 < obs.lane.lateral_offset_m < -0.6


def test_drifting_right_crosses_the_solid_edge_line(sim):
    sim.place(40.0)
    sim.state.speed_mps = 8.0
    kinds = []
    for _ in range(35):
        kinds += [m for e in sim.step(Control(steer=0.02, throttle=0.3)).lane_invasions for m in e.markings]
    assert kinds == ["Solid"]


def test_driving_into_a_building_is_a_collision_and_the_car_stops():
    sim = EmbeddedSimulator(render_camera=False)
    route = get_route("straight")
    sim.reset(route, "ClearNoon", 0)
    scene_boxes = sim._collision.boxes
    # the nearest building to the right of the start: turn towards it and drive
    centres = scene_boxes.mean(axis=1)
    right = centres[(centres[:, 1] > 0) & (centres[:, 0] > 20)]
    target = right[np.argmin(right[:, 0])]
    obs = sim.place(max(0.0, target[0] - 25.0))
    yaw = math.atan2(target[1] - obs.pose.y_m, target[0] - obs.pose.x_m)
    sim.state.yaw_rad = yaw
    collided = None
    for _ in range(400):
        obs = sim.step(Control(throttle=0.6))
        if obs.collisions:
            collided = obs
            break
    assert collided is not None
    assert collided.collisions[0].other == "static.building"
    assert collided.speed_mps == 0.0
    assert collided.collisions[0].impulse_ns > 0


def test_monitor_reports_each_termination(sim):
    lim = EpisodeLimits(blocked_time_s=1.0)
    mon = EpisodeMonitor(sim.route.length_m, lim)
    obs = sim.place(10.0)
    assert mon.update(obs) is None
    blocked = None
    for _ in range(30):
        blocked = mon.update(sim.step(Control(brake=1.0))) or blocked
    assert blocked == "blocked"
    assert EpisodeMonitor(sim.route.length_m).update(sim.place(sim.route.length_m - 0.5)) == "goal"
    assert EpisodeMonitor(sim.route.length_m).update(sim.place(50.0, lateral_offset_m=5.5)) == "off_route"
    assert EpisodeMonitor(sim.route.length_m).update(sim.place(50.0, yaw_offset_deg=120)) == "off_route"
    assert lim.time_limit_s(100.0) == pytest.approx(100.0 / 2.0 + 30.0)


def test_footprint_corners_are_exact():
    from sim.dynamics import VehicleParams
    from sim.sensors import footprint

    p = VehicleParams()
    hl, hw, c, s = p.length_m / 2, p.width_m / 2, math.cos(0.3), math.sin(0.3)
    expected = [[10.0 + fx * c - fy * s, -4.0 + fx * s + fy * c]
                for fx, fy in ((hl, -hw), (hl, hw), (-hl, hw), (-hl, -hw))]
    body = footprint(10.0, -4.0, 0.3, p)
    assert body.shape == (4, 2) and body.dtype == np.float64 and body.tolist() == expected
    assert footprint(np.float32(10.0), np.float32(-4.0), 0.3, p).dtype == np.float64


@pytest.mark.parametrize("route", ["straight", "mixed", "random:5"])
def test_collision_grid_finds_exactly_the_boxes_a_full_search_finds(route):
    """The grid's candidates lose nothing: every body's hits equal a separating-axis test against every box."""
    from sim.dynamics import VehicleParams
    from sim.embedded import scene_for
    from sim.scene import convex_overlap
    from sim.sensors import CollisionSensor, footprint

    scene = scene_for(route)
    sensor, boxes = CollisionSensor(scene), scene.box_footprints
    box_lo, box_hi = boxes.min(axis=1), boxes.max(axis=1)
    rng = np.random.default_rng(0)
    near = boxes.mean(axis=1)[rng.integers(0, len(boxes), 1500)] + rng.uniform(-12, 12, (1500, 2))
    found = 0
    for (x, y), yaw in zip(near, rng.uniform(-math.pi, math.pi, 1500), strict=True):
        body = footprint(float(x), float(y), float(yaw), VehicleParams())
        # every box whose bounding rectangle meets the body's (a necessary condition), then the exact test
        meets = np.flatnonzero((box_lo <= body.max(axis=0)).all(axis=1) & (box_hi >= body.min(axis=0)).all(axis=1))
        expected = [int(i) for i in meets if convex_overlap(body, boxes[i])]
        assert sensor.hits(body) == expected
        found += bool(expected)
    assert found > 300  # the sample does reach the buildings


def test_a_body_with_nan_or_infinite_corners_hits_nothing():
    from sim.embedded import scene_for
    from sim.sensors import CollisionSensor

    sensor = CollisionSensor(scene_for("straight"))
    assert sensor.hits(sensor.boxes[0].copy()) == [0]
    for bad in (math.nan, math.inf, -math.inf):
        assert sensor.hits(np.full((4, 2), bad)) == []
        body = sensor.boxes[0].copy()
        body[2, 0] = bad  # one bad corner among good ones on a building
        assert sensor.hits(body) == []


def test_separating_axis_tests_on_squares_and_a_triangle_given_as_a_quad():
    """Exact values, and a repeated corner (a zero-length edge, no normal) changes nothing and warns nothing."""
    import warnings

    from sim.scene import convex_overlap, penetration_depth

    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    assert convex_overlap(square, square + [1.5, 0.5]) and penetration_depth(square, square + [1.5, 0.5]) == 0.5
    assert convex_overlap(square, square + [2.0, 0.0]) and penetration_depth(square, square + [2.0, 0.0]) == 0.0
    assert not convex_overlap(square, square + [2.5, 0.0]) and penetration_depth(square, square + [2.5, 0.0]) == 0.0
    triangle = np.array([[1.5, 1.0], [1.5, 1.0], [4.0, 1.0], [1.5, 3.0]])  # 0.5 m into the square along x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert convex_overlap(square, triangle)
        assert penetration_depth(square, triangle) == pytest.approx(0.5, abs=1e-12)
        assert penetration_depth(triangle, square) == pytest.approx(0.5, abs=1e-12)
