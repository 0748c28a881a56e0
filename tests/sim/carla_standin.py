"""An in-memory stand-in for a CARLA 0.9.16 server, seen through the ``carla`` client API (tests only).

It behaves as CARLA documents (``reference/carla.md`` sections 1.3, 1.6, 1.7, 3):

* ``world.tick()`` advances one frame (frame ids start at an arbitrary number, as on a running server) and
  returns its id; sensor data and world snapshots are delivered by callbacks on ANOTHER thread, possibly
  after ``tick`` returns (``camera_delay_s``), and can be dropped (``drop_camera_frames``) or preceded
  by a stale re-delivery of an earlier frame (``stale_camera``).
* Every call that needs the server raises ``RuntimeError('time-out of XXXXms while waiting for the
  simulator, make sure the simulator is ready and connected to HOST:PORT')`` when the server is dead
  (``kill()``), not listening on the client's address, or (for ``tick``) hanging (``hang_ticks``).
* Actors have ``attributes['role_name']``, ``destroy()``, a parent for attached sensors; spawning on an
  occupied spot fails; sensors ``listen``/``stop``/``is_listening()``.
* ``apply_control`` and ``set_transform`` take effect on the next tick; ``get_control`` returns the control
  applied in the last tick. Vehicles move with the embedded simulator's bicycle model.
* A Traffic Manager per port (a second one on a port held by another process fails with CARLA's bind error)
  that drives autopiloted vehicles along ``set_path`` points.
* A small synthetic map (``StandinMap``): a two-lane road, a junction with a right turn and two straight
  connections, and roads beyond; ``get_topology``, ``get_waypoint``, ``Waypoint.next`` etc.

Value types (Location, Rotation, Transform, Vector3D, VehicleControl, WeatherParameters, WorldSettings) are
the real ``carla`` ones. ``persist_path`` makes the server write its state as JSON after every change, so a
test can read what a killed process left behind.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import json
import math
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import carla
import numpy as np

from sim.dynamics import VehicleParams, VehicleState, step_vehicle
from sim.types import Control

SETTINGS_FIELDS = ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                   "max_substep_delta_time", "max_substeps", "max_culling_distance", "deterministic_ragdolls")
CLIENT_VERSION = carla.Client("127.0.0.1", 2000).get_client_version()  # constructing does not connect
BIND_ERROR = ("trying to create rpc server for traffic manager; but the system failed to create because of "
              "bind error.")


def copy_settings(s: Any) -> Any:
    out = carla.WorldSettings()
    for name in SETTINGS_FIELDS:
        setattr(out, name, getattr(s, name))
    return out


def settings_dict(s: Any) -> dict:
    return {name: getattr(s, name) for name in SETTINGS_FIELDS}


# -- the map -------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Lane:
    """A lane of one lane section: a densely sampled centre line in its driving direction."""

    road_id: int
    lane_id: int
    xy: np.ndarray
    is_junction: bool = False
    section_id: int = 0
    successors: list[Lane] = field(default_factory=list)
    left: Lane | None = None
    right: Lane | None = None

    def __post_init__(self) -> None:
        self.s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(self.xy, axis=0).T))])
        self.length = float(self.s[-1])

    def at(self, s: float) -> tuple[float, float, float]:
        s = min(max(s, 0.0), self.length)
        i = int(np.clip(np.searchsorted(self.s, s) - 1, 0, len(self.s) - 2))
        t = (s - self.s[i]) / max(self.s[i + 1] - self.s[i], 1e-12)
        p = self.xy[i] + t * (self.xy[i + 1] - self.xy[i])
        d = self.xy[i + 1] - self.xy[i]
        return float(p[0]), float(p[1]), math.degrees(math.atan2(d[1], d[0]))

    def nearest(self, x: float, y: float) -> tuple[float, float]:
        """(distance, s) of the lane point nearest (x, y)."""
        d2 = (self.xy[:, 0] - x) ** 2 + (self.xy[:, 1] - y) ** 2
        i = int(np.argmin(d2))
        return math.sqrt(float(d2[i])), float(self.s[i])


def straight(x0: float, y0: float, x1: float, y1: float, step: float = 0.1) -> np.ndarray:
    n = max(2, int(math.hypot(x1 - x0, y1 - y0) / step) + 1)
    return np.stack([np.linspace(x0, x1, n), np.linspace(y0, y1, n)], 1)


def arc(cx: float, cy: float, radius: float, a0_deg: float, a1_deg: float, step: float = 0.1) -> np.ndarray:
    n = max(2, int(abs(math.radians(a1_deg - a0_deg)) * radius / step) + 1)
    a = np.radians(np.linspace(a0_deg, a1_deg, n))
    return np.stack([cx + radius * np.cos(a), cy + radius * np.sin(a)], 1)


class Waypoint:
    """``carla.Waypoint`` on a stand-in lane at distance ``s`` along its driving direction."""

    def __init__(self, lane: Lane, s: float) -> None:
        self.lane, self.s = lane, min(max(s, 0.0), lane.length)
        x, y, yaw = lane.at(self.s)
        self.transform = carla.Transform(carla.Location(x=x, y=y, z=0.0), carla.Rotation(yaw=yaw))
        self.road_id, self.section_id, self.lane_id = lane.road_id, lane.section_id, lane.lane_id
        self.is_junction = lane.is_junction
        self.id = hash((lane.road_id, lane.section_id, lane.lane_id, round(self.s, 3)))
        self.lane_width = 3.5
        self.lane_type = carla.LaneType.Driving
        self.lane_change = carla.LaneChange.NONE if lane.is_junction else carla.LaneChange.Both

    def next(self, distance: float) -> list[Waypoint]:
        if distance <= 0:
            raise RuntimeError("distance must be positive")
        if self.s + distance <= self.lane.length + 1e-9:
            return [Waypoint(self.lane, self.s + distance)]
        rest = self.s + distance - self.lane.length
        out: list[Waypoint] = []
        for succ in self.lane.successors:
            out.extend(Waypoint(succ, 0.0).next(rest) if rest > succ.length else [Waypoint(succ, rest)])
        return out

    def _side(self, lane: Lane | None) -> Waypoint | None:
        if lane is None:
            return None
        _, s = lane.nearest(self.transform.location.x, self.transform.location.y)
        return Waypoint(lane, s)

    def get_left_lane(self) -> Waypoint | None:
        return self._side(self.lane.left)

    def get_right_lane(self) -> Waypoint | None:
        return self._side(self.lane.right)

    def __repr__(self) -> str:
        loc = self.transform.location
        return f"Waypoint(road={self.road_id}, lane={self.lane_id}, x={loc.x:.1f}, y={loc.y:.1f})"


class StandinMap:
    """Roads (y points RIGHT, as in CARLA; lane -1 drives +x at y=0, lane -2 at y=3.5 on its right)::

        road 1 (lanes -1, -2, +1)   x 0..100      junction roads 10 (right turn R=20), 11, 12 (straight)
        road 2 (lane -1)            (120,20)->(120,120) heading +y (the turn's exit)
        road 3 (lanes -1, -2)       x 130..230
    """

    def __init__(self, name: str = "Carla/Maps/Standin", spawn_points: list[Any] | None = None) -> None:
        self.name = name
        r1a = Lane(1, -1, straight(0, 0, 100, 0))
        r1b = Lane(1, -2, straight(0, 3.5, 100, 3.5))
        r1o = Lane(1, 1, straight(100, -3.5, 0, -3.5))
        turn = Lane(10, -1, arc(100, 20, 20, -90, 0), is_junction=True)
        through = Lane(11, -1, straight(100, 0, 130, 0), is_junction=True)
        through_b = Lane(12, -1, straight(100, 3.5, 130, 3.5), is_junction=True)
        r2 = Lane(2, -1, straight(120, 20, 120, 120))
        r3a = Lane(3, -1, straight(130, 0, 230, 0))
        r3b = Lane(3, -2, straight(130, 3.5, 230, 3.5))
        r1a.successors, r1b.successors = [turn, through], [through_b]
        turn.successors, through.successors, through_b.successors = [r2], [r3a], [r3b]
        r1a.right, r1a.left, r1b.left, r1o.left = r1b, r1o, r1a, r1a
        r3a.right, r3b.left = r3b, r3a
        self.lanes = [r1a, r1b, r1o, turn, through, through_b, r2, r3a, r3b]
        self._spawn_points = spawn_points or [
            carla.Transform(carla.Location(x=x, y=y, z=0.3), carla.Rotation(yaw=yaw))
            for x, y, yaw in ((5, 0, 0), (120, 110, 90), (220, 0, 0), (5, 3.5, 0), (220, 3.5, 0), (60, 0, 0))]

    def get_spawn_points(self) -> list[Any]:
        return list(self._spawn_points)

    def get_topology(self) -> list[tuple[Waypoint, Waypoint]]:
        return [(Waypoint(lane, 0.0), Waypoint(lane, lane.length)) for lane in self.lanes]

    def get_waypoint(self, location: Any, project_to_road: bool = True, lane_type: Any = None) -> Waypoint | None:
        (d, s), lane = min(((lane.nearest(location.x, location.y), lane) for lane in self.lanes),
                           key=lambda t: t[0][0])
        if not project_to_road and d > 1.75:
            return None
        return Waypoint(lane, s)

    def lane_key_at(self, x: float, y: float) -> tuple[int, int, bool]:
        wp = self.get_waypoint(carla.Location(x=x, y=y))
        return wp.road_id, wp.lane_id, wp.is_junction


# -- the server ----------------------------------------------------------------------------------------------
class Dispatcher:
    """CARLA's worker thread: runs callbacks at their due times, in order, never on the caller's thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self.threads: set[int] = set()
        self._thread = threading.Thread(target=self._run, name="carla-standin-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Any, arg: Any, delay_s: float = 0.0) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), fn, arg))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                _, _, fn, arg = heapq.heappop(self._heap)
            self.threads.add(threading.get_ident())
            fn(arg)


@dataclass
class Data:
    """Sensor data as CARLA hands it to callbacks: ``frame`` plus type-specific fields."""

    frame: int
    timestamp: float = 0.0
    raw_data: bytes = b""
    width: int = 0
    height: int = 0
    fov: float = 90.0
    other_actor: Any = None
    normal_impulse: Any = None
    crossed_lane_markings: list = field(default_factory=list)


@dataclass
class ActorSnapshot:
    transform: Any
    velocity: Any

    def get_transform(self) -> Any:
        return self.transform

    def get_velocity(self) -> Any:
        return self.velocity


class Timestamp:
    def __init__(self, frame: int, elapsed: float, delta: float) -> None:
        self.frame, self.elapsed_seconds, self.delta_seconds = frame, elapsed, delta


class WorldSnapshot:
    def __init__(self, frame: int, elapsed: float, delta: float, actors: dict[int, ActorSnapshot]) -> None:
        self.frame, self.timestamp, self._actors = frame, Timestamp(frame, elapsed, delta), actors

    def find(self, actor_id: int) -> ActorSnapshot | None:
        return self._actors.get(actor_id)


class Blueprint:
    def __init__(self, type_id: str, attributes: dict[str, str]) -> None:
        self.id, self.attributes = type_id, dict(attributes)

    def has_attribute(self, name: str) -> bool:
        return name in self.attributes

    def set_attribute(self, name: str, value: str) -> None:
        if name not in self.attributes:
            raise IndexError(f"blueprint {self.id!r} has no attribute {name!r}")
        self.attributes[name] = str(value)


BLUEPRINTS = {
    "vehicle.tesla.model3": {"role_name": "autopilot"},
    "vehicle.audi.tt": {"role_name": "autopilot"},
    "sensor.camera.rgb": {"role_name": "front", "image_size_x": "800", "image_size_y": "600", "fov": "90",
                          "sensor_tick": "0.0"},
    "sensor.other.collision": {"role_name": "front"},
    "sensor.other.lane_invasion": {"role_name": "front", "sensor_tick": "0.0"},
}


class BlueprintLibrary(list):
    def find(self, type_id: str) -> Blueprint:
        if type_id not in BLUEPRINTS:
            raise IndexError(f"blueprint '{type_id}' not found")
        return Blueprint(type_id, BLUEPRINTS[type_id])

    def filter(self, pattern: str) -> list[Blueprint]:
        return [Blueprint(k, v) for k, v in BLUEPRINTS.items() if fnmatch.fnmatch(k, pattern)]


class ActorList(list):
    def filter(self, pattern: str) -> list:
        return [a for a in self if fnmatch.fnmatch(a.type_id, pattern)]


class Actor:
    def __init__(self, server: StandinServer, actor_id: int, type_id: str, attributes: dict[str, str],
                 transform: Any, parent: Actor | None = None) -> None:
        self._server, self.id, self.type_id = server, actor_id, type_id
        self.attributes, self.parent, self.alive = dict(attributes), parent, True
        self.relative = transform if parent is not None else None
        loc, rot = transform.location, transform.rotation
        self.state = VehicleState(loc.x, loc.y, math.radians(rot.yaw))
        self.z = loc.z

    @property
    def is_alive(self) -> bool:
        return self.alive

    @property
    def role_name(self) -> str:
        return self.attributes.get("role_name", "")

    def destroy(self) -> bool:
        self._server.rpc()
        return self._server.destroy(self)

    def get_transform(self) -> Any:
        self._server.rpc()
        return self._server.transform_of(self)

    def get_velocity(self) -> Any:
        self._server.rpc()
        return self._server.velocity_of(self)

    def set_transform(self, transform: Any) -> None:
        self._server.rpc()
        self._server.pending_transforms[self.id] = transform

    def set_target_velocity(self, velocity: Any) -> None:
        self._server.rpc()
        self._server.pending_speeds[self.id] = math.sqrt(velocity.x ** 2 + velocity.y ** 2 + velocity.z ** 2)

    def set_target_angular_velocity(self, velocity: Any) -> None:
        self._server.rpc()


class Vehicle(Actor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_control = carla.VehicleControl()
        self.applied_control = carla.VehicleControl()
        self.autopilot_port: int | None = None
        self.crossed_marking = False

    def apply_control(self, control: Any) -> None:
        self._server.rpc()
        self.pending_control = control

    def get_control(self) -> Any:  # client-side: the control applied in the last tick
        return self.applied_control

    def set_autopilot(self, enabled: bool = True, port: int = 8000) -> None:
        self._server.rpc()
        if enabled and port not in self._server.traffic_managers:
            raise RuntimeError(f"no Traffic Manager on port {port}")
        self.autopilot_port = port if enabled else None
        self._server.record("autopilot", self.id, enabled, port)


class Sensor(Actor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.callback: Any = None

    def listen(self, callback: Any) -> None:
        self.callback = callback
        self._server.record("listen", self.id, self.role_name)

    def stop(self) -> None:  # client-side: unsubscribes this client's stream
        self.callback = None
        self._server.record("stop", self.id, self.role_name)

    def is_listening(self) -> bool:
        return self.callback is not None


class TrafficManager:
    """A TM-server in this client process: client-side calls, drives its vehicles along their paths."""

    def __init__(self, server: StandinServer, port: int) -> None:
        self.server, self.port = server, port
        self.paths: dict[int, list[tuple[float, float]]] = {}
        self.seed: int | None = None

    def get_port(self) -> int:
        return self.port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self.server.tm_sync[self.port] = bool(mode_switch)
        self.server.record("tm_sync", self.port, bool(mode_switch))

    def set_random_device_seed(self, value: int) -> None:
        self.seed = value

    def ignore_lights_percentage(self, actor: Any, perc: float) -> None:
        pass

    def auto_lane_change(self, actor: Any, enable: bool) -> None:
        pass

    def set_path(self, actor: Any, path: list[Any]) -> None:
        self.paths[actor.id] = [(p.x, p.y) for p in path]

    def control_for(self, vehicle: Vehicle) -> Any:
        """Pure pursuit to the first path point more than 6 m ahead, 6 m/s target speed."""
        st = vehicle.state
        path = self.paths.get(vehicle.id, [])
        while path and math.hypot(path[0][0] - st.x_m, path[0][1] - st.y_m) < 6.0 and len(path) > 1:
            path.pop(0)
        if not path:
            return carla.VehicleControl(brake=1.0)
        tx, ty = path[0]
        alpha = math.atan2(ty - st.y_m, tx - st.x_m) - st.yaw_rad
        alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
        wheel = math.atan2(2 * 2.875 * math.sin(alpha), max(math.hypot(tx - st.x_m, ty - st.y_m), 1.0))
        steer = float(np.clip(wheel / math.radians(70.0), -1, 1))
        return carla.VehicleControl(throttle=0.5 if st.speed_mps < 6.0 else 0.0, steer=steer)


class StandinServer:
    """One CARLA server at ``host:port`` with a stand-in map; :meth:`module` is the ``carla`` to inject."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2000, version: str = "0.9.16",
                 map_name: str = "Carla/Maps/Standin", spawn_points: list[Any] | None = None,
                 persist_path: str | Path | None = None, first_frame: int = 4000) -> None:
        self.host, self.port, self.version = host, port, version
        self.map = StandinMap(map_name, spawn_points)
        self.persist_path = Path(persist_path) if persist_path else None
        self.frame, self.elapsed_s = first_frame, 0.0
        self.settings = carla.WorldSettings()
        self.settings.fixed_delta_seconds = None
        self.weather = carla.WeatherParameters()
        self.actors: dict[int, Actor] = {}
        self._ids = itertools.count(100)
        self.traffic_managers: dict[int, TrafficManager] = {}
        self.tm_sync: dict[int, bool] = {}
        self.ports_held_elsewhere: set[int] = set()
        self.on_tick_callbacks: dict[int, Any] = {}
        self._tick_ids = itertools.count(1)
        self.pending_transforms: dict[int, Any] = {}
        self.pending_speeds: dict[int, float] = {}
        self.events: list[list] = []
        self.dispatcher = Dispatcher()
        # faults
        self.dead = False
        self.hang_ticks = False
        self.camera_delay_s = 0.0
        self.drop_camera_frames: set[int] = set()
        self.stale_camera = False
        self.scheduled_collisions: dict[int, str] = {}
        self.on_apply_settings: Any = None
        self.ticked_elsewhere = False  # another live client ticks this server: its frame moves by itself
        # observations of the client's behaviour
        self.ticks = 0
        self.ticks_while_async = 0
        self.late_deliveries = 0
        self.spawn_attempts: list[tuple[float, float, bool]] = []
        self.world = World(self)
        self.persist()

    # -- plumbing --------------------------------------------------------------------------------------
    def module(self) -> types.SimpleNamespace:
        """A ``carla`` module whose ``Client`` talks to this server; value types are the real ones."""
        server = self

        class Client(StandinClient):
            def __init__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> None:
                super().__init__(server, host, port)

        names = ("Location", "Rotation", "Transform", "Vector3D", "VehicleControl", "WeatherParameters",
                 "WorldSettings", "LaneChange", "LaneType", "LaneMarkingType", "command")
        return types.SimpleNamespace(Client=Client, **{n: getattr(carla, n) for n in names})

    def timeout_error(self, timeout_s: float) -> RuntimeError:
        return RuntimeError(f"time-out of {round(timeout_s * 1000)}ms while waiting for the simulator, make sure "
                            f"the simulator is ready and connected to {self.host}:{self.port}")

    def rpc(self, timeout_s: float = 5.0) -> None:
        if self.dead:
            raise self.timeout_error(timeout_s)

    def kill(self) -> None:
        """The server process dies: every later call that needs it times out."""
        self.dead = True
        self.record("killed")

    def record(self, *event: Any) -> None:
        self.events.append(list(event))
        self.persist()

    def state(self) -> dict:
        return {"settings": settings_dict(self.settings), "tm_sync": {str(k): v for k, v in self.tm_sync.items()},
                "actors": [{"id": a.id, "type_id": a.type_id, "role_name": a.role_name,
                            "listening": isinstance(a, Sensor) and a.is_listening()} for a in self.actors.values()],
                "events": self.events, "frame": self.frame, "ticks": self.ticks,
                "ticks_while_async": self.ticks_while_async, "dead": self.dead}

    def persist(self) -> None:
        if self.persist_path is not None:
            tmp = self.persist_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state()))
            tmp.replace(self.persist_path)

    # -- actors ----------------------------------------------------------------------------------------
    def add_actor(self, type_id: str, transform: Any, role_name: str = "", parent: Actor | None = None) -> Actor:
        """Put an actor in the world directly (e.g. one a crashed client left behind)."""
        cls = Vehicle if type_id.startswith("vehicle.") else Sensor if type_id.startswith("sensor.") else Actor
        attributes = dict(BLUEPRINTS.get(type_id, {}))
        attributes["role_name"] = role_name or attributes.get("role_name", "")
        actor = cls(self, next(self._ids), type_id, attributes, transform, parent)
        self.actors[actor.id] = actor
        self.record("spawn", actor.id, type_id, actor.role_name)
        return actor

    def destroy(self, actor: Actor) -> bool:
        if actor.id not in self.actors:
            return False
        del self.actors[actor.id]
        actor.alive = False
        self.record("destroy", actor.id, actor.role_name, isinstance(actor, Sensor) and actor.is_listening())
        return True

    def occupied(self, location: Any) -> bool:
        return any(isinstance(a, Vehicle) and math.hypot(a.state.x_m - location.x, a.state.y_m - location.y) < 3.0
                   for a in self.actors.values())

    def transform_of(self, actor: Actor) -> Any:
        if actor.parent is not None:
            base = self.transform_of(actor.parent)
            return carla.Transform(base.location, base.rotation)
        st = actor.state
        return carla.Transform(carla.Location(x=st.x_m, y=st.y_m, z=actor.z),
                               carla.Rotation(yaw=math.degrees(st.yaw_rad)))

    def velocity_of(self, actor: Actor) -> Any:
        st = actor.state
        return carla.Vector3D(st.speed_mps * math.cos(st.yaw_rad), st.speed_mps * math.sin(st.yaw_rad), 0.0)

    # -- simulation ------------------------------------------------------------------------------------
    def tick(self, timeout_s: float) -> int:
        self.rpc(timeout_s)
        if self.hang_ticks:
            raise self.timeout_error(timeout_s)
        if not self.settings.synchronous_mode:
            self.ticks_while_async += 1
        dt = self.settings.fixed_delta_seconds or 0.05
        self.frame += 1
        self.ticks += 1
        self.elapsed_s += dt
        for actor in list(self.actors.values()):
            if isinstance(actor, Vehicle):
                self._move(actor, dt)
        self._deliver()
        return self.frame

    def _move(self, v: Vehicle, dt: float) -> None:
        if v.id in self.pending_transforms:
            t = self.pending_transforms.pop(v.id)
            v.state = VehicleState(t.location.x, t.location.y, math.radians(t.rotation.yaw))
            v.z = t.location.z
        if v.id in self.pending_speeds:
            v.state.speed_mps = self.pending_speeds.pop(v.id)
        before = self.map.lane_key_at(v.state.x_m, v.state.y_m)
        tm = self.traffic_managers.get(v.autopilot_port) if v.autopilot_port is not None else None
        c = tm.control_for(v) if tm is not None else v.pending_control
        v.applied_control = carla.VehicleControl(throttle=c.throttle, steer=c.steer, brake=c.brake,
                                                 hand_brake=c.hand_brake)
        control = Control(float(np.clip(c.steer, -1, 1)), float(np.clip(c.throttle, 0, 1)),
                          1.0 if c.hand_brake else float(np.clip(c.brake, 0, 1)))
        v.state = step_vehicle(v.state, control, VehicleParams(), dt)
        after = self.map.lane_key_at(v.state.x_m, v.state.y_m)
        v.crossed_marking = before[0] == after[0] and before[1] != after[1] and not (before[2] or after[2])

    def _deliver(self) -> None:
        frame, tick_returned = self.frame, threading.Event()
        snapshot = WorldSnapshot(frame, self.elapsed_s, self.settings.fixed_delta_seconds or 0.05,
                                 {a.id: ActorSnapshot(self.transform_of(a), self.velocity_of(a))
                                  for a in self.actors.values()})
        for callback in list(self.on_tick_callbacks.values()):
            self.dispatcher.submit(callback, snapshot)
        for sensor in [a for a in self.actors.values() if isinstance(a, Sensor) and a.callback is not None]:
            callback, data = sensor.callback, None
            if sensor.type_id == "sensor.camera.rgb":
                if self.stale_camera and frame - 1 > 0:
                    self.dispatcher.submit(callback, self.image(sensor, frame - 1))
                if frame in self.drop_camera_frames:
                    continue
                data = self.image(sensor, frame)
                if self.camera_delay_s > 0:
                    self.dispatcher.submit(self._late(callback, tick_returned), data, self.camera_delay_s)
                    continue
            elif sensor.type_id == "sensor.other.collision" and frame in self.scheduled_collisions:
                other = types.SimpleNamespace(type_id=self.scheduled_collisions[frame], id=0)
                data = Data(frame, normal_impulse=carla.Vector3D(300.0, 400.0, 0.0), other_actor=other)
            elif sensor.type_id == "sensor.other.lane_invasion" and getattr(sensor.parent, "crossed_marking", False):
                data = Data(frame, crossed_lane_markings=[types.SimpleNamespace(type=carla.LaneMarkingType.Broken)])
            if data is not None:
                self.dispatcher.submit(callback, data)
        tick_returned.set()

    def _late(self, callback: Any, tick_returned: threading.Event) -> Any:
        def deliver(data: Data) -> None:
            if tick_returned.is_set():
                self.late_deliveries += 1
            callback(data)
        return deliver

    def image(self, sensor: Sensor, frame: int) -> Data:
        """A BGRA image that encodes its frame: B = frame % 256, G = frame // 256 % 256, R = 7, A = 255."""
        w, h = int(sensor.attributes["image_size_x"]), int(sensor.attributes["image_size_y"])
        bgra = np.empty((h, w, 4), np.uint8)
        bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = frame % 256, frame // 256 % 256, 7, 255
        bgra[0, 0, 2] = 200  # one red pixel at the top left, to check orientation
        return Data(frame, raw_data=bgra.tobytes(), width=w, height=h, fov=float(sensor.attributes["fov"]))


class World:
    def __init__(self, server: StandinServer) -> None:
        self._s = server
        self.id = 1

    def get_map(self) -> StandinMap:
        self._s.rpc()
        return self._s.map

    def get_settings(self) -> Any:
        self._s.rpc()
        return copy_settings(self._s.settings)

    def apply_settings(self, settings: Any) -> int:
        self._s.rpc()
        if self._s.on_apply_settings is not None:
            self._s.on_apply_settings(settings)
        self._s.settings = copy_settings(settings)
        self._s.record("apply_settings", settings.synchronous_mode, settings.fixed_delta_seconds)
        return self._s.frame

    def get_actors(self, actor_ids: list[int] | None = None) -> ActorList:
        self._s.rpc()
        return ActorList(a for a in self._s.actors.values() if actor_ids is None or a.id in actor_ids)

    def get_blueprint_library(self) -> BlueprintLibrary:
        self._s.rpc()
        return BlueprintLibrary()

    def try_spawn_actor(self, blueprint: Blueprint, transform: Any, attach_to: Actor | None = None) -> Actor | None:
        try:
            return self.spawn_actor(blueprint, transform, attach_to)
        except RuntimeError as e:
            if "Spawn failed" not in str(e):
                raise
            return None

    def spawn_actor(self, blueprint: Blueprint, transform: Any, attach_to: Actor | None = None) -> Actor:
        self._s.rpc()
        loc = transform.location
        if attach_to is None and blueprint.id.startswith("vehicle."):
            free = not self._s.occupied(loc)
            self._s.spawn_attempts.append((loc.x, loc.y, free))
            if not free:
                raise RuntimeError("Spawn failed because of collision at spawn position")
        actor = self._s.add_actor(blueprint.id, transform, blueprint.attributes.get("role_name", ""), attach_to)
        actor.attributes.update(blueprint.attributes)
        return actor

    def on_tick(self, callback: Any) -> int:
        self._s.rpc()
        callback_id = next(self._s._tick_ids)
        self._s.on_tick_callbacks[callback_id] = callback
        return callback_id

    def remove_on_tick(self, callback_id: int) -> None:
        self._s.on_tick_callbacks.pop(callback_id, None)

    def tick(self, seconds: float = 10.0) -> int:
        return self._s.tick(seconds)

    def get_snapshot(self) -> WorldSnapshot:
        """The latest state the client holds (CARLA answers it from the episode stream, no RPC); on a server
        another client ticks, each look finds a later frame."""
        s = self._s
        if s.ticked_elsewhere:
            s.frame += 1
        return WorldSnapshot(s.frame, s.elapsed_s, s.settings.fixed_delta_seconds or 0.05, {})

    def wait_for_tick(self, seconds: float = 10.0) -> Any:
        raise AssertionError("wait_for_tick deadlocks in synchronous mode: a backend must never call it")

    def set_weather(self, weather: Any) -> None:
        self._s.rpc()
        self._s.weather = weather

    def get_weather(self) -> Any:
        self._s.rpc()
        return self._s.weather


class StandinClient:
    """``carla.Client``: constructing it does not connect; calls reach the server only at its address."""

    def __init__(self, server: StandinServer, host: str = "127.0.0.1", port: int = 2000) -> None:
        self._server, self.host, self.port, self.timeout_s = server, host, port, 5.0

    def _rpc(self) -> StandinServer:
        if self._server.dead or (self.host, self.port) != (self._server.host, self._server.port):
            raise RuntimeError(f"time-out of {round(self.timeout_s * 1000)}ms while waiting for the simulator, make "
                               f"sure the simulator is ready and connected to {self.host}:{self.port}")
        return self._server

    def set_timeout(self, seconds: float) -> None:
        self.timeout_s = seconds

    def get_client_version(self) -> str:
        return CLIENT_VERSION

    def get_server_version(self) -> str:
        return self._rpc().version

    def get_world(self) -> World:
        return self._rpc().world

    def load_world(self, map_name: str, reset_settings: bool = True) -> World:
        server = self._rpc()
        for actor in list(server.actors.values()):
            server.destroy(actor)
        server.map = StandinMap(f"Carla/Maps/{map_name}", server.map.get_spawn_points())
        if reset_settings:
            server.settings = carla.WorldSettings()
            server.settings.fixed_delta_seconds = None
        server.record("load_world", map_name)
        return server.world

    def get_trafficmanager(self, client_connection: int = 8000) -> TrafficManager:
        server = self._rpc()
        if client_connection in server.ports_held_elsewhere:
            raise RuntimeError(BIND_ERROR)
        if client_connection not in server.traffic_managers:
            server.traffic_managers[client_connection] = TrafficManager(server, client_connection)
        return server.traffic_managers[client_connection]
