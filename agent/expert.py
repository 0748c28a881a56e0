"""The route-following expert: the demonstrator for recording and the reference for evaluation.

It drives on privileged state (the route's lane centre and the vehicle's lane-relative pose):

* steering = curvature feed-forward at a preview point (``atan(L * kappa)``, compensating the steering
  lag) + Stanley feedback on the front axle's cross-track error + heading-error feedback;
* speed = PID to a target that is the cruise speed limited by the lateral acceleration allowed on the
  sharpest curvature within the braking distance ahead (``v <= sqrt(a_lat / |kappa|)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent.control import SpeedController
from agent.policy import Policy
from sim.dynamics import VehicleParams
from sim.routes import Route
from sim.types import Control, Observation


@dataclass(frozen=True)
class ExpertConfig:
    """Gains and limits. Speeds m/s, accelerations m/s^2, times s, gains per metre or per radian."""

    cruise_speed_mps: float = 8.0
    max_lateral_accel_mps2: float = 2.0
    comfort_decel_mps2: float = 2.5
    preview_time_s: float = 0.0
    stanley_gain: float = 3.0
    heading_gain: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class ExpertPolicy(Policy):
    """Stanley + curvature feed-forward lateral control and PID speed control on the route (privileged)."""

    name = "expert"

    def __init__(self, config: ExpertConfig | None = None, vehicle: VehicleParams | None = None,
                 dt_s: float = 0.05) -> None:
        self.cfg = config or ExpertConfig()
        self.vehicle = vehicle or VehicleParams()
        self.dt_s = dt_s
        self.route: Route | None = None
        self.speed = SpeedController(dt_s=dt_s)

    def reset(self, route: Route | None = None) -> None:
        if route is None:
            raise ValueError("the expert needs the route: call reset(route)")
        self.route = route
        self.speed.reset()

    def target_speed(self, distance_along_m: float, speed_mps: float) -> float:
        """Cruise speed limited by the curvature within the braking distance ahead (m/s)."""
        cfg = self.cfg
        horizon = 5.0 + speed_mps * speed_mps / (2 * cfg.comfort_decel_mps2)
        s_ahead = self.route.s_m
        i0 = int(np.searchsorted(s_ahead, distance_along_m))
        i1 = int(np.searchsorted(s_ahead, distance_along_m + horizon))
        k = np.abs(self.route.curvature_1pm[i0:max(i1, i0 + 1)])
        dist = np.maximum(s_ahead[i0:max(i1, i0 + 1)] - distance_along_m, 0.0)
        v_curve = np.sqrt(cfg.max_lateral_accel_mps2 / np.maximum(k, 1e-6))
        # the speed we may have now so that we can brake to v_curve by the time we get there
        v_allowed = np.sqrt(v_curve ** 2 + 2 * cfg.comfort_decel_mps2 * dist)
        return float(min(cfg.cruise_speed_mps, v_allowed.min()))

    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        if self.route is None:
            raise RuntimeError("call reset(route) before act()")
        cfg, lane, v = self.cfg, observation.lane, observation.speed_mps
        wheelbase = self.vehicle.wheelbase_m
        heading_err = math.radians(lane.heading_error_deg)
        front = wheelbase - self.vehicle.rear_axle_to_com_m
        cross_track = lane.lateral_offset_m + front * math.sin(heading_err)
        preview_s = lane.distance_along_m + v * cfg.preview_time_s
        k_ahead = float(np.interp(preview_s, self.route.s_m, self.route.curvature_1pm))
        wheel = (math.atan(wheelbase * k_ahead)
                 - math.atan2(cfg.stanley_gain * cross_track, v + 1.0)
                 - cfg.heading_gain * heading_err)
        steer = float(np.clip(wheel / math.radians(self.vehicle.max_steer_deg), -1.0, 1.0))

        v_target = self.target_speed(lane.distance_along_m, v)
        throttle, brake = self.speed(v_target, v)
        record = {"target_speed_mps": v_target, "curvature_ahead_1pm": k_ahead, "cross_track_m": cross_track}
        return Control(steer, throttle, brake), record

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.to_dict()}
