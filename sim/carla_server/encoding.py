"""CARLA's wire formats, encoded and decoded without the ``carla`` package, and the per-version constants.

Written from ``../shared/reference/carla-wire-protocol.md`` and CARLA's public headers (``rpc/*.h``,
``MsgPackAdaptors.h``, ``sensor/s11n/*``, ``streaming/detail/Token.h``); no CARLA code is copied.

* RPC (rpclib msgpack-rpc): a request is ``[0, msgid, name, [metadata, *args]]`` where ``metadata`` is
  ``[asynchronous]``; the answer is ``[1, msgid, None, result]``. Blocking results are ``Response<T>``: a
  1-array holding a variant ``[1, value]`` (success) or ``[0, [message]]`` (error). ``Response<void>`` holds
  an optional: ``[False]`` is success, and since the client's optional decoder only looks at the array
  size, ``[0, [message]]`` is an error for both. So :func:`response_error` fits every call, known or not.
* Structs are positional msgpack arrays; enums are integers; byte vectors (tokens, semantic tags) are BIN.
  The client sends float32; :func:`f32` turns such a value back into the decimal the user typed (0.1, not
  0.10000000149011612), so that, e.g., a camera mounted at z=2.4 renders as at z=2.4.
* Streams: ``u32 length | payload``; every payload starts with the 48-byte sensor header (see
  :data:`SENSOR_HEADER`); the episode state adds a 36-byte header and 119-byte actor records; images add
  ``width | height | fov`` and BGRA pixels; collision events add a msgpack body.

Constants that are compiled into the client (attribute type codes, sensor type indices, record sizes,
struct field counts, command indices) live in :data:`PROTOCOLS`, keyed by client version. A client whose
structs do not have this version's field counts gets a :class:`ProtocolMismatch` naming the version to use.
"""

from __future__ import annotations

import math
import struct
from dataclasses import astuple, dataclass, field, fields
from typing import Any, NamedTuple

import msgpack
import numpy as np

from sim.errors import CarilError

# -- version constants ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WireProtocol:
    """What one client version expects: everything here is compiled into that client's binary.

    ``attribute_type``: ``carla.ActorAttributeType`` codes; ``sensor_type``: indices into the client's sensor
    registry (the first 8 bytes of every stream message); ``command_index``: variant indices of
    ``carla.command`` types in ``apply_batch``; the sizes are bytes; the ``*_fields`` are msgpack array
    lengths of structs the client sends or expects.
    """

    version: str
    attribute_type: dict[str, int]
    sensor_type: dict[str, int]
    command_index: dict[str, int]
    actor_state_size: int
    episode_header_size: int
    settings_fields: int
    vehicle_control_fields: int
    weather_fields: int
    spawn_command_fields: int

    @property
    def command_name(self) -> dict[int, str]:
        return {v: k for k, v in self.command_index.items()}


PROTOCOLS: dict[str, WireProtocol] = {
    "0.9.16": WireProtocol(
        version="0.9.16",
        attribute_type={"bool": 1, "int": 2, "float": 3, "string": 4, "rgbcolor": 5},
        sensor_type={"collision": 0, "depth": 1, "normals": 2, "dvs": 3, "gnss": 4, "imu": 5, "lane_invasion": 6,
                     "obstacle": 7, "optical_flow": 8, "radar": 9, "semantic_lidar": 10, "lidar": 11, "rss": 12,
                     "camera_rgb": 13, "semantic_segmentation": 14, "instance_segmentation": 15,
                     "cosmos_control": 16, "episode_state": 17},
        command_index={"SpawnActor": 0, "DestroyActor": 1, "ApplyVehicleControl": 2,
                       "ApplyVehicleAckermannControl": 3, "ApplyWalkerControl": 4, "ApplyVehiclePhysicsControl": 5,
                       "ApplyTransform": 6, "ApplyWalkerState": 7, "ApplyTargetVelocity": 8,
                       "ApplyTargetAngularVelocity": 9, "ApplyImpulse": 10, "ApplyForce": 11,
                       "ApplyAngularImpulse": 12, "ApplyTorque": 13, "SetSimulatePhysics": 14,
                       "SetEnableGravity": 15, "SetAutopilot": 16, "ShowDebugTelemetry": 17,
                       "SetVehicleLightState": 18},
        actor_state_size=119,
        episode_header_size=36,
        settings_fields=11,
        vehicle_control_fields=7,
        weather_fields=14,
        spawn_command_fields=6,
    ),
}
DEFAULT_CLIENT_VERSION = "0.9.16"


