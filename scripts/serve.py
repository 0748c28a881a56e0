"""``caril serve``: the embedded simulator behind CARLA 0.9.16's own wire protocol.

    caril serve --port 2000 --map mixed
    python examples/carla_synchronous_mode.py --port 2000      # any carla==0.9.16 script, unchanged

The unmodified ``carla`` client connects as to a CARLA server: world and settings (synchronous and
asynchronous), weather, blueprints (``vehicle.tesla.model3``, ``sensor.camera.rgb`` of any size and fov,
``sensor.other.collision``, ``sensor.other.lane_invasion``), spawning, attached cameras streaming BGRA frames
matched to ticks, collision events, sticky vehicle control, the spectator, and the map as OpenDRIVE (so
``get_waypoint``, ``next``, ``get_topology`` and spawn points work on our roads). Maps are our routes:
``--map`` or ``client.load_world(NAME)``; spawn point 0 is the route's start and 1 its goal. Calls it does
not serve raise a ``RuntimeError`` naming the call. It binds to loopback unless ``--host`` says otherwise;
Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from dataclasses import dataclass

from scripts.args import arg
from sim.carla_server.encoding import DEFAULT_CLIENT_VERSION, PROTOCOLS
from sim.carla_server.maps import DEFAULT_MAP, load_map
from sim.errors import CarilError, UsageError

DESCRIPTION = "Serve the embedded simulator over CARLA 0.9.16's wire protocol (the real carla client connects)."
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Args:
    host: str = arg("127.0.0.1", help="address to bind; anything but loopback exposes the server to the network")
    port: int = arg(2000, help="RPC port (CARLA's default 2000; 0 picks a free port)")
    streaming_port: int | None = arg(None, help="sensor stream port (default: port+1, as CARLA)")
    map: str = arg(DEFAULT_MAP, help="map to load: a route name (straight, one-turn, two-turn, s-curve, curves, "
                                     "mixed) or random:<seed>")
    client_version: str = arg(DEFAULT_CLIENT_VERSION, help="carla client version to speak",
                              choices=tuple(PROTOCOLS))

    def __post_init__(self) -> None:
        for name in ("port", "streaming_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise UsageError(f"--{name.replace('_', '-')} {value} is not a TCP port (0..65535)")
        if self.streaming_port is None and self.port == 65535:
            raise UsageError("--port 65535 leaves no port+1 for the streams; pass --streaming-port")
        load_map(self.map)  # an unknown map fails now, with the list of valid ones


def run(args: Args) -> int:
    import cv2

    from sim.carla_server import CarlaServer

    # One OpenCV thread: its pool would compete with the client for the CPU between the renderer's calls
    # (measured with caril bench serve on 2 cores: about 5 % more ticks per second).
    cv2.setNumThreads(1)

    try:
        server = CarlaServer(args.host, args.port, args.streaming_port, args.map, args.client_version)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise CarilError(f"port {args.port} or its stream port is in use (a CARLA server or another caril serve?);"
                             " pass --port N (and --streaming-port M)") from None
        raise CarilError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    stop = threading.Event()  # the handlers go in before the ready line: a signal right after it stops cleanly
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.host not in LOOPBACK:
            print(f"warning: serving on {args.host}: anyone who can reach it can drive this simulator "
                  "(there is no authentication)", file=sys.stderr)
        print(f"caril serve: CARLA {server.protocol.version} protocol on {args.host}:{server.port} "
              f"(streams on {server.streaming_port}), map {server.world.map.name}; Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.close()
    print("caril serve: stopped", flush=True)
    return 0
