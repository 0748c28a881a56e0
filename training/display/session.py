"""The ``caril drive`` loop: events -> control (policy, or the keys) -> simulator step -> display -> window.

::

    pygame events --> DriveDisplay.process_event (quit, pause, manual, C / R / V / F1 / H / F12)
                          |
    obs --> policy.act --+--> control --> sim.step --> obs --> DriveDisplay.on_step (HUD, recording)
             (manual: ManualPolicy.act on the held keys; the policy still runs in shadow for the HUD)
                                                         --> DriveDisplay.render --> window / video

An episode that ends (goal, collision, off route, ...) is reported and the route starts again with the next
seed, so the window keeps running until ESC or ``frames`` steps. The loop runs the simulator in real time
(``max_fps`` = its rate) in a window, and as fast as it can headless (``max_fps`` = 0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from agent import factory
from agent.bins import SteeringBins
from agent.manual import ManualPolicy
from agent.policy import Policy
from sim.dynamics import VehicleParams
from sim.episode import EpisodeLimits, EpisodeMonitor
from sim.errors import UsageError, unknown_name
from sim.metrics import route_completion
from sim.simulator import Simulator
from sim.types import DEFAULT_DT_S, Control, Observation
from sim.weather import get_weather
from training.display._pygame import pygame
from training.display.window import DriveDisplay

log = logging.getLogger(__name__)

DRIVE_POLICIES = ("expert", "caril", "manual")


def make_drive_policy(name: str, *, dt_s: float = DEFAULT_DT_S, vehicle: VehicleParams | None = None,
                      checkpoint: str = "", correction: str = "caril", cuda_graphs: bool = False) -> Policy:
    """The policy ``caril drive --policy NAME`` drives with, for a simulator stepping ``dt_s`` seconds; the
    CARIL agent is loaded from ``checkpoint`` with the ``correction`` strategy (``agent.factory``), replaying
    its network as a CUDA graph on a GPU with ``cuda_graphs``."""
    if name == "manual":
        return ManualPolicy(dt_s=dt_s)
    if name == "expert":
        return factory.make_policy("expert", vehicle=vehicle, dt_s=dt_s)
    if name == "caril":
        return factory.make_policy("caril", checkpoint=checkpoint, correction=correction, cuda_graphs=cuda_graphs)
    raise unknown_name("policy", name, DRIVE_POLICIES)


def policy_bins(policy: Policy) -> SteeringBins | None:
    """The steering bins of a policy's classification head (the CARIL agent's checkpoint), else None."""
    bins = getattr(policy, "bins", None)
    if bins is None:
        bins = getattr(getattr(policy, "ckpt", None), "bins", None)
    return bins if isinstance(bins, SteeringBins) else None


class Pacer:
    """Holds a loop to ``rate_hz`` iterations per second on average (0: no limit).

    It sleeps until deadlines spaced exactly one period apart, so the occasional oversleep of the OS is made up
    on the next iterations (pygame's ``Clock.tick`` loses it, and runs a 20 Hz loop at ~19 Hz); a loop that
    falls more than a period behind starts afresh rather than racing to catch up.
    """

    def __init__(self, rate_hz: float) -> None:
        self.period_s = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self._deadline = time.perf_counter()

    def wait(self) -> None:
        if not self.period_s:
            return
        self._deadline += self.period_s
        delay = self._deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period_s:
            self._deadline = time.perf_counter()


@dataclass
class DriveResult:
    """What a drive did: simulation steps, episodes started, how the finished ones ended, wall time (s)."""

    steps: int = 0
    frames: int = 0
    episodes: int = 0
    terminations: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class DriveSession:
    """Drives ``policy`` on ``route`` under ``weather`` in ``sim``, shown by ``display`` (see the module docstring).

    Args:
        frames: stop after this many simulation steps (0: run until ESC or the window closes).
        max_fps: at most this many loop iterations per second (0: no limit).
        manual: the hand controls used while M is on (default: one at the simulator's step).
        limits: when an episode ends.
        restart: start the route again after an episode ends (else stop).
    """

    def __init__(self, sim: Simulator, policy: Policy, display: DriveDisplay, route: str, weather: str,
                 seed: int = 0, *, frames: int = 0, max_fps: float = 0.0, manual: ManualPolicy | None = None,
                 limits: EpisodeLimits | None = None, restart: bool = True) -> None:
        if frames < 0:
            raise UsageError(f"frames must be 0 (no limit) or positive, got {frames}")
        self.sim, self.policy, self.display = sim, policy, display
        self.route, self.weather, self.seed = route, weather, seed
        self.frames, self.max_fps, self.limits, self.restart = frames, max_fps, limits, restart
        self.manual = policy if isinstance(policy, ManualPolicy) else (manual or ManualPolicy(dt_s=sim.dt_s))
        self.monitor: EpisodeMonitor | None = None
        self.result = DriveResult()

    def run(self, screen: pygame.Surface, present: bool = True) -> DriveResult:
        """Loop until ESC, a closed window, ``frames`` steps, or (without ``restart``) the episode's end.

        ``present`` flips the pygame display after each frame (False when ``screen`` is an off-screen surface).
        """
        start = time.perf_counter()
        obs, display, cost_ms = self.reset(), self.display, 0.0
        pace = Pacer(self.max_fps)
        try:
            while display.running and not (self.frames and self.result.steps >= self.frames):
                for event in pygame.event.get():
                    display.process_event(event)
                if not display.running:
                    break
                t0 = time.perf_counter()
                termination = None
                if not display.paused:
                    obs, termination = self.tick(obs)
                display.render(screen)
                if present:
                    pygame.display.flip()
                self.result.frames += 1
                cost = (time.perf_counter() - t0) * 1000  # act + step + draw, without the pacing sleep
                cost_ms = 0.9 * cost_ms + 0.1 * cost if cost_ms else cost
                display.frame_cost_ms = cost_ms
                if termination is not None:
                    self.end_episode(obs, termination)
                    if not self.restart:
                        break
                    self.seed += 1
                    obs = self.reset()
                pace.wait()
        finally:
            self.result.wall_s = time.perf_counter() - start
        return self.result

    def reset(self) -> Observation:
        """Start an episode: simulator, policies, termination monitor, display (which may resume recording)."""
        obs = self.sim.reset(self.route, self.weather, self.seed)
        route = self.sim.route
        self.policy.reset(route)
        self.manual.reset(route)
        self.monitor = EpisodeMonitor(route.length_m, self.limits)
        self.display.set_route(route)
        self.display.attrs_provider = self.episode_attrs
        self.display.on_reset(obs, {"route": route.name, "weather": self.weather, "seed": self.seed})
        self.result.episodes += 1
        return obs

    def control(self, obs: Observation) -> tuple[Control, dict[str, Any]]:
        """The policy's control, or the keys' while manual control is on (the policy still acts, for the HUD)."""
        if self.policy is self.manual:
            self.manual.set_keys(self.display.manual_keys())
            return self.manual.act(obs)
        control, record = self.policy.act(obs)
        if not self.display.manual:
            return control, record
        self.manual.set_keys(self.display.manual_keys())
        hand, hand_record = self.manual.act(obs)
        return hand, {**record, **hand_record}

    def tick(self, obs: Observation) -> tuple[Observation, str | None]:
        """One simulation step; returns the new observation and the termination reason (None: goes on)."""
        control, record = self.control(obs)
        obs = self.sim.step(control)
        self.display.on_step(obs, control, record)
        self.result.steps += 1
        return obs, self.monitor.update(obs)

    def end_episode(self, obs: Observation, termination: str) -> None:
        completion = route_completion(obs.lane.distance_along_m, self.sim.route.length_m, termination)
        self.result.terminations.append(termination)
        self.display.on_end({"termination": termination, "route_completion": completion,
                             "sim_time_s": obs.sim_time_s})

    def episode_attrs(self) -> dict[str, Any]:
        """The metadata a recorded episode carries (as ``caril collect`` writes it, with the driver instead of
        the expert's settings)."""
        sim, weather = self.sim, get_weather(self.weather)
        attrs = {"backend": sim.backend, "route": self.sim.route.name, "weather": weather.name,
                 "weather_params": weather.to_dict(), "seed": self.seed, "dt_s": sim.dt_s,
                 "camera": sim.camera.to_dict(), "camera_K": sim.camera.intrinsics(),
                 "driver": "manual" if self.display.manual else self.policy.name,
                 "policy": self.policy.config(), "manual": self.manual.config()}
        if self.limits is not None:
            attrs["limits"] = self.limits.to_dict()
        return attrs
