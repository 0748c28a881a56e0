"""Driving by hand: a policy whose control follows the keys, ramped like CARLA's ``manual_control.py``.

The keys arrive as a :class:`ManualKeys` (which of throttle, brake, left, right are held); the display maps
W/Up, S/Down, A/Left and D/Right onto it, so this module needs no pygame. Each :meth:`ManualPolicy.act` is one
simulator tick of ``dt_s`` seconds, and the ramps are CARLA's per-frame increments at its 60 Hz client loop
turned into rates per second, so the feel does not depend on the frame rate and runs are deterministic:

* throttle: rises at 0.6 /s (manual_control: +0.01 per frame) while held, capped at 0.85; 0 when released;
* brake: rises at 12 /s (+0.2 per frame), so it is full within two ticks; 0 when released;
* steer: moves at 0.5 /s (``5e-4 * ms``) while a side is held, capped at +-0.7; pressing the other side
  first snaps it back to 0; releasing both returns it to 0 at once. Unlike manual_control it is not rounded
  to 0.1 (that would quantise recorded demonstrations far more coarsely than the steering bins).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from agent.policy import Policy
from sim.errors import UsageError
from sim.routes import Route
from sim.types import DEFAULT_DT_S, Control, Observation


@dataclass(frozen=True)
class ManualKeys:
    """Which driving keys are held this tick."""

    throttle: bool = False
    brake: bool = False
    left: bool = False
    right: bool = False


@dataclass(frozen=True)
class ManualConfig:
    """Ramp rates (per second of simulated time) and limits of the hand controls (defaults: manual_control)."""

    throttle_rate_per_s: float = 0.6
    max_throttle: float = 0.85
    brake_rate_per_s: float = 12.0
    steer_rate_per_s: float = 0.5
    max_steer: float = 0.7

    def __post_init__(self) -> None:
        for name in ("throttle_rate_per_s", "brake_rate_per_s", "steer_rate_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"manual {name} must be a positive number per second, got {value!r}")
        for name in ("max_throttle", "max_steer"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise UsageError(f"manual {name} must be in (0, 1] (manual_control: 0.85 and 0.7), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ManualPolicy(Policy):
    """The control a person gives with the keys; set them with :meth:`set_keys` before each :meth:`act`."""

    name = "manual"

    def __init__(self, config: ManualConfig | None = None, dt_s: float = DEFAULT_DT_S) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise UsageError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
        self.cfg = config or ManualConfig()
        self.dt_s = dt_s
        self.keys = ManualKeys()
        self._throttle = self._brake = self._steer = 0.0

    def set_keys(self, keys: ManualKeys) -> None:
        """The keys held for the next tick."""
        self.keys = keys

    def reset(self, route: Route | None = None) -> None:
        """Release everything (the route is not needed)."""
        self._throttle = self._brake = self._steer = 0.0

    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        cfg, keys, dt = self.cfg, self.keys, self.dt_s
        self._throttle = min(self._throttle + cfg.throttle_rate_per_s * dt, cfg.max_throttle) if keys.throttle else 0.0
        self._brake = min(self._brake + cfg.brake_rate_per_s * dt, 1.0) if keys.brake else 0.0
        step = cfg.steer_rate_per_s * dt
        if keys.left and not keys.right:
            self._steer = 0.0 if self._steer > 0 else max(self._steer - step, -cfg.max_steer)
        elif keys.right and not keys.left:
            self._steer = 0.0 if self._steer < 0 else min(self._steer + step, cfg.max_steer)
        else:
            self._steer = 0.0
        control = Control(self._steer, self._throttle, self._brake)
        return control, {"manual": True}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.to_dict()}
