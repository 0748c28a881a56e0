"""Vehicle dynamics close to CARLA's default car (Tesla Model 3): a kinematic bicycle at the centre of mass.

Steering maps the normalised command to a front-wheel angle (CARLA's ``max_steer_angle`` of 70 degrees, so
recorded steering has CARLA's scale: a 90 degree junction turn needs about 0.25) through a first-order lag;
throttle and brake map to longitudinal acceleration with aerodynamic drag and rolling resistance; speed is
capped and never negative (no reverse gear).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sim.types import Control


@dataclass(frozen=True)
class VehicleParams:
    """Vehicle constants: metres, degrees, seconds, m/s^2, m/s. Defaults follow CARLA's vehicle.tesla.model3."""

    wheelbase_m: float = 2.875
    rear_axle_to_com_m: float = 1.44
    length_m: float = 4.79
    width_m: float = 2.16
    max_steer_deg: float = 70.0
    steer_time_constant_s: float = 0.08
    max_accel_mps2: float = 4.0
    max_brake_mps2: float = 8.0
    drag_1pm: float = 0.0012  # aerodynamic drag acceleration = drag * v^2
    rolling_mps2: float = 0.12
    max_speed_mps: float = 50.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VehicleState:
    """Dynamic state: centre of mass position (m), yaw (rad), speed (m/s), front-wheel angle (rad)."""

    x_m: float
    y_m: float
    yaw_rad: float
    speed_mps: float = 0.0
    wheel_angle_rad: float = 0.0


def step_vehicle(state: VehicleState, control: Control, params: VehicleParams, dt_s: float) -> VehicleState:
    """Advance ``state`` by ``dt_s`` seconds under ``control``; returns a new state (the input is untouched)."""
    target = control.steer * math.radians(params.max_steer_deg)
    lag = 1.0 - math.exp(-dt_s / params.steer_time_constant_s)
    wheel = state.wheel_angle_rad + (target - state.wheel_angle_rad) * lag

    v = state.speed_mps
    accel = control.throttle * params.max_accel_mps2 * max(0.2, 1.0 - v / params.max_speed_mps)
    resist = params.drag_1pm * v * v + (params.rolling_mps2 if v > 0 else 0.0)
    decel = control.brake * params.max_brake_mps2 + resist
    v_new = min(params.max_speed_mps, max(0.0, v + (accel - decel) * dt_s))

    v_mid = 0.5 * (v + v_new)
    beta = math.atan(params.rear_axle_to_com_m / params.wheelbase_m * math.tan(wheel))
    yaw_rate = v_mid * math.sin(beta) / params.rear_axle_to_com_m
    yaw_mid = state.yaw_rad + 0.5 * yaw_rate * dt_s
    return VehicleState(
        x_m=state.x_m + v_mid * math.cos(yaw_mid + beta) * dt_s,
        y_m=state.y_m + v_mid * math.sin(yaw_mid + beta) * dt_s,
        yaw_rad=state.yaw_rad + yaw_rate * dt_s,
        speed_mps=v_new,
        wheel_angle_rad=wheel,
    )