class ProtocolMismatch(CarilError):
    """The client speaks another version of CARLA's protocol than the server was started for."""


def protocol_for(client_version: str) -> WireProtocol:
    """The constants for ``client_version``; an unknown version raises an error listing the known ones."""
    try:
        return PROTOCOLS[client_version]
    except KeyError:
        known = ", ".join(PROTOCOLS)
        raise ProtocolMismatch(f"caril serve has no protocol table for carla client {client_version!r}; it speaks "
                               f"{known}: install one of those (pip install carla=={DEFAULT_CLIENT_VERSION})") from None


def mismatch(protocol: WireProtocol, what: str, got: int, expected: int) -> ProtocolMismatch:
    """The error for a struct of the wrong size, which means the client is another CARLA version."""
    return ProtocolMismatch(f"the client sent a {what} of {got} fields where carla {protocol.version} sends "
                            f"{expected}: it is another CARLA version. caril serve speaks the carla "
                            f"{protocol.version} protocol; install that client (pip install carla=={protocol.version})")


def f32(value: float) -> float:
    """The shortest decimal that the float32 ``value`` stands for (0.1 rather than 0.10000000149011612)."""
    return float(str(np.float32(value)))


def finite_f32(value: float, what: str) -> float:
    """:func:`f32` of a number the world will use; NaN, infinite or beyond float32 is the caller's error (a
    NaN control, pose or weather would otherwise poison every later tick for every client)."""
    with np.errstate(over="ignore"):
        out = f32(value)
    if not math.isfinite(out):
        raise CarilError(f"{what} is {value!r}, not a finite number")
    return out


# -- RPC framing ------------------------------------------------------------------------------------------

REQUEST, RESPONSE, NOTIFY = 0, 1, 2


class Request(NamedTuple):
    """A decoded msgpack-rpc request: ``asynchronous`` is CARLA's metadata flag (the client ignores the answer)."""

    msgid: int
    name: str
    asynchronous: bool
    args: list


def decode_request(message: Any) -> Request:
    """A request array ``[0, msgid, name, [[async], *args]]`` (CARLA prepends the metadata argument)."""
    if not isinstance(message, list) or len(message) != 4 or message[0] != REQUEST:
        raise ValueError(f"not a msgpack-rpc request: {message!r:.80}")
    _, msgid, name, params = message
    if not isinstance(params, list) or not isinstance(msgid, int):
        raise ValueError(f"not a msgpack-rpc request: {message!r:.80}")
    params = list(params)
    asynchronous = False
    if params and isinstance(params[0], list) and len(params[0]) == 1 and isinstance(params[0][0], bool):
        asynchronous = params.pop(0)[0]
    return Request(int(msgid), str(name), bool(asynchronous), params)


def encode_response(msgid: int, result: Any) -> bytes:
    """A msgpack-rpc response carrying ``result`` (already in its ``Response<T>`` form)."""
    return msgpack.packb([RESPONSE, msgid, None, result], use_bin_type=True)


def encode_rpc_error(msgid: int, message: str) -> bytes:
    """A msgpack-rpc level error (the client raises ``rpc::rpc_error during call in function NAME``)."""
    return msgpack.packb([RESPONSE, msgid, message, None], use_bin_type=True)


def response_ok(value: Any) -> list:
    """``Response<T>`` success: ``[[1, value]]``."""
    return [[1, value]]


