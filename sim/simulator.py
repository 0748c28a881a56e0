"""The simulator contract both backends implement: synchronous, fixed-step, one ego vehicle on a route.

``reset(route, weather, seed)`` places the vehicle at the route's start and returns the first observation;
``step(control)`` applies the control, advances exactly one fixed step of ``dt_s`` seconds (a CARLA
synchronous tick) and returns the observation of that tick. Controls persist only for the step they are
given to, as the caller sends one per tick.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from sim.routes import Route
from sim.types import CameraConfig, Control, Observation
from sim.weather import Weather


class Simulator(ABC):
    """Base class of the embedded and CARLA backends. Usable as a context manager; ``close`` is idempotent."""

    dt_s: float
    camera: CameraConfig
    backend: str = "abstract"

    @abstractmethod
    def reset(self, route: Route, weather: Weather, seed: int = 0) -> Observation:
        """Start an episode on ``route`` under ``weather``; ``seed`` fixes everything random in it."""

    @abstractmethod
    def step(self, control: Control) -> Observation:
        """Apply ``control`` for one fixed step and return the new observation."""

    @property
    @abstractmethod
    def route(self) -> Route:
        """The route of the current episode."""

    def close(self) -> None:
        """Release resources; safe to call more than once."""

    def metadata(self) -> dict:
        """Backend facts recorded with episodes (backend, dt, camera, ...)."""
        return {"backend": self.backend, "dt_s": self.dt_s, "camera": self.camera.to_dict()}

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
