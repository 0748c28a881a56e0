import math

import pytest

from sim.dynamics import VehicleParams, VehicleState, step_vehicle
from sim.types import Control

P = VehicleParams()


def drive(control: Control, steps: int, state: VehicleState | None = None) -> VehicleState:
    state = state or VehicleState(0.0, 0.0, 0.0, 10.0)
    for _ in range(steps):
        state = step_vehicle(state, control, P, 0.05)
    return state


def test_positive_steer_turns_right_in_carlas_frame():
    s = drive(Control(steer=0.2, throttle=0.3), 20)
    assert s.yaw_rad > 0 and s.y_m > 0  # right of +x is +y


def test_steady_turn_radius_matches_the_bicycle_model():
    steer = 0.1
    s = drive(Control(steer=steer), 40, VehicleState(0, 0, 0, 5.0))
    wheel = math.radians(P.max_steer_deg) * steer
    assert s.wheel_angle_rad == pytest.approx(wheel, rel=1e-6)  # the lag has settled
    beta = math.atan(P.rear_axle_to_com_m / P.wheelbase_m * math.tan(wheel))
    yaw_rate = s.speed_mps * math.sin(beta) / P.rear_axle_to_com_m
    before = s.yaw_rad
    s2 = step_vehicle(s, Control(steer=steer), P, 0.05)
    assert (s2.yaw_rad - before) / 0.05 == pytest.approx(yaw_rate, rel=0.02)


def test_steering_responds_with_a_first_order_lag():
    s = step_vehicle(VehicleState(0, 0, 0, 5.0), Control(steer=1.0), P, 0.05)
    expected = math.radians(P.max_steer_deg) * (1 - math.exp(-0.05 / P.steer_time_constant_s))
    assert s.wheel_angle_rad == pytest.approx(expected)


def test_throttle_accelerates_drag_limits_and_brake_stops_without_reversing():
    fast = drive(Control(throttle=1.0), 2000, VehicleState(0, 0, 0, 0.0))
    assert 30.0 < fast.speed_mps <= P.max_speed_mps
    stopped = drive(Control(brake=1.0), 100, fast)
    assert stopped.speed_mps == 0.0
    still = drive(Control(brake=1.0), 10, stopped)
    assert still.x_m == stopped.x_m


def test_step_does_not_mutate_its_input():
    s = VehicleState(1.0, 2.0, 0.3, 4.0)
    step_vehicle(s, Control(0.5, 1.0, 0.0), P, 0.05)
    assert s == VehicleState(1.0, 2.0, 0.3, 4.0)
