"""The blueprint library ``caril serve`` offers, and reading spawn requests back into our configs.

Blueprints: our vehicle (``vehicle.tesla.model3``, the embedded dynamics' car), the RGB camera (any size and
fov; CARLA's photographic attributes are accepted and ignored: the embedded renderer has no exposure model),
the collision sensor and the (client-side) lane-invasion sensor. Attribute defaults are CARLA's.
"""

from __future__ import annotations

from sim.carla_server.encoding import ActorDefinition, ActorDescription, AttributeDef
from sim.dynamics import VehicleParams
from sim.errors import UsageError
from sim.types import CameraConfig

VEHICLE_ID = "vehicle.tesla.model3"
CAMERA_ID = "sensor.camera.rgb"
COLLISION_ID = "sensor.other.collision"
LANE_INVASION_ID = "sensor.other.lane_invasion"
SPECTATOR_ID = "spectator"
VEHICLE_HEIGHT_M = 1.49  # the Model 3's height; our dynamics are planar
MAX_SENSOR_TICK_S = 3600.0

_COLOURS = ("17,37,103", "255,255,255", "0,0,0", "94,94,94", "163,0,0", "130,130,130")


def _f(key: str, value: str) -> AttributeDef:
    return AttributeDef(key, "float", value, modifiable=True)


_CAMERA_EXTRAS = {  # CARLA's defaults for the photographic attributes we accept and ignore
    "bloom_intensity": "0.675", "blur_amount": "1.0", "blur_radius": "0.0", "calibration_constant": "16.0",
    "chromatic_aberration_intensity": "0.0", "chromatic_aberration_offset": "0.0", "exposure_compensation": "0.0",
    "exposure_max_bright": "12.0", "exposure_min_bright": "10.0", "exposure_speed_down": "1.0",
    "exposure_speed_up": "3.0", "focal_distance": "1000.0", "fstop": "1.4", "gamma": "2.2", "iso": "100.0",
    "lens_circle_falloff": "5.0", "lens_circle_multiplier": "0.0", "lens_flare_intensity": "0.1", "lens_k": "-1.0",
    "lens_kcube": "0.0", "lens_x_size": "0.08", "lens_y_size": "0.08", "min_fstop": "1.2",
    "motion_blur_intensity": "0.45", "motion_blur_max_distortion": "0.35",
    "motion_blur_min_object_screen_size": "0.1", "shoulder": "0.26", "shutter_speed": "200.0", "slope": "0.88",
    "temp": "6500.0", "tint": "0.0", "toe": "0.55", "white_clip": "0.04",
}


def actor_definitions() -> list[ActorDefinition]:
    """Every blueprint served, with CARLA's attribute names, kinds and defaults."""
    vehicle = (
        AttributeDef("base_type", "string", "car"),
        AttributeDef("color", "rgbcolor", _COLOURS[0], _COLOURS, modifiable=True),
        AttributeDef("generation", "int", "2"),
        AttributeDef("has_dynamic_doors", "bool", "false"),
        AttributeDef("has_lights", "bool", "true"),
        AttributeDef("number_of_wheels", "int", "4"),
        AttributeDef("object_type", "string", ""),
        AttributeDef("role_name", "string", "autopilot", ("autopilot", "scenario", "ego_vehicle"), modifiable=True),
        AttributeDef("special_type", "string", ""),
        AttributeDef("sticky_control", "bool", "true", modifiable=True),
        AttributeDef("terramechanics", "bool", "false", modifiable=True),
    )
    camera = (
        AttributeDef("enable_postprocess_effects", "bool", "true", modifiable=True),
        AttributeDef("exposure_mode", "string", "histogram", ("manual", "histogram"), modifiable=True),
        AttributeDef("fov", "float", "90.0", modifiable=True),
        AttributeDef("image_size_x", "int", "800", modifiable=True),
        AttributeDef("image_size_y", "int", "600", modifiable=True),
        AttributeDef("role_name", "string", "front", modifiable=True),
        AttributeDef("sensor_tick", "float", "0.0", modifiable=True),
        *(_f(k, v) for k, v in sorted(_CAMERA_EXTRAS.items())),
    )
    role = (AttributeDef("role_name", "string", "front", modifiable=True),)
    return [
        ActorDefinition(1, VEHICLE_ID, "vehicle,tesla,model3", vehicle),
        ActorDefinition(2, CAMERA_ID, "sensor,camera,rgb", camera),
        ActorDefinition(3, COLLISION_ID, "sensor,other,collision", role),
        ActorDefinition(4, LANE_INVASION_ID, "sensor,other,lane_invasion", role),
    ]


BLUEPRINT_IDS = tuple(d.id for d in actor_definitions())


def check_blueprint(description: ActorDescription) -> None:
    """Refuse to spawn what the library does not offer, naming what it does."""
    if description.id not in BLUEPRINT_IDS:
        raise UsageError(f"caril serve has no blueprint {description.id!r}; it offers {', '.join(BLUEPRINT_IDS)}")


def _number(description: ActorDescription, key: str, default: str, kind: type) -> float | int:
    text = description.value(key, default)
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise UsageError(f"{description.id} attribute {key}={text!r} is not a number") from None


def camera_config(description: ActorDescription, mount: tuple[float, ...]) -> CameraConfig:
    """The :class:`CameraConfig` of an RGB camera blueprint mounted at ``mount`` (x, y, z, pitch, yaw, roll
    relative to the parent, metres and degrees); CameraConfig's checks name a bad size, fov or height."""
    x, y, z, pitch, yaw, roll = mount
    return CameraConfig(width=int(_number(description, "image_size_x", "800", int)),
                        height=int(_number(description, "image_size_y", "600", int)),
                        fov_deg=float(_number(description, "fov", "90.0", float)),
                        x_m=x, y_m=y, z_m=z, pitch_deg=pitch, yaw_deg=yaw, roll_deg=roll)


def sensor_tick_s(description: ActorDescription) -> float:
    """Seconds between captures (0: every tick)."""
    tick = float(_number(description, "sensor_tick", "0.0", float))
    if not 0.0 <= tick <= MAX_SENSOR_TICK_S:
        raise UsageError(f"sensor_tick={tick} s must be in 0..{MAX_SENSOR_TICK_S:g} s (0: every tick)")
    return tick


def sticky_control(description: ActorDescription) -> bool:
    """Whether a vehicle keeps its last control (CARLA's default) or drops it after each tick."""
    return description.value("sticky_control", "true").strip().lower() != "false"


def vehicle_extent(params: VehicleParams) -> tuple[float, float, float]:
    """Half-extent (x, y, z) of the vehicle's bounding box, metres."""
    return params.length_m / 2, params.width_m / 2, VEHICLE_HEIGHT_M / 2
