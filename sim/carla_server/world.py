"""The served world: actors, settings, weather and time, built from the embedded simulator's parts.

Vehicles move with :func:`sim.dynamics.step_vehicle` (the embedded car, so a served episode matches an
embedded one step for step), hit the scene's buildings through :class:`sim.sensors.CollisionSensor` and
each other by footprint overlap (on contact the body stays where it was, stopped, as in the embedded
simulator), and cameras render with :class:`sim.camera.CameraRenderer`. CARLA's semantics on top:

* a vehicle keeps its last control until a new one arrives (``sticky_control``, CARLA's default; the client
  only sends a control when it changes), and ``hand_brake`` brakes fully; there is no reverse gear;
* one :meth:`World.tick` advances every vehicle by the fixed step (``fixed_delta_seconds``, else 0.05 s; steps
  over 0.1 s are split), sends collision events and the episode state listing every actor, then renders
  the cameras that someone listens to (every ``sensor_tick`` seconds) and streams their BGRA images; a
  client's synchronous tick is answered between the two halves (:meth:`World.advance`, then
  :meth:`World.capture`), so its images come after its ``world.tick()`` returns, as from CARLA;
* actors attached to a parent move with it (their transform is the mount relative to the parent).

Every public method takes :attr:`World.lock`; the RPC threads and the asynchronous ticker share one world.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from sim.camera import CameraRenderer, carla_rotation
from sim.carla_server import blueprints as bp
from sim.carla_server.encoding import (
    ActorDescription,
    ActorState,
    EpisodeSettings,
    Transform,
    VehicleControl,
    WeatherParameters,
    WireProtocol,
    encode_actor,
    encode_bounding_box,
    pack_actor_state,
    pack_collision_body,
    pack_episode_header,
    pack_image_header,
    pack_sensor_header,
    pack_token,
)
from sim.carla_server.maps import ServedMap, load_map
from sim.dynamics import VehicleParams, VehicleState, step_vehicle
from sim.errors import UsageError
from sim.scene import convex_overlap, penetration_depth
from sim.sensors import VEHICLE_MASS_KG, footprint
from sim.types import CAMERA_MIN_Z_M, DEFAULT_DT_S, CameraConfig, Control
from sim.weather import WEATHERS, Weather, get_weather

log = logging.getLogger(__name__)

EPISODE_STREAM = 1
MAX_STEP_S = 0.1  # the dynamics' largest step; longer ticks are split
REBUILDS_TO_WARN = 4  # a camera's renderer built this many times (its mount on a car, or a free camera's height,
# pitch or roll, keeps changing) is worth a warning: each build costs tens of ms (seconds at 4096x4096)
LOW_CAMERA_RENDER_Z_M = 0.06  # where a camera at or below CAMERA_MIN_Z_M renders from (the renderer needs height)
MAX_FIXED_DELTA_S = 10.0  # the longest fixed step accepted (100 dynamics steps per tick)
SPEED_LIMIT_KMH = 30.0
SEMANTIC_CAR, SEMANTIC_BUILDING = 14, 3
STATIC_BUILDING = ActorDescription(0, "static.building")
SPAWN_COLLISION = "Spawn failed because of collision at spawn position"



class Streams(Protocol):
    """What the world needs from the stream server (:class:`sim.carla_server.streaming.StreamServer`)."""

    def publish(self, stream_id: int, *parts: bytes | memoryview) -> int: ...

    def subscribers(self, stream_id: int) -> int: ...

    def drop_stream(self, stream_id: int) -> None: ...


# -- weather ----------------------------------------------------------------------------------------------

_WEATHER_PAIRS = (("cloudiness", "cloudiness"), ("precipitation", "precipitation"),
                  ("precipitation_deposits", "precipitation_deposits"), ("wind_intensity", "wind_intensity"),
                  ("sun_azimuth_angle_deg", "sun_azimuth_angle"), ("sun_altitude_angle_deg", "sun_altitude_angle"),
                  ("fog_density", "fog_density"), ("fog_distance_m", "fog_distance"), ("wetness", "wetness"))


def weather_to_params(weather: Weather, base: WeatherParameters | None = None) -> WeatherParameters:
    """Our :class:`Weather` as ``WeatherParameters`` (CARLA-only fields from ``base`` or CARLA's defaults)."""
    return replace(base or WeatherParameters(), **{theirs: float(getattr(weather, ours)) for ours, theirs in
                                                   _WEATHER_PAIRS})


def params_to_weather(params: WeatherParameters) -> Weather:
    """``WeatherParameters`` as our :class:`Weather`, named after the preset it equals (else ``custom``)."""
    values = {ours: float(getattr(params, theirs)) for ours, theirs in _WEATHER_PAIRS}
    for preset in WEATHERS.values():
        if Weather(preset.name, **values) == preset:
            return preset
    return Weather("custom", **values)


# -- actors -----------------------------------------------------------------------------------------------


@dataclass
class Actor:
    """Any actor. ``transform`` is its world pose, or its mount relative to ``parent`` when attached."""

    id: int
    description: ActorDescription
    parent: int = 0
    transform: Transform = field(default_factory=Transform)
    stream_id: int = 0
    extent: tuple[float, float, float] = (0.0, 0.0, 0.0)
    tags: bytes = b""

    @property
    def type_id(self) -> str:
        return self.description.id


@dataclass
class Vehicle(Actor):
    """A car with the embedded dynamics; ``control`` is the one in effect (kept until changed if sticky)."""

    state: VehicleState = field(default_factory=lambda: VehicleState(0.0, 0.0, 0.0))
    control: VehicleControl = field(default_factory=VehicleControl)
    sticky: bool = True
    physics: bool = True
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    acceleration: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_rate_dps: float = 0.0


@dataclass
class Camera(Actor):
    """An RGB camera; its renderer is built on first use for the current mount and map."""

    config: CameraConfig = field(default_factory=CameraConfig)
    sensor_tick_s: float = 0.0
    next_capture_s: float = 0.0
    renderer: CameraRenderer | None = None
    renderer_key: tuple | None = None
    warned_low: bool = False  # said once that it renders from above the ground
    builds: int = 0  # renderers built for it (a new one per map, size, mount on a car, or free height/pitch/roll)


class Shot(NamedTuple):
    """One camera image due: what to render from where (pose in metres and radians), and its stamps."""

    camera: Camera
    config: CameraConfig
    x_m: float
    y_m: float
    yaw_rad: float
    frame: int
    elapsed_s: float
    transform: Transform


@dataclass
class CollisionDetector(Actor):
    """A collision sensor: it reports its parent's contacts."""


def _render_height(cam: Camera, z_m: float) -> float:
    """``z_m``, or :data:`LOW_CAMERA_RENDER_Z_M` for a camera at or below the ground (``CAMERA_MIN_Z_M``), which the
    embedded renderer cannot show (CARLA would render from there); the server log says so once per camera."""
    if z_m > CAMERA_MIN_Z_M:
        return z_m
    if not cam.warned_low:
        cam.warned_low = True
        log.warning("camera %d is at z=%.3f m, at or below the ground: it renders from z=%.3f m", cam.id, z_m,
                    LOW_CAMERA_RENDER_Z_M)
    return LOW_CAMERA_RENDER_Z_M


def to_control(c: VehicleControl) -> Control:
    """CARLA's control as the embedded one: clipped to range, hand brake = full brake, no reverse gear."""
    throttle = 0.0 if c.reverse else min(max(c.throttle, 0.0), 1.0)
    brake = 1.0 if c.hand_brake else min(max(c.brake, 0.0), 1.0)
    return Control(min(max(c.steer, -1.0), 1.0), throttle, brake)


def wrap_deg(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def compose(parent: Transform, child: Transform) -> Transform:
    """The world transform of ``child`` given relative to ``parent`` (CARLA's rotation order)."""
    if parent.pitch == 0.0 and parent.roll == 0.0:  # a car on flat ground: a yaw only, in plain arithmetic
        c, s = math.cos(math.radians(parent.yaw)), math.sin(math.radians(parent.yaw))
        return Transform(parent.x + c * child.x - s * child.y, parent.y + s * child.x + c * child.y,
                         parent.z + child.z, child.pitch, wrap_deg(parent.yaw + child.yaw), child.roll)
    rot = carla_rotation(parent.pitch, parent.yaw, parent.roll)
    x, y, z = rot @ np.array([child.x, child.y, child.z]) + np.array([parent.x, parent.y, parent.z])
    return Transform(float(x), float(y), float(z), *_angles(rot @ carla_rotation(child.pitch, child.yaw, child.roll)))


def relative_to(parent: Transform, world: Transform) -> Transform:
    """The transform relative to ``parent`` whose world transform is ``world`` (the inverse of :func:`compose`)."""
    rot = carla_rotation(parent.pitch, parent.yaw, parent.roll)
    x, y, z = rot.T @ (np.array([world.x, world.y, world.z]) - np.array([parent.x, parent.y, parent.z]))
    return Transform(float(x), float(y), float(z), *_angles(rot.T @ carla_rotation(world.pitch, world.yaw, world.roll)))


def _angles(m: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) degrees of a rotation matrix made by :func:`carla_rotation` (its inverse)."""
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, m[2, 0]))))
    return pitch, math.degrees(math.atan2(m[1, 0], m[0, 0])), math.degrees(math.atan2(-m[2, 1], m[2, 2]))


# -- the world --------------------------------------------------------------------------------------------


class World:
    """The state behind the RPC calls; it publishes to ``streams`` (whose port goes into sensor tokens).
    Cameras nobody subscribes to are not rendered."""

    def __init__(self, map_name: str, protocol: WireProtocol, streams: Streams, stream_port: int,
                 vehicle: VehicleParams | None = None) -> None:
        self.protocol = protocol
        self.streams = streams
        self.stream_port = stream_port
        self.params = vehicle or VehicleParams()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified when the settings change
        self.frame, self.elapsed_s, self.episode_id = 0, 0.0, 0
        self.settings = EpisodeSettings()
        self.weather = weather_to_params(get_weather("ClearNoon"))
        self.actors: dict[int, Actor] = {}
        self._ids = itertools.count(1)
        self._streams = itertools.count(EPISODE_STREAM + 1)
        self.last_state: bytes = b""
        self._owed: list[Shot] = []  # the shots of the last advance() while not yet captured
        self.spectator = Actor(next(self._ids), ActorDescription(0, bp.SPECTATOR_ID))
        self.actors[self.spectator.id] = self.spectator
        self.map: ServedMap = load_map(map_name)
        self._start_episode()

    # -- episode ------------------------------------------------------------------------------------------
    @property
    def delta_s(self) -> float:
        fixed = self.settings.fixed_delta_seconds
        return float(fixed) if fixed else DEFAULT_DT_S

    def _start_episode(self) -> None:
        self.episode_id += 1
        x, y, _, _, yaw, _ = self.map.spawn_points[0]
        rad = math.radians(yaw)
        self.spectator.transform = Transform(x - 12 * math.cos(rad), y - 12 * math.sin(rad), 8.0, -20.0, yaw, 0.0)
        self.tick()

    def load(self, name: str, reset_settings: bool = True) -> None:
        """Switch to map ``name`` (empty: reload this one, as ``client.reload_world()`` asks): every actor but
        the spectator is destroyed, a new episode starts."""
        with self.lock:
            new_map = load_map(name or self.map.name)
            for actor_id in [a for a in self.actors if a != self.spectator.id]:
                self._remove(actor_id)
            self.map = new_map
            self.weather = weather_to_params(get_weather("ClearNoon"))
            if reset_settings:
                self.settings = EpisodeSettings()
                self.changed.notify_all()
            self._start_episode()
        log.info("loaded map %s (episode %d)", name, self.episode_id)

    def apply_settings(self, settings: EpisodeSettings) -> int:
        """New world settings; returns the frame they apply from (already published)."""
        delta = settings.fixed_delta_seconds
        if delta is not None and not (delta <= MAX_FIXED_DELTA_S):  # NaN fails this too
            raise UsageError(f"fixed_delta_seconds={delta} is not a step caril serve can take: use a finite value "
                             f"up to {MAX_FIXED_DELTA_S:g} s (0.05 is CARLA's usual), or None for a variable step")
        if delta is not None and delta <= 0:
            settings = replace(settings, fixed_delta_seconds=None)
        with self.lock:
            self.settings = settings
            self.changed.notify_all()
            return self.frame

    def set_weather(self, params: WeatherParameters) -> None:
        with self.lock:
            self.weather = params
            weather = params_to_weather(params)
            for cam in self._all(Camera):
                if cam.renderer is not None:
                    cam.renderer.set_weather(weather)

    # -- actors -------------------------------------------------------------------------------------------
    def _all(self, kind: type) -> list:
        return [a for a in self.actors.values() if isinstance(a, kind)]

    def get(self, actor_id: int, kind: type = Actor) -> Actor:
        actor = self.actors.get(actor_id)
        if actor is None:
            raise UsageError(f"actor {actor_id} is not an actor of this world (destroyed, or from another map)")
        if not isinstance(actor, kind):
            raise UsageError(f"actor {actor_id} is a {actor.type_id}, not a {kind.__name__.lower()}")
        return actor

    def spawn(self, description: ActorDescription, transform: Transform, parent_id: int = 0) -> Actor:
        """Spawn from a blueprint description; sensors attach to ``parent_id`` (0: none)."""
        bp.check_blueprint(description)
        with self.lock:
            if parent_id:
                self.get(parent_id)
            actor_id = next(self._ids)
            if description.id == bp.VEHICLE_ID:
                actor: Actor = self._new_vehicle(actor_id, description, transform, parent_id)
            elif description.id == bp.CAMERA_ID:
                actor = self._new_camera(actor_id, description, transform, parent_id)
            elif description.id == bp.COLLISION_ID:
                actor = CollisionDetector(actor_id, description, parent_id, transform, next(self._streams))
            else:  # the lane-invasion sensor runs in the client: no stream
                actor = Actor(actor_id, description, parent_id, transform)
            self.actors[actor_id] = actor
            return actor

    def _new_vehicle(self, actor_id: int, description: ActorDescription, transform: Transform,
                     parent_id: int) -> Vehicle:
        if parent_id:
            raise UsageError("caril serve cannot attach a vehicle to another actor; spawn it free")
        state = VehicleState(transform.x, transform.y, math.radians(transform.yaw))
        body = footprint(state.x_m, state.y_m, state.yaw_rad, self.params)
        if self.map.collision.hits(body) or any(convex_overlap(body, self._body(v)) for v in self._all(Vehicle)):
            raise UsageError(SPAWN_COLLISION)
        return Vehicle(actor_id, description, 0, transform, extent=bp.vehicle_extent(self.params),
                       tags=bytes([SEMANTIC_CAR]), state=state, sticky=bp.sticky_control(description))

    def _new_camera(self, actor_id: int, description: ActorDescription, transform: Transform,
                    parent_id: int) -> Camera:
        t = transform
        config = bp.camera_config(description, (t.x, t.y, max(t.z, LOW_CAMERA_RENDER_Z_M), t.pitch, t.yaw, t.roll))
        # (a valid height for now: _mount and _view set the one it renders from)
        camera = Camera(actor_id, description, parent_id, t, next(self._streams), config=config,
                        sensor_tick_s=bp.sensor_tick_s(description), next_capture_s=self.elapsed_s)
        self._mount(camera, t)
        return camera

    def _mount(self, cam: Camera, relative: Transform) -> None:
        """Mount ``cam`` at ``relative`` to its parent: on a vehicle that is the config it renders with (at
        least :data:`LOW_CAMERA_RENDER_Z_M` up); other cameras render from their world pose (:meth:`_view`)."""
        if isinstance(self.actors.get(cam.parent), Vehicle):
            t = relative
            cam.config = replace(cam.config, x_m=t.x, y_m=t.y, z_m=_render_height(cam, t.z), pitch_deg=t.pitch,
                                 yaw_deg=t.yaw, roll_deg=t.roll)

    def has_stream(self, stream_id: int) -> bool:
        with self.lock:
            return stream_id == EPISODE_STREAM or any(a.stream_id == stream_id for a in self.actors.values())

    def destroy(self, actor_id: int) -> bool:
        with self.lock:
            if actor_id == self.spectator.id:
                raise UsageError("the spectator cannot be destroyed")
            self.get(actor_id)
            self._remove(actor_id)
            return True

    def _remove(self, actor_id: int) -> None:
        """Forget an actor and close its stream; its children stay where they are, detached."""
        actor = self.actors[actor_id]
        for child in [a for a in self.actors.values() if a.parent == actor_id]:
            child.transform, child.parent = self.world_transform(child), 0
        del self.actors[actor_id]
        if actor.stream_id:
            self.streams.drop_stream(actor.stream_id)

    def apply_control(self, actor_id: int, control: VehicleControl) -> None:
        with self.lock:
            self.get(actor_id, Vehicle).control = control

    def set_transform(self, actor_id: int, transform: Transform) -> None:
        """Teleport to the world ``transform``, as CARLA does: a vehicle keeps its speed (set it with
        :meth:`set_target_velocity`); an attached actor stays attached at the offset that puts it there (an
        attached camera then renders from its new mount)."""
        with self.lock:
            actor = self.get(actor_id)
            parent = self.actors.get(actor.parent) if actor.parent else None
            relative = relative_to(self.world_transform(parent), transform) if parent is not None else transform
            if isinstance(actor, Camera):
                self._mount(actor, relative)
            if isinstance(actor, Vehicle):
                s = actor.state
                actor.state = VehicleState(transform.x, transform.y, math.radians(transform.yaw), s.speed_mps,
                                           s.wheel_angle_rad)
            actor.transform = relative

    def set_location(self, actor_id: int, location: tuple[float, float, float]) -> None:
        with self.lock:
            t = self.world_transform(self.get(actor_id))
            self.set_transform(actor_id, Transform(*location, t.pitch, t.yaw, t.roll))

    def set_target_velocity(self, actor_id: int, velocity: tuple[float, float, float]) -> None:
        """A vehicle's speed becomes the velocity's component along its heading (never negative)."""
        with self.lock:
            vehicle = self.get(actor_id, Vehicle)
            s = vehicle.state
            speed = velocity[0] * math.cos(s.yaw_rad) + velocity[1] * math.sin(s.yaw_rad)
            vehicle.state = replace(s, speed_mps=min(max(speed, 0.0), self.params.max_speed_mps))

    def set_simulate_physics(self, actor_id: int, enabled: bool) -> None:
        """Without physics a vehicle only moves by teleport (CARLA's ``set_simulate_physics(False)``); other
        actors have no physics here, and CARLA takes the call for any actor, so for them it does nothing."""
        with self.lock:
            vehicle = self.get(actor_id)
            if not isinstance(vehicle, Vehicle):
                return
            vehicle.physics = bool(enabled)
            if not enabled:
                vehicle.state = replace(vehicle.state, speed_mps=0.0)

    def wheel_angle_deg(self, actor_id: int) -> float:
        with self.lock:
            return math.degrees(self.get(actor_id, Vehicle).state.wheel_angle_rad)

    # -- poses and messages -------------------------------------------------------------------------------
    def world_transform(self, actor: Actor) -> Transform:
        if isinstance(actor, Vehicle):
            s = actor.state
            return Transform(s.x_m, s.y_m, 0.0, 0.0, wrap_deg(math.degrees(s.yaw_rad)), 0.0)
        parent = self.actors.get(actor.parent) if actor.parent else None
        return compose(self.world_transform(parent), actor.transform) if parent else actor.transform

    def _body(self, vehicle: Vehicle) -> np.ndarray:
        s = vehicle.state
        return footprint(s.x_m, s.y_m, s.yaw_rad, self.params)

    def actor_msg(self, actor: Actor) -> list:
        """The actor as ``rpc::Actor`` (sensors with a server-side stream carry their token)."""
        token = pack_token(actor.stream_id, self.stream_port) if actor.stream_id else b""
        center = (0.0, 0.0, actor.extent[2])
        return encode_actor(actor.id, actor.parent, actor.description, encode_bounding_box(center, actor.extent),
                            actor.tags, token)

    def bounding_box(self, actor_id: int) -> list:
        """The actor's box; an empty one for an actor that is gone (the client's lane-invasion sensor asks
        from a callback thread, where an error would abort the client's process)."""
        with self.lock:
            actor = self.actors.get(actor_id)
            extent = actor.extent if actor is not None else (0.0, 0.0, 0.0)
            return encode_bounding_box((0.0, 0.0, extent[2]), extent)

    # -- time ---------------------------------------------------------------------------------------------
    def tick(self) -> int:
        """Advance one step and publish all of it (:meth:`advance`, then :meth:`capture`); returns the frame."""
        with self.lock:
            frame, shots = self.advance()
            self.capture(shots)
            return frame

    def advance(self) -> tuple[int, list[Shot]]:
        """Advance one step and publish its collision events and episode state; returns the new frame and the
        camera shots due, for :meth:`capture`. A synchronous tick is answered between the two, so the client
        goes on while the images render, as with CARLA, where sensor data comes after the tick's answer.
        Images still owed by an earlier step (another thread advanced in between) go out first, so every
        stream stays in frame order."""
        with self.lock:
            self._capture_owed()
            dt = self.delta_s
            self.frame += 1
            self.elapsed_s += dt
            contacts = self._step_vehicles(dt)
            shots = self._shots()
            self._publish_collisions(contacts)
            self._publish_state(dt)
            self._owed = shots
            return self.frame, shots

    def capture(self, shots: list[Shot]) -> None:
        """Render the shots :meth:`advance` returned and stream them as BGRA images, unless they went out
        already (a later step sent them first); shots of cameras destroyed since are dropped."""
        with self.lock:
            if shots is self._owed:
                self._capture_owed()

    def _capture_owed(self) -> None:
        shots, self._owed = self._owed, []
        self._capture([s for s in shots if self.actors.get(s.camera.id) is s.camera])

    def _step_vehicles(self, dt: float) -> list[tuple[Vehicle, Actor | None, float]]:
        """Move every vehicle; returns contacts as (vehicle, other vehicle or None for a building, impulse)."""
        vehicles = self._all(Vehicle)
        before = {v.id: v.state for v in vehicles}
        for v in vehicles:
            if v.physics:
                steps = max(1, math.ceil(dt / MAX_STEP_S - 1e-9))
                for _ in range(steps):
                    v.state = step_vehicle(v.state, to_control(v.control), self.params, dt / steps)
        contacts = []
        bodies = {v.id: self._body(v) for v in vehicles}
        for v in vehicles:
            others: list[Actor | None] = [None] if self.map.collision.hits(bodies[v.id]) else []
            others += [w for w in vehicles if w is not v and convex_overlap(bodies[v.id], bodies[w.id])]
            impulse = VEHICLE_MASS_KG * max(v.state.speed_mps, 0.1)
            contacts += [(v, other, impulse) for other in others]
            if others and v.physics and not self._backs_out(v, bodies[v.id], before, vehicles):
                # the body does not pass through: it stays where it was, stopped
                old = before[v.id]
                v.state = VehicleState(old.x_m, old.y_m, old.yaw_rad, 0.0, v.state.wheel_angle_rad)
        for v in vehicles:
            self._kinematics(v, before[v.id], dt)
            if not v.sticky:
                v.control = VehicleControl()
        return contacts

    def _backs_out(self, v: Vehicle, new_body: np.ndarray, before: dict[int, VehicleState],
                   vehicles: list[Vehicle]) -> bool:
        """Whether ``v`` (its body now ``new_body``), already in contact before this step (teleported into an
        obstacle), got no deeper into anything it touches now and touches nothing new: it may drive out,
        reporting contacts until it is free, but never further in. Other vehicles count at their poses before
        the step."""
        old = before[v.id]
        old_body = footprint(old.x_m, old.y_m, old.yaw_rad, self.params)
        boxes = self.map.collision.boxes
        obstacles = [boxes[i] for i in self.map.collision.hits(new_body)]
        obstacles += [footprint(before[w.id].x_m, before[w.id].y_m, before[w.id].yaw_rad, self.params)
                      for w in vehicles if w is not v]
        touching = [b for b in obstacles if convex_overlap(new_body, b)]
        return bool(touching) and all(
            convex_overlap(old_body, b) and penetration_depth(new_body, b) <= penetration_depth(old_body, b)
            for b in touching)

    def _kinematics(self, v: Vehicle, old: VehicleState, dt: float) -> None:
        s = v.state
        velocity = (s.speed_mps * math.cos(s.yaw_rad), s.speed_mps * math.sin(s.yaw_rad), 0.0)
        v.acceleration = tuple((a - b) / dt for a, b in zip(velocity, v.velocity, strict=True))
        v.velocity = velocity
        v.yaw_rate_dps = math.degrees(s.yaw_rad - old.yaw_rad) / dt

    def _view(self, cam: Camera) -> tuple[CameraConfig, float, float, float]:
        """The camera config and the pose (x, y, yaw rad) it is rendered from: a vehicle's pose with the
        mount, or for any other camera its world pose split into a ground point and a height."""
        parent = self.actors.get(cam.parent) if cam.parent else None
        if isinstance(parent, Vehicle):
            s = parent.state
            return cam.config, s.x_m, s.y_m, s.yaw_rad
        t = self.world_transform(cam)
        config = replace(cam.config, x_m=0.0, y_m=0.0, z_m=_render_height(cam, t.z), pitch_deg=t.pitch, yaw_deg=0.0,
                         roll_deg=t.roll)
        return config, t.x, t.y, math.radians(t.yaw)

    def _shots(self) -> list[Shot]:
        """The images due this frame: cameras someone listens to whose ``sensor_tick`` has come."""
        shots = []
        for cam in self._all(Camera):
            if not self.streams.subscribers(cam.stream_id) or self.elapsed_s + 1e-9 < cam.next_capture_s:
                continue
            cam.next_capture_s = self.elapsed_s + cam.sensor_tick_s
            # _view must not raise: the step has moved the cars already and its state is not out yet
            shots.append(Shot(cam, *self._view(cam), self.frame, self.elapsed_s, self.world_transform(cam)))
        return shots

    def render(self, shot: Shot) -> np.ndarray:
        """The shot's HxWx3 RGB image, exactly as the embedded renderer draws it."""
        cam = shot.camera
        key = (self.map.name, shot.config)
        if cam.renderer_key != key:
            t0 = time.perf_counter()
            cam.renderer = CameraRenderer(self.map.scene, shot.config, params_to_weather(self.weather), seed=0)
            cam.renderer_key = key
            cam.builds += 1
            if cam.builds == REBUILDS_TO_WARN:
                log.warning("camera %d changed its mount, height, pitch, roll or size %d times: each change "
                            "rebuilds its renderer (%.0f ms at %dx%d), and nothing else is served meanwhile", cam.id,
                            cam.builds - 1, 1e3 * (time.perf_counter() - t0), shot.config.width, shot.config.height)
        return cam.renderer.render(shot.x_m, shot.y_m, shot.yaw_rad, shot.frame)

    def _capture(self, shots: list[Shot]) -> None:
        """Render the shots and stream them as BGRA images."""
        sensor_type = self.protocol.sensor_type["camera_rgb"]
        for shot in shots:
            config = shot.camera.config
            bgra = cv2.cvtColor(self.render(shot), cv2.COLOR_RGB2BGRA)
            header = pack_sensor_header(sensor_type, shot.frame, shot.elapsed_s, shot.transform)
            header += pack_image_header(config.width, config.height, config.fov_deg)
            self.streams.publish(shot.camera.stream_id, header, bgra)

    def _publish_collisions(self, contacts: list[tuple[Vehicle, Actor | None, float]]) -> None:
        sensor_type = self.protocol.sensor_type["collision"]
        for vehicle, other, impulse in contacts:
            sensors = [a for a in self._all(CollisionDetector) if a.parent == vehicle.id]
            if not sensors:
                continue
            yaw = vehicle.state.yaw_rad
            push = (-impulse * math.cos(yaw), -impulse * math.sin(yaw), 0.0)
            other_msg = self.actor_msg(other) if other is not None else self.actor_msg(
                Actor(0, STATIC_BUILDING, tags=bytes([SEMANTIC_BUILDING])))
            body = pack_collision_body(self.actor_msg(vehicle), other_msg, push)
            for sensor in sensors:
                header = pack_sensor_header(sensor_type, self.frame, self.elapsed_s, self.world_transform(sensor))
                self.streams.publish(sensor.stream_id, header, body)

    def _actor_state(self, actor: Actor) -> ActorState:
        transform = self.world_transform(actor)
        if isinstance(actor, Vehicle):
            return ActorState(actor.id, transform, actor.velocity, (0.0, 0.0, actor.yaw_rate_dps), actor.acceleration,
                              actor.control, SPEED_LIMIT_KMH)
        return ActorState(actor.id, transform)

    def _publish_state(self, dt: float) -> None:
        header = pack_sensor_header(self.protocol.sensor_type["episode_state"], self.frame, self.elapsed_s,
                                    Transform())
        header += pack_episode_header(self.episode_id, time.time(), dt)
        records = b"".join(pack_actor_state(self._actor_state(a), self.protocol) for a in self.actors.values())
        self.last_state = header + records
        self.streams.publish(EPISODE_STREAM, self.last_state)