RESPONSE_VOID_OK: list = [[False]]


def response_error(message: str) -> list:
    """An error for ``Response<T>`` and ``Response<void>`` alike; Python sees ``RuntimeError(message)``."""
    return [[0, [message]]]


def is_error(result: Any) -> bool:
    """Whether ``result`` is a :func:`response_error`."""
    return (isinstance(result, list) and len(result) == 1 and isinstance(result[0], list) and len(result[0]) == 2
            and result[0][0] == 0 and isinstance(result[0][1], list))


# -- geometry ---------------------------------------------------------------------------------------------


class Transform(NamedTuple):
    """``carla.Transform``: location in metres, rotation (pitch, yaw, roll) in degrees, CARLA's frame."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0

    def to_msg(self) -> list:
        return [[self.x, self.y, self.z], [self.pitch, self.yaw, self.roll]]

    @classmethod
    def from_msg(cls, msg: Any) -> Transform:
        (x, y, z), (pitch, yaw, roll) = msg
        return cls(*(finite_f32(v, f"a transform's {name}") for v, name in
                     zip((x, y, z, pitch, yaw, roll), ("x", "y", "z", "pitch", "yaw", "roll"), strict=True)))


def decode_vector(msg: Any) -> tuple[float, float, float]:
    """``[x, y, z]`` (a ``Location`` or ``Vector3D``)."""
    x, y, z = msg
    return finite_f32(x, "a vector's x"), finite_f32(y, "a vector's y"), finite_f32(z, "a vector's z")


def encode_bounding_box(center: tuple[float, float, float], extent: tuple[float, float, float]) -> list:
    """``BoundingBox``: ``[center, half-extent, rotation]`` (metres; no rotation)."""
    return [list(center), list(extent), [0.0, 0.0, 0.0]]


# -- settings, weather, control ---------------------------------------------------------------------------


@dataclass
class EpisodeSettings:
    """``carla.WorldSettings`` as the 0.9.16 protocol carries it (seconds, metres)."""

    synchronous_mode: bool = False
    no_rendering_mode: bool = False
    fixed_delta_seconds: float | None = None
    substepping: bool = True
    max_substep_delta_time: float = 0.01
    max_substeps: int = 10
    max_culling_distance: float = 0.0
    deterministic_ragdolls: bool = False
    tile_stream_distance: float = 3000.0
    actor_active_distance: float = 2000.0
    spectator_as_ego: bool = True

    def to_msg(self) -> list:
        values = list(astuple(self))
        delta = self.fixed_delta_seconds
        values[2] = [False] if delta is None else [True, float(delta)]
        return values

    @classmethod
    def from_msg(cls, msg: Any, protocol: WireProtocol) -> EpisodeSettings:
        if len(msg) != protocol.settings_fields:
            raise mismatch(protocol, "WorldSettings", len(msg), protocol.settings_fields)
        sync, no_render, delta, sub, sub_dt, sub_n, cull, ragdolls, tile, active, spectator = msg
        fixed = float(delta[1]) if len(delta) == 2 else None  # optional<double>: [True, value] or [False]
        return cls(bool(sync), bool(no_render), fixed, bool(sub), float(sub_dt), int(sub_n), f32(cull),
                   bool(ragdolls), f32(tile), f32(active), bool(spectator))


@dataclass
class WeatherParameters:
    """``carla.WeatherParameters``: amounts 0-100, angles in degrees, fog distance in metres."""

    cloudiness: float = 5.0
    precipitation: float = 0.0
    precipitation_deposits: float = 0.0
    wind_intensity: float = 10.0
    sun_azimuth_angle: float = -1.0
    sun_altitude_angle: float = 45.0
    fog_density: float = 2.0
    fog_distance: float = 0.75
    fog_falloff: float = 0.1
    wetness: float = 0.0
    scattering_intensity: float = 1.0
    mie_scattering_scale: float = 0.03
    rayleigh_scattering_scale: float = 0.0331
    dust_storm: float = 0.0

    def to_msg(self) -> list:
        return [float(v) for v in astuple(self)]

    @classmethod
    def from_msg(cls, msg: Any, protocol: WireProtocol) -> WeatherParameters:
        if len(msg) != protocol.weather_fields:
            raise mismatch(protocol, "WeatherParameters", len(msg), protocol.weather_fields)
        return cls(*(finite_f32(v, f"weather {f.name}") for v, f in zip(msg, fields(cls), strict=True)))


@dataclass
class VehicleControl:
    """``carla.VehicleControl``: throttle and brake [0, 1], steer [-1, 1] (+1 full right), gear number."""

    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False
    manual_gear_shift: bool = False
    gear: int = 0

    def to_msg(self) -> list:
        return list(astuple(self))

    @classmethod
    def from_msg(cls, msg: Any, protocol: WireProtocol) -> VehicleControl:
        if len(msg) != protocol.vehicle_control_fields:
            raise mismatch(protocol, "VehicleControl", len(msg), protocol.vehicle_control_fields)
        throttle, steer, brake, hand_brake, reverse, manual, gear = msg
        return cls(finite_f32(throttle, "control throttle"), finite_f32(steer, "control steer"),
                   finite_f32(brake, "control brake"), bool(hand_brake), bool(reverse), bool(manual), int(gear))


# -- blueprints and actors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeDef:
    """One blueprint attribute (``rpc::ActorAttribute``); ``kind`` is a key of ``WireProtocol.attribute_type``."""

    id: str
    kind: str
    value: str
    recommended: tuple[str, ...] = ()
    modifiable: bool = False
    restricted: bool = False

    def to_msg(self, protocol: WireProtocol) -> list:
        return [self.id, protocol.attribute_type[self.kind], self.value, list(self.recommended), self.modifiable,
                self.restricted]


@dataclass(frozen=True)
class ActorDefinition:
    """One blueprint (``rpc::ActorDefinition``): a uid, its id such as ``vehicle.tesla.model3``, its tags."""

    uid: int
    id: str
    tags: str
    attributes: tuple[AttributeDef, ...]

    def to_msg(self, protocol: WireProtocol) -> list:
        return [self.uid, self.id, self.tags, [a.to_msg(protocol) for a in self.attributes]]


@dataclass
class ActorDescription:
    """What the client asks to spawn (``rpc::ActorDescription``): attribute id -> (type code, value)."""

    uid: int
    id: str
    attributes: dict[str, tuple[int, str]] = field(default_factory=dict)

    def to_msg(self) -> list:
        return [self.uid, self.id, [[k, t, v] for k, (t, v) in self.attributes.items()]]

    @classmethod
    def from_msg(cls, msg: Any) -> ActorDescription:
        uid, type_id, attributes = msg
        return cls(int(uid), str(type_id), {str(a[0]): (int(a[1]), str(a[2])) for a in attributes})

    def value(self, key: str, default: str = "") -> str:
        return self.attributes[key][1] if key in self.attributes else default


def encode_actor(actor_id: int, parent_id: int, description: ActorDescription, bounding_box: list,
                 semantic_tags: bytes = b"", stream_token: bytes = b"") -> list:
    """``rpc::Actor``: the client picks the Python class from the description id and the token."""
    return [actor_id, parent_id, description.to_msg(), bounding_box, bytes(semantic_tags), bytes(stream_token)]


class Command(NamedTuple):
    """One ``carla.command`` of ``apply_batch``: its type name and positional body."""

    name: str
    body: list


def decode_command(msg: Any, protocol: WireProtocol) -> Command:
    """``[[variant_index, body]]``; unknown indices keep a ``#index`` name (answered as unsupported)."""
    (index, body), = msg
    return Command(protocol.command_name.get(int(index), f"#{index}"), list(body))


