"""Backend factory: the one place that maps ``--backend`` names to simulator classes (imported lazily)."""

from __future__ import annotations

from typing import Any

from sim.errors import unknown_name
from sim.simulator import Simulator

BACKENDS = ("embedded", "carla")


def make_simulator(backend: str = "embedded", **kwargs: Any) -> Simulator:
    """Build a simulator of ``backend`` with its keyword settings (camera, dt_s, ...)."""
    if backend == "embedded":
        from sim.embedded import EmbeddedSimulator

        return EmbeddedSimulator(**kwargs)
    if backend == "carla":
        from sim.carla_backend import CarlaSimulator  # the [carla] extra, imported only when asked for

        return CarlaSimulator(**kwargs)
    raise unknown_name("backend", backend, BACKENDS)
