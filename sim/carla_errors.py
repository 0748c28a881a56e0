"""Errors of the CARLA backend, each with a message that says how to fix the problem.

``SimulatorConnectionLost`` is the one an episode loop must expect: the server died, stopped answering
ticks, or stopped delivering sensor data in the middle of an episode. The episode is then failed with
``reason`` and the caller reconnects (see :func:`sim.carla_backend.reconnect_with_backoff`).
"""

from __future__ import annotations

from sim.errors import CarilError, SimulatorConnectionLost

__all__ = ["CarlaConnectionError", "CarlaServerBusy", "CarlaVersionMismatch", "SensorTimeout",
           "SimulatorConnectionLost"]

START_SERVER_HINT = (
    "Start a server with `docker compose -f docker/compose.yaml up -d carla` (see docker/README.md), "
    "or pass --host/--port of a running CARLA 0.9.16 server."
)


class CarlaConnectionError(CarilError):
    """No CARLA server answered at host:port within the timeout, or the client could not be created."""


class CarlaVersionMismatch(CarilError):
    """The ``carla`` client package and the server are different CARLA releases."""


class CarlaServerBusy(CarilError):
    """The server is already in synchronous mode: another client ticks it (only one may), or a dead client
    left it frozen."""


class SensorTimeout(SimulatorConnectionLost):
    """A sensor's data for the current tick did not arrive within the sensor timeout."""

    def __init__(self, message: str, reason: str = "sensor_timeout") -> None:
        super().__init__(message, reason)
