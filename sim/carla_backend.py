"""The CARLA backend: the simulator contract over a CARLA 0.9.15/0.9.16 server through the ``carla`` client.

Lifecycle (one :class:`CarlaSimulator` holds one connection; ``close`` is idempotent and runs on every
exit path: ``with`` blocks, exceptions, Ctrl-C, SIGTERM and interpreter exit)::

    connect    client + timeout, version check, load the town if needed, remove our leftover actors,
               synchronous mode with a fixed step (we are the only client that ticks, and only because we
               turned synchronous mode on), the Traffic Manager in synchronous mode in this client
    reset      plan the route on the map, weather, TM seed, spawn the ego once (retrying other spawn
               points) with its sensors, teleport it to the route start, warm-up ticks, first observation
    step       apply the control (or let the TM autopilot drive), one tick, frame-matched sensor data
    close      stop sensors, restore the world's settings and the TM's mode, destroy sensors then actors

Our actors carry ``role_name`` tags (``caril_ego``, ``caril_ego/camera``, ...) so a later client finds and
removes what a crashed one left. A server that dies or hangs mid-episode raises
:class:`SimulatorConnectionLost` (with a ``reason``); :func:`reconnect_with_backoff` builds a new
simulator for the next episode. ``carla`` is imported lazily; tests inject a stand-in module and client.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from sim.carla_convert import (
    LEADERBOARD_SENSOR_RADIUS_M,
    camera_attributes,
    camera_transform,
    collision_event,
    from_vehicle_control,
    image_to_rgb,
    lane_invasion_event,
    mount_radius_m,
    speed_mps,
    to_vehicle_control,
    to_weather_parameters,
    transform_to_pose,
)
from sim.carla_errors import (
    START_SERVER_HINT,
    CarlaConnectionError,
    CarlaServerBusy,
    CarlaVersionMismatch,
    SensorTimeout,
    SimulatorConnectionLost,
)
from sim.carla_routes import RoutePlanner, map_base_name, spawn_indices
from sim.carla_sync import EventQueue, FrameQueue
from sim.errors import CarilError, DependencyNotInstalled, UsageError
from sim.routes import Route, lane_frame_on_route
from sim.simulator import Simulator
from sim.types import DEFAULT_DT_S, CameraConfig, Control, Observation, check_step
from sim.weather import Weather, get_weather

__all__ = [
    "CarlaConfig",
    "CarlaConnectionError",
    "CarlaServerBusy",
    "CarlaSimulator",
    "CarlaVersionMismatch",
    "SensorTimeout",
    "SimulatorConnectionLost",
    "import_carla",
    "lane_frame_on_route",
    "make_carla_env",
    "reconnect_with_backoff",
]

log = logging.getLogger(__name__)

DEFAULT_VEHICLE = "vehicle.tesla.model3"
INSTALL_HINT = "pip install -e '.[carla]'"
T = TypeVar("T")


def import_carla() -> ModuleType:
    """The ``carla`` client module, or an error naming the extra that installs it.

    The 0.9.16 client segfaults on import when ``HOME`` is unset (it reads it for its map cache), as under
    ``env -i``, cron or some CI runners: ``HOME`` then gets the user's home from the password database.
    """
    if not os.environ.get("HOME"):
        os.environ["HOME"] = os.path.expanduser("~")
    try:
        import carla
    except ImportError as e:
        raise DependencyNotInstalled(
            f"the CARLA backend needs the `carla` client package ({e}); install it with {INSTALL_HINT} "
            "(carla==0.9.16, wheels for Python 3.10-3.12), or use --backend embedded") from None
    return carla


@dataclass(frozen=True)
class CarlaConfig:
    """Connection and episode settings of the CARLA backend. Seconds, metres.

    ``timeout_s`` is the client's RPC timeout: an unreachable server fails within it. ``tick_timeout_s``
    bounds ``world.tick``, ``sensor_timeout_s`` each wait for a tick's sensor data, ``load_world_timeout_s``
    loading ``town`` (None: keep the loaded map). ``dt_s`` is the fixed step, which CARLA's physics
    substepping must cover: ``max_substep_delta_time_s * max_substeps >= dt_s``. ``autopilot`` lets the
    Traffic Manager drive (``step`` then ignores its control and reports the applied one).
    ``take_over_sync`` accepts a server that is already synchronous (left frozen by a dead client).
    ``busy_probe_s``: how long a server found synchronous is watched for ticks from another live client.
    """

    host: str = "127.0.0.1"
    port: int = 2000
    tm_port: int = 8000
    timeout_s: float = 10.0
    tick_timeout_s: float = 10.0
    sensor_timeout_s: float = 5.0
    load_world_timeout_s: float = 60.0
    dt_s: float = DEFAULT_DT_S
    max_substep_delta_time_s: float = 0.01
    max_substeps: int = 10
    town: str | None = "Town04"
    vehicle: str = DEFAULT_VEHICLE
    role_name: str = "caril_ego"
    autopilot: bool = False
    warmup_s: float = 1.5
    spawn_lift_m: float = 0.0
    max_spawn_attempts: int = 20
    route_resolution_m: float = 0.5
    allow_version_mismatch: bool = False
    take_over_sync: bool = False
    handle_sigterm: bool = True
    busy_probe_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65534 or not 1 <= self.tm_port <= 65535:
            raise UsageError(f"--port {self.port} / --tm-port {self.tm_port} must be TCP ports "
                             "(CARLA also uses port+1)")
        if self.tm_port in (self.port, self.port + 1, self.port + 2):
            raise UsageError(f"--tm-port {self.tm_port} clashes with the server's ports {self.port}-{self.port + 2}; "
                             "use another one, e.g. 8000")
        for name in ("timeout_s", "tick_timeout_s", "sensor_timeout_s", "load_world_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name}={getattr(self, name)} must be a positive number of seconds")
        check_step(self.dt_s)
        if not 1 <= self.max_substeps <= 16 or not 0 < self.max_substep_delta_time_s <= 0.01:
            raise UsageError(f"max_substeps={self.max_substeps} must be 1..16 and max_substep_delta_time_s="
                             f"{self.max_substep_delta_time_s} in (0, 0.01] s (CARLA's physics limits)")
        if self.max_substep_delta_time_s * self.max_substeps < self.dt_s - 1e-9:
            raise UsageError(f"dt_s={self.dt_s} s exceeds the physics substepping limit max_substep_delta_time_s x "
                             f"max_substeps = {self.max_substep_delta_time_s * self.max_substeps:g} s; lower dt_s "
                             f"or raise max_substeps to {math.ceil(self.dt_s / self.max_substep_delta_time_s)}")
        if self.warmup_s < 0 or self.max_spawn_attempts < 1:
            raise UsageError("warmup_s must be >= 0 and max_spawn_attempts >= 1")
        if not self.role_name:
            raise UsageError("role_name must not be empty: it is how our actors are found again")

    @property
    def warmup_ticks(self) -> int:
        """Ticks run after placing the vehicle before the first observation (at least one)."""
        return max(1, math.ceil(self.warmup_s / self.dt_s - 1e-9))


def _release(version: str) -> str:
    """``0.9.16`` out of version strings such as ``0.9.16-dirty`` or ``0.9.16-12-gabcdef``."""
    m = re.search(r"\d+\.\d+\.\d+", version)
    return m.group(0) if m else version.strip()


def _is_timeout(error: BaseException) -> bool:
    return "time-out" in str(error) or "timed out" in str(error)


# -- process-wide safety nets: every open simulator is closed at exit and on SIGTERM ---------------------
# strong references: a simulator dropped without close() must still restore its server at exit (a weak set
# lost it to the garbage collector, leaving the server frozen in synchronous mode with our actors on it)
_OPEN: set[CarlaSimulator] = set()


def _close_all_open() -> None:
    for sim in list(_OPEN):
        sim.close()


atexit.register(_close_all_open)


def _sigterm_to_exit(signum: int, _frame: Any) -> None:
    """SIGTERM becomes SystemExit, so ``finally`` blocks, ``with`` exits and atexit teardown all run."""
    raise SystemExit(128 + signum)


def _install_sigterm_handler() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_exit)


def _remove_sigterm_handler() -> None:
    if (threading.current_thread() is threading.main_thread() and not _OPEN
            and signal.getsignal(signal.SIGTERM) is _sigterm_to_exit):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the server is being restored (a second Ctrl-C must not leave it frozen);
    they are raised again afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


class CarlaSimulator(Simulator):
    """The simulator contract on a CARLA server (connects in the constructor).

    Args:
        camera: the forward camera (default: the paper's 448x448, fov 110, at x=1.5 z=2.4).
        render_camera: False spawns no camera (empty images), for privileged expert runs.
        config: a :class:`CarlaConfig`; keyword ``settings`` (``host``, ``port``, ``tm_port``, ``timeout_s``,
            ``dt_s``, ``town``, ``autopilot``, ...) override its fields.
        carla_module: the ``carla`` module to use (default: import the real one).
        client: an already created ``carla.Client`` (default: one for ``host:port``).
    """

    backend = "carla"

    def __init__(self, camera: CameraConfig | None = None, render_camera: bool = True,
                 config: CarlaConfig | None = None, *, carla_module: ModuleType | None = None,
                 client: Any = None, **settings: Any) -> None:
        try:
            self.config = dataclasses.replace(config or CarlaConfig(), **settings)
        except TypeError:
            valid = ", ".join(f.name for f in dataclasses.fields(CarlaConfig))
            raise UsageError(f"unknown CARLA setting in {sorted(settings)}; valid: {valid}") from None
        self.camera = camera or CameraConfig()
        self.render_camera = render_camera
        self.dt_s = self.config.dt_s
        self._carla = carla_module if carla_module is not None else import_carla()
        self._client = client
        self._closed = False
        self._server_alive = True
        self._lost: SimulatorConnectionLost | None = None
        self._world: Any = None
        self._map: Any = None
        self._tm: Any = None
        self._original_settings: Any = None
        self._sync_on = self._tm_sync_on = False
        self._on_tick_id: int | None = None
        self._vehicle: Any = None
        self._sensors: list[Any] = []
        self._camera_q: FrameQueue | None = None
        self._snapshots = FrameQueue("world snapshot")
        self._collisions = EventQueue("collision")
        self._invasions = EventQueue("lane invasion")
        self._planner: RoutePlanner | None = None
        self._routes: dict[str, tuple[Route, Any, np.ndarray | None]] = {}
        self._route: Route | None = None
        self._frame0 = 0
        self._server_frame = 0
        self._hint: int | None = None
        self.server_version = ""
        self.leftovers_removed = 0
        if mount_radius_m(self.camera) > LEADERBOARD_SENSOR_RADIUS_M:
            log.warning("camera mount is %.2f m from the vehicle origin: the CARLA Leaderboard allows %.1f m",
                        mount_radius_m(self.camera), LEADERBOARD_SENSOR_RADIUS_M)
        _OPEN.add(self)
        if self.config.handle_sigterm:
            _install_sigterm_handler()
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    # -- connection -------------------------------------------------------------------------------------
    def _connect(self) -> None:
        cfg, carla = self.config, self._carla
        where = f"{cfg.host}:{cfg.port}"
        try:
            if self._client is None:
                self._client = carla.Client(cfg.host, cfg.port)
            self._client.set_timeout(cfg.timeout_s)
            self.server_version = self._client.get_server_version()
        except RuntimeError as e:
            raise CarlaConnectionError(f"no CARLA server answered at {where} within {cfg.timeout_s:g} s ({e}). "
                                       f"{START_SERVER_HINT}") from None
        self._check_versions()
        try:
            world = self._client.get_world()
            self._refuse_a_live_ticker(world)  # before touching its map or actors
            self._world = self._load_town(world)
            self.leftovers_removed = self._remove_leftovers()
            self._enter_synchronous_mode()
            if cfg.autopilot:  # only the autopilot needs a Traffic Manager; an idle one can stall ticks (P20)
                self._tm = self._client.get_trafficmanager(cfg.tm_port)
                self._tm.set_synchronous_mode(True)
                self._tm_sync_on = True
            self._on_tick_id = self._world.on_tick(self._snapshots.put)
        except RuntimeError as e:
            if "bind error" in str(e):
                raise CarlaConnectionError(f"the Traffic Manager could not open port {cfg.tm_port} ({e}); another "
                                           "process holds it: pass another --tm-port or stop that process") from None
            raise CarlaConnectionError(f"the CARLA server at {where} stopped answering while connecting ({e}). "
                                       f"{START_SERVER_HINT}") from None
        log.info("connected to CARLA %s at %s, map %s, dt %.3f s", self.server_version, where,
                 self._map.name, cfg.dt_s)

    def _check_versions(self) -> None:
        client_v, server_v = self._client.get_client_version(), self.server_version
        if _release(client_v) == _release(server_v):
            return
        message = (f"the carla client package is {client_v} but the server at {self.config.host}:{self.config.port} "
                   f"is {server_v}; install the matching client (pip install carla=={_release(server_v)}) or run "
                   f"a {_release(client_v)} server (docker/README.md)")
        if not self.config.allow_version_mismatch:
            raise CarlaVersionMismatch(message)
        log.warning("%s; going on because allow_version_mismatch is set", message)

    def _load_town(self, world: Any) -> Any:
        town = self.config.town
        self._map = world.get_map()
        current = map_base_name(self._map.name)
        if town is None or current in (town, f"{town}_Opt"):
            return world
        log.info("loading %s (the server runs %s)", town, current)
        self._client.set_timeout(self.config.load_world_timeout_s)
        try:
            world = self._client.load_world(town)
        finally:
            self._client.set_timeout(self.config.timeout_s)
        self._map = world.get_map()
        return world

    def _refuse_a_live_ticker(self, world: Any) -> None:
        """A synchronous server whose frame moves while we watch is ticked by another live client: taking it
        over (or removing actors of our role name) would break that client, so that is CarlaServerBusy. One
        left frozen by a dead client stands still and may be taken over."""
        if not world.get_settings().synchronous_mode:
            return
        first = world.get_snapshot().frame
        time.sleep(self.config.busy_probe_s)
        if world.get_snapshot().frame != first:
            raise CarlaServerBusy(f"another client is ticking the synchronous CARLA server at {self.config.host}:"
                                  f"{self.config.port} right now (only one may); stop it, or use another server")

    def _is_ours(self, actor: Any) -> bool:
        role = str(actor.attributes.get("role_name", ""))
        return role == self.config.role_name or role.startswith(self.config.role_name + "/")

    def _remove_leftovers(self) -> int:
        """Destroy actors a dead client of ours left (ours by role name, plus sensors attached to them)."""
        actors = list(self._world.get_actors())
        ours = {a.id: a for a in actors if self._is_ours(a)}
        for a in actors:
            parent = getattr(a, "parent", None)
            if parent is not None and parent.id in ours:
                ours[a.id] = a
        sensors = [a for a in ours.values() if str(a.type_id).startswith("sensor.")]
        for a in sensors:
            if _listening(a):
                a.stop()
        for a in [*sensors, *(a for a in ours.values() if a not in sensors)]:
            a.destroy()
        if ours:
            log.warning("removed %d actors left by an earlier client (role name %r)", len(ours),
                        self.config.role_name)
        return len(ours)

    def _enter_synchronous_mode(self) -> None:
        cfg, world = self.config, self._world
        current = world.get_settings()
        if current.synchronous_mode:
            if not (cfg.take_over_sync or self.leftovers_removed):
                raise CarlaServerBusy(
                    f"the CARLA server at {cfg.host}:{cfg.port} is already in synchronous mode: another client ticks "
                    "it (only one may), or a client died without restoring it. Stop the other client, restart the "
                    "server, or take it over with take_over_sync=True")
            log.warning("taking over a server left in synchronous mode; it will be asynchronous after us")
            current.synchronous_mode = False
            current.fixed_delta_seconds = None
        self._original_settings = current
        wanted = world.get_settings()
        wanted.synchronous_mode = True
        wanted.fixed_delta_seconds = cfg.dt_s
        wanted.substepping = True
        wanted.max_substep_delta_time = cfg.max_substep_delta_time_s
        wanted.max_substeps = cfg.max_substeps
        wanted.deterministic_ragdolls = True  # as the Leaderboard: reproducible runs
        self._sync_on = True  # set first: even a failed apply_settings is undone on close
        world.apply_settings(wanted)

    # -- the contract -----------------------------------------------------------------------------------
    @property
    def route(self) -> Route:
        if self._route is None:
            raise RuntimeError("call reset() before using the simulator")
        return self._route

    @property
    def dropped_frames(self) -> dict[str, int]:
        """Stale sensor items discarded so far, per source (a health figure for logs)."""
        queues = [self._snapshots, *([self._camera_q] if self._camera_q is not None else [])]
        return {q.name: q.dropped for q in queues}

    @property
    def server_frame(self) -> int:
        """The server's frame number of the last observation (episode frames count from 0)."""
        return self._server_frame

    def resolve_route(self, route: Route | str) -> Route:
        """The route on this server's map: a name (``two-turn``, ``81:270``; an embedded :class:`Route` stands
        for its name) is planned over the map's waypoints; a :class:`Route` without a road network is
        taken as already being in this map's frame."""
        return self._resolve(route)[0]

    def _resolve(self, route: Route | str) -> tuple[Route, Any, np.ndarray | None]:
        """(route, start transform, road heights or None) of a route name or map-frame :class:`Route`."""
        if isinstance(route, Route) and route.network is None:
            for planned in self._routes.values():  # one of ours (from resolve_route): start at its spawn point
                if planned[0] is route:
                    return planned
            return route, self._start_transform_of(route), None
        name = route if isinstance(route, str) else route.name
        if name not in self._routes:
            points = self._map.get_spawn_points()
            start, end = spawn_indices(name, self._map.name, len(points))
            if self._planner is None:
                self._planner = RoutePlanner(self._map, resolution_m=self.config.route_resolution_m)
            planned, heights = self._planner.route(name, points[start].location, points[end].location)
            log.info("route %s: spawn %d -> %d, %.1f m", name, start, end, planned.length_m)
            self._routes[name] = (planned, points[start], heights)
        return self._routes[name]

    def _start_transform_of(self, route: Route) -> Any:
        carla = self._carla
        x, y, heading = route.start_pose()
        wp = self._map.get_waypoint(carla.Location(x=x, y=y, z=0.0))
        z = float(wp.transform.location.z) + 0.5 if wp is not None else 0.5
        return carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(yaw=math.degrees(heading)))

    def reset(self, route: Route | str, weather: Weather | str = "ClearNoon", seed: int = 0) -> Observation:
        self._check_usable()
        weather = get_weather(weather) if isinstance(weather, str) else weather
        try:
            planned, start, heights = self._resolve(route)
            self._world.set_weather(to_weather_parameters(self._carla, weather))
            if self._tm is not None:
                self._tm.set_random_device_seed(int(seed))
            if self._vehicle is None:
                self._spawn_ego(start)
            elif self.config.autopilot:
                self._vehicle.set_autopilot(False, self.config.tm_port)
            self._route, self._hint = planned, 0
            self._place(start)
            frame = self._warm_up()
            if self.config.autopilot:
                self._engage_autopilot(planned, heights, float(start.location.z))
        except RuntimeError as e:
            raise self._connection_lost(e, "reset") from None
        self._frame0 = frame
        self._collisions.take_until(frame)
        self._invasions.take_until(frame)
        return self._observe(frame, Control())

    def step(self, control: Control) -> Observation:
        self._check_usable()
        if self._route is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(control, Control):
            control = Control.from_array(control)
        try:
            if not self.config.autopilot:
                self._vehicle.apply_control(to_vehicle_control(self._carla, control))
            frame = self._tick()
            if self.config.autopilot:  # the control the autopilot applied during this tick
                control = from_vehicle_control(self._vehicle.get_control())
        except RuntimeError as e:
            raise self._connection_lost(e, "step") from None
        return self._observe(frame, control)

    # -- episode internals ------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("this CARLA simulator is closed; create a new one")
        if self._lost is not None:
            raise SimulatorConnectionLost(f"the connection was lost earlier ({self._lost}); create a new simulator "
                                          "(reconnect_with_backoff)", self._lost.reason)

    def _connection_lost(self, error: RuntimeError, during: str) -> SimulatorConnectionLost:
        """Our error for a ``RuntimeError`` of the client. The simulator refuses further episodes; ``close``
        still tries to restore the server once (a slow server may come back), at most one time-out long."""
        if _is_timeout(error):
            reason = "tick_timeout" if during == "tick" else "server_timeout"
            message = (f"the CARLA server stopped answering during {during} ({error}); it crashed or hangs. "
                       "The episode is failed; restart the server (docker compose -f docker/compose.yaml restart "
                       "carla) and reconnect")
        else:
            reason = "server_error"
            message = f"the CARLA server failed during {during}: {error}"
        self._lost = SimulatorConnectionLost(message, reason)
        return self._lost

    def _tick(self) -> int:
        """One synchronous tick (we turned synchronous mode on, so we are the one client that ticks)."""
        if not self._sync_on:
            raise RuntimeError("refusing to tick a server whose synchronous mode we did not turn on")
        try:
            return int(self._world.tick(self.config.tick_timeout_s))
        except RuntimeError as e:
            raise self._connection_lost(e, "tick") from None

    def _spawn_ego(self, start: Any) -> None:
        """Spawn the ego at the route start, else at the nearest free spawn point, with its sensors."""
        carla, cfg = self._carla, self.config
        library = self._world.get_blueprint_library()
        try:
            blueprint = library.find(cfg.vehicle)
        except (IndexError, RuntimeError):
            raise UsageError(f"vehicle blueprint {cfg.vehicle!r} does not exist on this server; list them with "
                             "world.get_blueprint_library().filter('vehicle.*')") from None
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", cfg.role_name)
        others = sorted((t for t in self._map.get_spawn_points() if _distance(t.location, start.location) > 1.0),
                        key=lambda t: _distance(t.location, start.location))
        for transform in [start, *others][:cfg.max_spawn_attempts]:
            lifted = carla.Transform(carla.Location(x=transform.location.x, y=transform.location.y,
                                                    z=transform.location.z + cfg.spawn_lift_m), transform.rotation)
            self._vehicle = self._world.try_spawn_actor(blueprint, lifted)
            if self._vehicle is not None:
                break
            log.warning("spawn point at (%.1f, %.1f) is occupied; trying another", transform.location.x,
                        transform.location.y)
        if self._vehicle is None:
            raise CarilError(f"could not spawn {cfg.vehicle}: {cfg.max_spawn_attempts} spawn points were occupied; "
                             "remove other actors or restart the server")
        self._attach_sensors(library)

    def _sensor(self, library: Any, type_id: str, tag: str, attributes: dict[str, str], transform: Any,
                sink: Callable[[Any], None]) -> Any:
        blueprint = library.find(type_id)
        for key, value in attributes.items():
            blueprint.set_attribute(key, value)
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", f"{self.config.role_name}/{tag}")
        sensor = self._world.spawn_actor(blueprint, transform, attach_to=self._vehicle)
        self._sensors.append(sensor)  # keep a reference: CARLA stops calling back for collected sensors
        sensor.listen(sink)
        return sensor

    def _attach_sensors(self, library: Any) -> None:
        carla = self._carla
        if self.render_camera:
            self._camera_q = FrameQueue("camera")
            self._sensor(library, "sensor.camera.rgb", "camera", camera_attributes(self.camera),
                         camera_transform(carla, self.camera), self._camera_q.put)
        self._sensor(library, "sensor.other.collision", "collision", {}, carla.Transform(), self._collisions.put)
        self._sensor(library, "sensor.other.lane_invasion", "lane_invasion", {}, carla.Transform(),
                     self._invasions.put)

    def _place(self, start: Any) -> None:
        """Teleport the ego to ``start`` at rest with the brakes on (the ego is reused across episodes)."""
        carla, cfg = self._carla, self.config
        transform = carla.Transform(carla.Location(x=start.location.x, y=start.location.y,
                                                   z=start.location.z + cfg.spawn_lift_m), start.rotation)
        self._vehicle.set_transform(transform)
        self._vehicle.set_target_velocity(carla.Vector3D(0.0, 0.0, 0.0))
        self._vehicle.set_target_angular_velocity(carla.Vector3D(0.0, 0.0, 0.0))
        self._vehicle.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0, hand_brake=True))

    def _warm_up(self) -> int:
        """Tick until the car has dropped onto the road and the camera's exposure has settled; the last
        tick's frame is the first observation's."""
        frame = 0
        for k in range(self.config.warmup_ticks):
            frame = self._tick()
            if k < self.config.warmup_ticks - 1:
                self._snapshots.clear()
                if self._camera_q is not None:
                    self._camera_q.clear()
        return frame

    def _engage_autopilot(self, route: Route, heights: np.ndarray | None, start_z_m: float) -> None:
        """Hand the ego to the Traffic Manager (on our TM port), following the route's points every ~5 m,
        ignoring traffic lights (as CARIL's data collection) and never changing lanes by itself."""
        carla, tm, vehicle = self._carla, self._tm, self._vehicle
        vehicle.set_autopilot(True, self.config.tm_port)
        tm.ignore_lights_percentage(vehicle, 100.0)
        tm.auto_lane_change(vehicle, False)
        z = heights if heights is not None else np.full(len(route.x), start_z_m)
        step = max(1, round(5.0 / max(float(np.median(np.diff(route.s_m))), 1e-3)))
        picks = [*range(step, len(route.x) - 1, step), len(route.x) - 1]
        tm.set_path(vehicle, [carla.Location(x=float(route.x[i]), y=float(route.y[i]), z=float(z[i])) for i in picks])

    def _observe(self, frame: int, control: Control) -> Observation:
        timeout = self.config.sensor_timeout_s
        try:
            snapshot = self._snapshots.get(frame, timeout)
            image = image_to_rgb(self._camera_q.get(frame, timeout)) if self._camera_q is not None else \
                np.zeros((0, 0, 3), np.uint8)
        except SimulatorConnectionLost as e:
            self._lost = e
            raise
        state = snapshot.find(self._vehicle.id)
        if state is None:
            self._lost = SimulatorConnectionLost("the ego vehicle disappeared from the world (another client "
                                                 "destroyed it or reloaded the map)", "ego_destroyed")
            raise self._lost
        pose = transform_to_pose(state.get_transform())
        route = self.route
        lane, self._hint = lane_frame_on_route(route, pose.x_m, pose.y_m, math.radians(pose.yaw_deg), self._hint)
        k = frame - self._frame0
        self._server_frame = frame
        return Observation(
            image=image,
            speed_mps=speed_mps(state.get_velocity()),
            pose=pose,
            frame=k,
            sim_time_s=k * self.dt_s,
            lane=lane,
            control=control,
            collisions=tuple(collision_event(e, e.frame - self._frame0) for e in self._collisions.take_until(frame)),
            lane_invasions=tuple(lane_invasion_event(e, e.frame - self._frame0)
                                 for e in self._invasions.take_until(frame)),
            command=route.command_at(lane.distance_along_m),
        )

    # -- teardown ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop sensors, restore the world's settings and the TM's mode, destroy sensors then the ego.

        Idempotent, never raises for a dead server (each step is logged and skipped), and holds Ctrl-C and
        SIGTERM until the server has been restored.
        """
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        try:
            with _signals_deferred():
                self._teardown()
        finally:
            _remove_sigterm_handler()

    def _teardown(self) -> None:
        def attempt(what: str, fn: Callable[[], Any], server: bool = True) -> None:
            if server and not self._server_alive:
                return
            try:
                fn()
            except Exception as e:  # teardown goes on whatever fails
                log.warning("CARLA teardown: %s failed: %s", what, e)
                if _is_timeout(e):
                    self._server_alive = False

        for sensor in self._sensors:
            attempt(f"stopping sensor {sensor.id}", sensor.stop, server=False)
        if self._on_tick_id is not None:
            attempt("removing the on_tick callback", lambda: self._world.remove_on_tick(self._on_tick_id),
                    server=False)
        if self._vehicle is not None and self.config.autopilot:
            attempt("turning the autopilot off", lambda: self._vehicle.set_autopilot(False, self.config.tm_port))
        if self._sync_on:
            attempt("restoring the world settings", lambda: self._world.apply_settings(self._original_settings))
        if self._tm_sync_on:
            attempt("turning the Traffic Manager's synchronous mode off",
                    lambda: self._tm.set_synchronous_mode(False), server=False)
        for actor in [*self._sensors, *([self._vehicle] if self._vehicle is not None else [])]:
            attempt(f"destroying actor {actor.id}", actor.destroy)
        self._sensors, self._vehicle = [], None
        self._sync_on = self._tm_sync_on = False

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(host=self.config.host, port=self.config.port, tm_port=self.config.tm_port,
                    server_version=self.server_version, map=map_base_name(self._map.name) if self._map else None,
                    vehicle=self.config.vehicle, autopilot=self.config.autopilot,
                    route=self._route.name if self._route else None)
        return meta


def _listening(sensor: Any) -> bool:
    """``Sensor.is_listening``: a method in 0.9.16, a property in older clients."""
    value = getattr(sensor, "is_listening", False)
    return bool(value() if callable(value) else value)


def _distance(a: Any, b: Any) -> float:
    return math.sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2 + (a.z - b.z) ** 2)


def reconnect_with_backoff(factory: Callable[[], T], attempts: int = 5, base_delay_s: float = 2.0,
                           max_delay_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
                           retry_on: tuple[type[BaseException], ...] = (CarlaConnectionError,
                                                                        SimulatorConnectionLost)) -> T:
    """``factory()`` (e.g. a new :class:`CarlaSimulator`), retried on connection errors after
    ``base_delay_s * 2**k`` seconds (capped at ``max_delay_s``); the last error is raised after ``attempts``."""
    if attempts < 1 or base_delay_s < 0:
        raise UsageError(f"attempts={attempts} must be >= 1 and base_delay_s={base_delay_s} >= 0")
    for k in range(attempts):
        try:
            return factory()
        except retry_on as e:
            if k == attempts - 1:
                raise
            delay = min(max_delay_s, base_delay_s * 2 ** k)
            log.warning("connecting failed (%s); attempt %d of %d in %.1f s", e, k + 2, attempts, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def make_carla_env(route: str = "two-turn", weather: str = "ClearNoon", camera: CameraConfig | None = None,
                   width: int | None = None, height: int | None = None, fov_deg: float | None = None,
                   render_mode: str | None = None, **sim_kwargs: Any) -> Any:
    """Entry point of ``caril/Carla-v0``: the Gymnasium env over :class:`CarlaSimulator` (``sim_kwargs``:
    ``host``, ``port``, ``tm_port``, ``timeout_s``, ``dt_s``, ``town``, ``autopilot``, ...)."""
    from sim.env import DrivingEnv

    if camera is None:
        base = CameraConfig()
        camera = CameraConfig(width=width or base.width, height=height or base.height, fov_deg=fov_deg or base.fov_deg)
    sim = CarlaSimulator(camera=camera, **sim_kwargs)
    try:
        return DrivingEnv(sim, route, weather, render_mode)
    except BaseException:  # e.g. a route this map lacks: give the server back before saying so
        sim.close()
        raise
