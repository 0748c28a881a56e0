"""Gymnasium environments over the simulator contract: ``caril/Embedded-v0`` (and ``caril/Carla-v0``).

Observation Space: ``Dict(image=Box(0, 255, (H, W, 3), uint8), speed=Box(0, 50, (1,), float32),
command=Discrete(4, start=1))`` with the speed in m/s and the route's navigation command as CARLA's
``RoadOption`` value (1 left, 2 right, 3 straight through the next junction, 4 follow the lane).
Action Space: ``Box([-1, 0, 0], [1, 1, 1], float32)`` = steer (+1 right), throttle, brake, as
``carla.VehicleControl``. Rewards: metres of route progress this step, minus 1 per lane invasion and minus
100 on a collision. Termination: goal reached, collision, off route or blocked
(:mod:`sim.episode`); truncation: the route's time limit. ``info`` carries the privileged lane frame, the
pose, the events and, at the end, ``termination``.

Arguments: ``route`` and ``weather`` names (overridable for one episode with ``reset(options={"route":
..., "weather": ...})``; the next reset without options drives these again), ``camera`` (a
:class:`CameraConfig`) or ``width``/``height``/``fov_deg``, ``dt_s``, ``render_mode`` ``"rgb_array"`` (the
camera frame).

Version History: v0: first version.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.episode import EpisodeLimits, EpisodeMonitor
from sim.errors import UsageError
from sim.routes import get_route
from sim.simulator import Simulator
from sim.types import CameraConfig, Control, Observation, RoadOption
from sim.weather import get_weather

MAX_SPEED_MPS = 50.0


class DrivingEnv(gym.Env):
    """A Gymnasium view of any :class:`Simulator` backend."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, simulator: Simulator, route: str = "straight", weather: str = "ClearNoon",
                 render_mode: str | None = None, limits: EpisodeLimits | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not one of {self.metadata['render_modes']}")
        self._resolve = getattr(simulator, "resolve_route", get_route)  # CARLA also takes start:end spawns
        self._resolve(route)
        get_weather(weather)
        self.sim, self.route_name, self.weather_name = simulator, route, weather
        self._defaults = (route, weather)  # what a reset without options drives
        self.render_mode, self.limits = render_mode, limits or EpisodeLimits()
        self.metadata = {**self.metadata, "render_fps": round(1.0 / simulator.dt_s)}
        cam = simulator.camera
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8),
            "speed": spaces.Box(0.0, MAX_SPEED_MPS, (1,), np.float32),
            "command": spaces.Discrete(len(RoadOption), start=int(min(RoadOption))),  # RoadOption 1..4
        })
        self.action_space = spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32),
                                       dtype=np.float32)
        self._last: Observation | None = None

    def _obs(self, obs: Observation) -> dict[str, np.ndarray]:
        return {"image": obs.image, "speed": np.array([min(obs.speed_mps, MAX_SPEED_MPS)], np.float32),
                "command": int(obs.command)}

    def _info(self, obs: Observation) -> dict[str, Any]:
        # vars() copies of the flat dataclasses: dataclasses.asdict deep-copies and costs ~10% of a step
        return {"lane": dict(vars(obs.lane)), "pose": dict(vars(obs.pose)), "frame": obs.frame,
                "sim_time_s": obs.sim_time_s, "collisions": len(obs.collisions),
                "lane_invasions": len(obs.lane_invasions)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        route_name, weather_name = options.get("route", self._defaults[0]), options.get("weather", self._defaults[1])
        route, weather = self._resolve(route_name), get_weather(weather_name)  # a bad name changes nothing
        self.route_name, self.weather_name = route_name, weather_name
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        obs = self.sim.reset(route, weather, episode_seed)
        self._monitor = EpisodeMonitor(self.sim.route.length_m, self.limits)
        self._last = obs
        return self._obs(obs), self._info(obs)

    def step(self, action):
        if self._last is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        control = Control.from_array(np.clip(action, self.action_space.low, self.action_space.high))
        obs = self.sim.step(control)
        reward = obs.lane.distance_along_m - self._last.lane.distance_along_m
        reward -= len(obs.lane_invasions) + (100.0 if obs.collisions else 0.0)
        self._last = obs
        reason = self._monitor.update(obs)
        info = self._info(obs)
        if reason:
            info["termination"] = reason
        return self._obs(obs), float(reward), reason not in (None, "time_limit"), reason == "time_limit", info

    def render(self):
        if self.render_mode == "rgb_array" and self._last is not None:
            return self._last.image
        return None

    def close(self) -> None:
        self.sim.close()


def make_embedded_env(route: str = "straight", weather: str = "ClearNoon", camera: CameraConfig | None = None,
                      width: int | None = None, height: int | None = None, fov_deg: float | None = None,
                      dt_s: float = 0.05, render_mode: str | None = None, **sim_kwargs: Any) -> DrivingEnv:
    """Entry point of ``caril/Embedded-v0``."""
    from sim.embedded import EmbeddedSimulator

    if camera is None:
        base = CameraConfig()
        camera = CameraConfig(width=width or base.width, height=height or base.height,
                              fov_deg=fov_deg or base.fov_deg)
    if sim_kwargs.get("render_camera") is False:
        raise UsageError("caril/Embedded-v0 observes through its camera: render_camera=False would give images "
                         "outside the observation space (use EmbeddedSimulator directly for camera-less runs)")
    return DrivingEnv(EmbeddedSimulator(camera=camera, dt_s=dt_s, **sim_kwargs), route, weather, render_mode)
