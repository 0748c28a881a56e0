"""Value conversions between our shared types and ``carla`` types, in both directions.

Every function takes the ``carla`` module (or a stand-in with the same names) as an argument instead of
importing it, so the rest of the package never imports ``carla`` and tests can pass the real module.

No sign flips anywhere: our world frame, yaw and steering are CARLA's (x forward, y right, z up, yaw in
degrees positive to the right, steer +1 full right). Images are CARLA's BGRA bytes turned into an owned
HxWx3 RGB uint8 copy (``np.frombuffer`` alone is a read-only view into a buffer CARLA reuses).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from sim.types import CameraConfig, CollisionEvent, Control, LaneInvasionEvent, Pose
from sim.weather import Weather

# CARLA-only weather fields that our Weather does not model; taken from CARLA's preset of the same name
# (or ClearNoon) so the sky looks like CARLA's own preset.
_CARLA_ONLY_WEATHER_FIELDS = ("fog_falloff", "scattering_intensity", "mie_scattering_scale",
                              "rayleigh_scattering_scale", "dust_storm")
# our field -> carla.WeatherParameters field, one to one
WEATHER_FIELDS = {
    "cloudiness": "cloudiness",
    "precipitation": "precipitation",
    "precipitation_deposits": "precipitation_deposits",
    "wind_intensity": "wind_intensity",
    "sun_azimuth_angle_deg": "sun_azimuth_angle",
    "sun_altitude_angle_deg": "sun_altitude_angle",
    "fog_density": "fog_density",
    "fog_distance_m": "fog_distance",
    "wetness": "wetness",
}
LEADERBOARD_SENSOR_RADIUS_M = 3.0  # the Leaderboard rejects sensors farther than this from the vehicle origin


def camera_transform(carla: ModuleType, camera: CameraConfig) -> Any:
    """The camera mount as the ``carla.Transform`` relative to the vehicle (metres, degrees)."""
    return carla.Transform(carla.Location(x=camera.x_m, y=camera.y_m, z=camera.z_m),
                           carla.Rotation(pitch=camera.pitch_deg, yaw=camera.yaw_deg, roll=camera.roll_deg))


def camera_attributes(camera: CameraConfig) -> dict[str, str]:
    """Blueprint attributes of ``sensor.camera.rgb`` for ``camera``; ``sensor_tick`` 0 = data every tick,
    which the frame-matched queues need (a non-zero tick leaves frames without data)."""
    return {"image_size_x": str(camera.width), "image_size_y": str(camera.height),
            "fov": f"{camera.fov_deg:g}", "sensor_tick": "0.0"}


def mount_radius_m(camera: CameraConfig) -> float:
    """Distance of the camera from the vehicle origin (m), checked against the Leaderboard's 3 m rule."""
    return math.sqrt(camera.x_m ** 2 + camera.y_m ** 2 + camera.z_m ** 2)


def pose_to_transform(carla: ModuleType, pose: Pose) -> Any:
    """A :class:`Pose` as a ``carla.Transform`` (same frame, same units)."""
    return carla.Transform(carla.Location(x=pose.x_m, y=pose.y_m, z=pose.z_m),
                           carla.Rotation(pitch=pose.pitch_deg, yaw=pose.yaw_deg, roll=pose.roll_deg))


def transform_to_pose(transform: Any) -> Pose:
    """A ``carla.Transform`` (world frame) as a :class:`Pose`."""
    loc, rot = transform.location, transform.rotation
    return Pose(float(loc.x), float(loc.y), float(loc.z), float(rot.yaw), float(rot.pitch), float(rot.roll))


def to_vehicle_control(carla: ModuleType, control: Control, hand_brake: bool = False) -> Any:
    """Our :class:`Control` as a ``carla.VehicleControl`` (identical ranges and sign, automatic gears)."""
    return carla.VehicleControl(throttle=control.throttle, steer=control.steer, brake=control.brake,
                                hand_brake=hand_brake, reverse=False, manual_gear_shift=False)


def from_vehicle_control(vehicle_control: Any) -> Control:
    """A ``carla.VehicleControl`` (e.g. the autopilot's) as our :class:`Control`, clipped to our ranges
    (CARLA stores floats, which can fall a rounding error outside them)."""
    return Control(steer=float(np.clip(vehicle_control.steer, -1.0, 1.0)),
                   throttle=float(np.clip(vehicle_control.throttle, 0.0, 1.0)),
                   brake=float(np.clip(vehicle_control.brake, 0.0, 1.0)))


def bgra_to_rgb(raw: Any, width: int, height: int) -> np.ndarray:
    """CARLA's flat BGRA bytes (``carla.Image.raw_data``) as an owned, writable HxWx3 RGB uint8 array."""
    flat = np.frombuffer(raw, dtype=np.uint8)
    if flat.size != width * height * 4:
        raise ValueError(f"camera buffer has {flat.size} bytes, expected {width}x{height}x4 = {width * height * 4}")
    return np.ascontiguousarray(flat.reshape(height, width, 4)[:, :, 2::-1])


def image_to_rgb(image: Any) -> np.ndarray:
    """A ``carla.Image`` as an owned HxWx3 RGB uint8 array."""
    return bgra_to_rgb(image.raw_data, int(image.width), int(image.height))


def to_weather_parameters(carla: ModuleType, weather: Weather) -> Any:
    """Our :class:`Weather` as ``carla.WeatherParameters``: our nine fields one to one, CARLA's extra
    fields from its preset of the same name (ClearNoon when it has none)."""
    base = getattr(carla.WeatherParameters, weather.name, None)
    if base is None or not hasattr(base, "fog_falloff"):
        base = carla.WeatherParameters.ClearNoon
    values = {carla_name: float(getattr(weather, ours)) for ours, carla_name in WEATHER_FIELDS.items()}
    values.update({name: float(getattr(base, name)) for name in _CARLA_ONLY_WEATHER_FIELDS})
    return carla.WeatherParameters(**values)


def speed_mps(velocity: Any) -> float:
    """The norm of a ``carla.Vector3D`` velocity (m/s)."""
    return float(math.sqrt(velocity.x ** 2 + velocity.y ** 2 + velocity.z ** 2))


def collision_event(event: Any, frame: int) -> CollisionEvent:
    """A ``carla.CollisionEvent`` as ours: what was hit (its type id) and the impulse magnitude (N*s)."""
    other = getattr(event.other_actor, "type_id", None) or "unknown"
    impulse = event.normal_impulse
    return CollisionEvent(frame, str(other), speed_mps(impulse))


def lane_invasion_event(event: Any, frame: int) -> LaneInvasionEvent:
    """A ``carla.LaneInvasionEvent`` as ours: the kinds of the crossed markings as CARLA names them."""
    kinds = []
    for marking in event.crossed_lane_markings:
        kind = marking.type
        kinds.append(str(getattr(kind, "name", kind)))
    return LaneInvasionEvent(frame, tuple(kinds))
