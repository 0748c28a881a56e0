"""Longitudinal control shared by the expert and the learned agent: a PI controller to a target speed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SpeedControlConfig:
    """Gains of the speed controller: throttle per (m/s) of error, integral per (m/s * s), brake per (m/s)."""

    kp: float = 0.5
    ki: float = 0.1
    brake_kp: float = 0.35
    brake_deadband_mps: float = 0.3
    integral_limit: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


class SpeedController:
    """PI on throttle, P on brake beyond a dead band; ``reset`` at each episode start."""

    def __init__(self, config: SpeedControlConfig | None = None, dt_s: float = 0.05) -> None:
        self.cfg, self.dt_s = config or SpeedControlConfig(), dt_s
        self.integral = 0.0

    def reset(self) -> None:
        self.integral = 0.0

    def __call__(self, target_mps: float, speed_mps: float) -> tuple[float, float]:
        """(throttle, brake) in [0, 1] that drive ``speed_mps`` towards ``target_mps``. A speed or target that
        is not finite (a broken sensor reading) gives full brake and leaves the integral as it was, so one bad
        reading cannot poison the ticks after it."""
        cfg = self.cfg
        err = target_mps - speed_mps
        if not math.isfinite(err):
            return 0.0, 1.0
        self.integral = float(np.clip(self.integral + err * self.dt_s, -cfg.integral_limit, cfg.integral_limit))
        if err < -cfg.brake_deadband_mps:
            return 0.0, float(np.clip(-cfg.brake_kp * err, 0.0, 1.0))
        return float(np.clip(cfg.kp * err + cfg.ki * self.integral, 0.0, 1.0)), 0.0