# -- binary stream layouts --------------------------------------------------------------------------------

TOKEN = struct.Struct("<IHBB16s")  # stream id | port | protocol (1 tcp) | address type (0 unset) | address
SENSOR_HEADER = struct.Struct("<QQd6f")  # sensor type | frame | timestamp s | x y z pitch yaw roll
EPISODE_HEADER = struct.Struct("<QdfiiiI")  # episode id | platform time s | delta s | map origin xyz | flags
ACTOR_HEAD = struct.Struct("<IB15f")  # id | state | transform (6) | velocity, angular velocity, acceleration
VEHICLE_DATA = struct.Struct("<3f???ifB?IB")  # control | speed limit km/h | light state, has, id | failure
IMAGE_HEADER = struct.Struct("<IIf")  # width | height | fov deg
STREAM_LENGTH = struct.Struct("<I")
ACTOR_ACTIVE = 1
TRAFFIC_LIGHT_GREEN = 2  # carla.TrafficLightState (Red, Yellow, Green, ...): a car at no light reads Green


def pack_token(stream_id: int, port: int) -> bytes:
    """A 24-byte stream token over TCP with an unset address (the client uses the host it connected to)."""
    return TOKEN.pack(stream_id, port, 1, 0, b"\0" * 16)


def unpack_token(data: bytes) -> tuple[int, int]:
    """(stream id, port) of a 24-byte token."""
    stream_id, port, _, _, _ = TOKEN.unpack(data)
    return stream_id, port


