import math

import numpy as np
import pytest

from sim.geometry import Geometry, PlanView, turn_displacement


def test_line_and_arc_are_exact():
    line = Geometry(0, 1.0, 2.0, math.pi / 2, 10.0)
    x, y, h, k = line.sample(np.array([10.0]))
    assert (x[0], y[0], h[0], k[0]) == pytest.approx((1.0, 12.0, math.pi / 2, 0.0))
    arc = Geometry(0, 0.0, 0.0, 0.0, math.pi / 2 * 10, 0.1, 0.1)  # quarter circle of radius 10, right turn
    x, y, h, _ = arc.sample(np.array([arc.length_m]))
    assert (x[0], y[0], h[0]) == pytest.approx((10.0, 10.0, math.pi / 2))


def test_clothoid_heading_and_curvature_are_linear_and_positions_match_fine_integration():
    g = Geometry(0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.1)
    x, y, h, k = g.sample(np.array([20.0]))
    assert k[0] == pytest.approx(0.1)
    assert h[0] == pytest.approx(0.5 * 0.1 * 20.0)
    s = np.linspace(0, 20, 200001)
    heading = 0.5 * 0.1 / 20 * s * s
    ref_x = np.trapezoid(np.cos(heading), s)
    ref_y = np.trapezoid(np.sin(heading), s)
    assert (x[0], y[0]) == pytest.approx((ref_x, ref_y), abs=1e-6)


def test_plan_view_is_continuous_and_turn_turns_by_the_angle():
    pv = PlanView(0, 0, 0).line(10).turn(math.radians(90), 20).line(5).turn(math.radians(-45), 30)
    assert pv.end_pose[2] == pytest.approx(math.radians(45))
    smp = pv.sample(0.5)
    steps = np.hypot(np.diff(smp["x"]), np.diff(smp["y"]))
    assert steps.max() <= 0.5 + 1e-9
    np.testing.assert_allclose(np.diff(smp["s"]), steps, atol=1e-4)  # arc length equals chord length
    assert np.abs(smp["curvature"]).max() == pytest.approx(1 / 20)


def test_turn_displacement_scales_with_radius_and_is_symmetric():
    fx, fy = turn_displacement(math.pi / 2, 1.0)
    assert fx == pytest.approx(fy)
    fx10, _ = turn_displacement(math.pi / 2, 10.0)
    assert fx10 == pytest.approx(10 * fx)
    assert turn_displacement(math.pi / 2, 10.0, spiral_fraction=0.0) == pytest.approx((10.0, 10.0))
