"""``caril serve``: the embedded simulator behind CARLA 0.9.16's own wire protocol.

The unmodified ``carla`` client connects to it as to a CARLA server. Modules: ``encoding`` (wire formats and
the per-version constants), ``rpc`` (msgpack-rpc transport), ``streaming`` (sensor and world-state streams),
``maps`` (our routes as OpenDRIVE maps), ``blueprints``, ``world`` (actors and time over the embedded
simulator's parts), ``service`` (the RPC calls), ``server`` (:class:`CarlaServer`).
"""

from sim.carla_server.server import CarlaServer

__all__ = ["CarlaServer"]