def encode_token(stream_id: int, port: int) -> list:
    """``streaming::Token`` as msgpack: ``[BIN(24)]``."""
    return [pack_token(stream_id, port)]


def pack_sensor_header(sensor_type: int, frame: int, timestamp_s: float, transform: Transform) -> bytes:
    return SENSOR_HEADER.pack(sensor_type, frame, timestamp_s, *transform)


def pack_episode_header(episode_id: int, platform_time_s: float, delta_s: float, flags: int = 0) -> bytes:
    """The episode-state header. A new map is signalled by a new ``episode_id``; ``flags`` bit 0
    (MapChange, meant for map layers) is left clear: it makes the 0.9.16 client call its light manager from
    the stream thread, which crashed it during ``load_world``."""
    return EPISODE_HEADER.pack(episode_id, platform_time_s, delta_s, 0, 0, 0, flags)


@dataclass(frozen=True)
class ActorState:
    """One actor's record in the episode state: pose, velocities (m/s, deg/s, m/s^2), vehicle data if any."""

    id: int
    transform: Transform
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    angular_velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    acceleration: tuple[float, float, float] = (0.0, 0.0, 0.0)
    control: VehicleControl | None = None
    speed_limit_kmh: float = 0.0


def pack_actor_state(state: ActorState, protocol: WireProtocol) -> bytes:
    """One ``ActorDynamicState`` record of ``protocol.actor_state_size`` bytes (the union zero-padded)."""
    head = ACTOR_HEAD.pack(state.id, ACTOR_ACTIVE, *state.transform, *state.velocity, *state.angular_velocity,
                           *state.acceleration)
    union = b""
    if state.control is not None:
        c = state.control
        union = VEHICLE_DATA.pack(c.throttle, c.steer, c.brake, c.hand_brake, c.reverse, c.manual_gear_shift,
                                  c.gear, state.speed_limit_kmh, TRAFFIC_LIGHT_GREEN, False, 0, 0)
    return head + union.ljust(protocol.actor_state_size - len(head), b"\0")


def pack_image_header(width: int, height: int, fov_deg: float) -> bytes:
    return IMAGE_HEADER.pack(width, height, fov_deg)


def pack_collision_body(self_actor: list, other_actor: list, impulse: tuple[float, float, float]) -> bytes:
    """The collision event after the sensor header: ``[self rpc::Actor, other rpc::Actor, normal impulse]``."""
    return msgpack.packb([self_actor, other_actor, list(impulse)], use_bin_type=True)
