"""Steering noise for recovery data (CIL's and Roach's noise injection, DART's idea).

While recording, a temporally correlated perturbation is added to the steering that is EXECUTED, so the
vehicle drifts off the lane centre; the expert keeps computing its clean, corrective command on the state
actually reached, and that clean command is the label. The policy thus sees how to recover from drift
without ever being taught the perturbation (CIL ``data-collector/modules/noiser.py``; Roach
``inject_noise``; DART, Laskey et al. 2017).

Noise comes in events: an event starts on an idle step with a fixed probability, chosen so that on
average ``active_fraction`` of the steps are noisy, and lasts a duration drawn uniformly in
``[min_duration_s, max_duration_s]``. Within an event the perturbation is

* ``triangle`` (CIL/Roach): ramps linearly from 0 to a peak and back; the peak is drawn in
  ``[amplitude / 2, amplitude]`` with a random sign, and is never 0 inside the event;
* ``ou``: an Ornstein-Uhlenbeck process (stationary std ``amplitude``, correlation time ``ou_tau_s``)
  shaped by the same triangular envelope, so it also starts and ends near 0.

Everything is drawn from ``numpy.random.default_rng`` seeded from the episode seed: same seed, same noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from agent.policy import Policy
from sim.errors import UsageError
from sim.routes import Route
from sim.types import Control, Observation

NOISE_KINDS = ("triangle", "ou")
EXPERT_CONTROL_KEY = "expert_control"  # record key: the clean command (a Control), the label
NOISE_ACTIVE_KEY = "noise_active"  # record key: whether the executed steering was perturbed
STEER_NOISE_KEY = "steer_noise"  # record key: the perturbation added to the steering
_NOISE_STREAM = 0x5EED  # keeps the noise draws independent of the simulator's, which use the bare seed


@dataclass(frozen=True)
class NoiseConfig:
    """Steering noise settings. Steering in CARLA units ([-1, 1], +1 full right), durations in seconds."""

    enabled: bool = True
    kind: str = "triangle"
    active_fraction: float = 0.2
    amplitude: float = 0.2
    min_duration_s: float = 0.5
    max_duration_s: float = 1.5
    ou_tau_s: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise UsageError(f"noise kind {self.kind!r} is not one of {', '.join(NOISE_KINDS)}")
        if not 0.0 <= self.active_fraction < 1.0:
            raise UsageError(f"noise active fraction {self.active_fraction} is outside [0, 1), e.g. 0.2")
        if not 0.0 < self.amplitude <= 1.0:
            raise UsageError(f"noise amplitude {self.amplitude} is outside (0, 1] (steering units), e.g. 0.2")
        if not 0.0 < self.min_duration_s <= self.max_duration_s:
            raise UsageError(f"noise durations {self.min_duration_s}..{self.max_duration_s} s must satisfy "
                             "0 < min <= max, e.g. 0.5..1.5")
        if self.ou_tau_s <= 0.0:
            raise UsageError(f"noise correlation time {self.ou_tau_s} s must be positive, e.g. 0.3")

    def to_dict(self) -> dict:
        return asdict(self)


class SteeringNoise:
    """The perturbation process for one episode: call :meth:`step` once per tick."""

    def __init__(self, config: NoiseConfig, dt_s: float, seed: int) -> None:
        self.config, self.dt_s = config, dt_s
        self.reset(seed)

    @property
    def start_probability(self) -> float:
        """Per idle step chance to start an event, so the expected noisy fraction is ``active_fraction``.

        With events of ``D`` steps on average and geometric idle gaps of mean ``(1 - p) / p`` steps, the
        noisy fraction is ``D / (D + (1 - p) / p)``; solving for ``p`` gives ``1 / (1 + D (1 - f) / f)``.
        """
        f = self.config.active_fraction if self.config.enabled else 0.0
        if f <= 0.0:
            return 0.0
        mean_steps = max(1.0, (self.config.min_duration_s + self.config.max_duration_s) / 2 / self.dt_s)
        return 1.0 / (1.0 + mean_steps * (1.0 - f) / f)

    def reset(self, seed: int) -> None:
        """Start over with the draws of episode ``seed``."""
        self.rng = np.random.default_rng([int(seed), _NOISE_STREAM])
        self.active = False
        self._k = self._n = 0
        self._peak = 0.0
        self._ou = 0.0

    def _start_event(self) -> None:
        cfg = self.config
        self._n = max(1, round(self.rng.uniform(cfg.min_duration_s, cfg.max_duration_s) / self.dt_s))
        self._k = 0
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        self._peak = sign * self.rng.uniform(cfg.amplitude / 2, cfg.amplitude)

    def _ou_step(self) -> float:
        decay = math.exp(-self.dt_s / self.config.ou_tau_s)
        self._ou = self._ou * decay + self.config.amplitude * math.sqrt(1 - decay * decay) * self.rng.normal()
        return self._ou

    def step(self) -> float:
        """The steering perturbation for this tick (0.0 when no event runs); :attr:`active` says whether
        this tick is noisy."""
        ou = self._ou_step() if self.config.kind == "ou" and self.config.enabled else 0.0
        if self._k >= self._n and self.rng.random() < self.start_probability:
            self._start_event()
        self.active = self._k < self._n
        if not self.active:
            return 0.0
        envelope = 1.0 - abs(2.0 * (self._k + 1) / (self._n + 1) - 1.0)  # in (0, 1] inside the event
        self._k += 1
        return self._peak * envelope if self.config.kind == "triangle" else ou * envelope


class NoisyPolicy(Policy):
    """Wraps a demonstrator: executes its command plus steering noise, and records the clean command.

    ``act`` returns the EXECUTED control; its record carries the clean command under
    :data:`EXPERT_CONTROL_KEY`, the flag under :data:`NOISE_ACTIVE_KEY` and the perturbation under
    :data:`STEER_NOISE_KEY`. Without noise (``noise=None``) the executed and clean commands are equal.
    """

    def __init__(self, policy: Policy, noise: SteeringNoise | None = None) -> None:
        self.policy, self.noise = policy, noise
        self.name = policy.name

    def reset(self, route: Route | None = None) -> None:
        self.policy.reset(route)

    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        clean, record = self.policy.act(observation)
        perturbation = self.noise.step() if self.noise is not None else 0.0
        active = bool(self.noise is not None and self.noise.active)
        executed = clean
        if active:
            steer = float(np.clip(clean.steer + perturbation, -1.0, 1.0))
            executed = Control(steer, clean.throttle, clean.brake)
        return executed, {**record, EXPERT_CONTROL_KEY: clean, NOISE_ACTIVE_KEY: active,
                          STEER_NOISE_KEY: perturbation}

    def config(self) -> dict[str, Any]:
        return self.policy.config()
