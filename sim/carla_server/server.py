"""``CarlaServer``: the embedded simulator behind CARLA's wire protocol (RPC port, stream port, ticker).

    with CarlaServer(port=2000, map_name="mixed") as server:
        server.wait()  # until close() or a signal

The world starts asynchronous, as CARLA does: a ticker thread advances it in real time (one
``fixed_delta_seconds`` step, else 0.05 s, per that many wall seconds). Once a client turns synchronous mode
on, only its ``world.tick()`` advances it; the ticker waits until synchronous mode is off again. Like CARLA,
the server stays synchronous when that client goes away.
"""

from __future__ import annotations

import logging
import threading
import time

from sim.carla_server.encoding import DEFAULT_CLIENT_VERSION, protocol_for
from sim.carla_server.maps import DEFAULT_MAP
from sim.carla_server.rpc import RpcServer
from sim.carla_server.service import CarlaService
from sim.carla_server.streaming import StreamServer
from sim.carla_server.world import EPISODE_STREAM, World

log = logging.getLogger(__name__)


class CarlaServer:
    """Serves a :class:`World` on ``host:port`` (RPC) and ``host:streaming_port`` (streams; 0 picks a free
    port, as does ``port=0``). ``client_version`` picks the row of the protocol table. Starts on
    construction; :meth:`close` (or leaving the ``with`` block) stops everything and is idempotent."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, streaming_port: int | None = None,
                 map_name: str = DEFAULT_MAP, client_version: str = DEFAULT_CLIENT_VERSION) -> None:
        self.protocol = protocol_for(client_version)
        self.host = host
        self._stop = threading.Event()
        self.streams = StreamServer(host, port + 1 if streaming_port is None and port else streaming_port or 0,
                                    on_subscribe=self._on_subscribe)
        try:
            self.world = World(map_name, self.protocol, self.streams, self.streams.port)
            self.service = CarlaService(self.world, self.streams.expect, self.streams.wait_for_pending,
                                        self.streams.port)
            self.rpc = RpcServer(host, port, self.service)
        except BaseException:
            self.streams.close()
            raise
        self.port = self.rpc.port
        self.streaming_port = self.streams.port
        self._ticker = threading.Thread(target=self._run_ticker, name="carla-ticker", daemon=True)
        self.streams.start()
        self.rpc.start()
        self._ticker.start()
        log.info("serving map %s on %s:%d (streams on port %d), CARLA protocol %s", self.world.map.name, host,
                 self.port, self.streaming_port, self.protocol.version)

    def _on_subscribe(self, stream_id: int, send) -> None:
        """A new episode subscriber gets the latest state at once (CARLA would make it wait a tick)."""
        if stream_id == EPISODE_STREAM and self.world.last_state:
            send(self.world.last_state)

    def _run_ticker(self) -> None:
        """Advance the asynchronous world in real time; idle while it is synchronous. It waits on the world's
        ``changed`` condition, so new settings (or :meth:`close`) take effect at once; a tick that fails is
        logged and the world goes on. The world lock is held only for a tick: a tick slower than the step
        re-bases the schedule, so there is always a wait in which the RPC threads take the lock."""
        world = self.world
        last = time.monotonic()  # when the last tick was due (the next is one step later, at today's step)
        while not self._stop.is_set():
            with world.lock:
                if world.settings.synchronous_mode:
                    world.changed.wait(0.5)
                    last = time.monotonic()
                    continue
                due = last + world.delta_s
                if due > time.monotonic():
                    world.changed.wait(due - time.monotonic())
                    continue
                try:
                    world.tick()
                except Exception:
                    log.exception("an asynchronous tick failed; the world goes on")
                end = time.monotonic()
                last = due if end < due + world.delta_s else end  # a whole step late: a full step's wait next

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`close` (True) or ``timeout_s`` seconds (False)."""
        return self._stop.wait(timeout_s)

    def close(self) -> None:
        """Stop the ticker, then the RPC and stream servers; clients see their connections close."""
        if self._stop.is_set() and not self._ticker.is_alive():
            return
        self._stop.set()
        with self.world.lock:
            self.world.changed.notify_all()
        self._ticker.join(timeout=2.0)
        self.rpc.close()
        self.streams.close()
        log.info("server stopped")

    def __enter__(self) -> CarlaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
