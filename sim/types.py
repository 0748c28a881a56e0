"""The shared types of the simulator contract: controls, camera, poses, lane frame, events, observations.

Conventions follow CARLA so both backends speak the same language:

* World frame: x forward/east, y right/south, z up, metres (CARLA's left-handed frame). Yaw in degrees,
  positive turns from +x towards +y, i.e. clockwise seen from above, which is a right turn.
* Steering: +1 is full right, -1 full left, as ``carla.VehicleControl.steer``.
* Lateral offset: metres from the lane centre, positive to the right of the direction of travel.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import IntEnum

import numpy as np

from sim.errors import InvalidControlError, UsageError

DEFAULT_DT_S = 0.05  # CARLA's usual synchronous fixed step, 20 Hz
CAMERA_MIN_Z_M = 0.05  # a camera must be higher than this above the ground (the renderer's near plane needs room)
MIN_DT_S, MAX_DT_S = 0.001, 0.1  # the steps CARLA's physics substepping can take
MAX_SPAWN_NOISE_M = 5.0  # the largest std of the embedded simulator's lateral spawn offset


@dataclass(frozen=True)
class Control:
    """A vehicle command, as ``carla.VehicleControl``: steer [-1, 1] (+1 full right), throttle and brake [0, 1]."""

    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 0.0

    def __post_init__(self) -> None:
        for name, lo in (("steer", -1.0), ("throttle", 0.0), ("brake", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
                raise InvalidControlError(f"control {name}={value!r} is not a finite number")
            if not lo <= value <= 1.0:
                raise InvalidControlError(f"control {name}={value} is outside [{lo:g}, 1]")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_array(cls, action: np.ndarray | list[float]) -> Control:
        """Build from a ``[steer, throttle, brake]`` vector (the Gymnasium action layout)."""
        values = np.asarray(action, dtype=np.float64).reshape(-1)
        if values.shape != (3,):
            raise InvalidControlError(f"action must have 3 values [steer, throttle, brake], got shape {values.shape}")
        return cls(float(values[0]), float(values[1]), float(values[2]))

    def to_array(self) -> np.ndarray:
        """``[steer, throttle, brake]`` as float32."""
        return np.array([self.steer, self.throttle, self.brake], dtype=np.float32)


@dataclass(frozen=True)
class CameraConfig:
    """A forward RGB camera: image size in pixels, horizontal fov in degrees, mount relative to the vehicle.

    The mount is given as CARLA's ``carla.Transform`` for an attached sensor: x forward, y right, z up in
    metres from the vehicle origin (on the ground below the vehicle centre), pitch/yaw/roll in degrees.
    The defaults are the CARIL paper's camera.
    """

    width: int = 448
    height: int = 448
    fov_deg: float = 110.0
    x_m: float = 1.5
    y_m: float = 0.0
    z_m: float = 2.4
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0
    roll_deg: float = 0.0

    def __post_init__(self) -> None:
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise UsageError(f"camera size {self.width}x{self.height} is outside 8..4096 pixels per side")
        if not 1.0 <= self.fov_deg <= 170.0:
            raise UsageError(f"camera fov {self.fov_deg} deg is outside 1..170 degrees")
        if self.z_m <= CAMERA_MIN_Z_M:
            raise UsageError(f"camera height z={self.z_m} m must be above the ground (> {CAMERA_MIN_Z_M} m)")

    @property
    def focal_px(self) -> float:
        """Focal length in pixels, from the horizontal fov as CARLA defines it."""
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    def intrinsics(self) -> np.ndarray:
        """The 3x3 pinhole matrix K (pixels), principal point at the image centre as in CARLA."""
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        return asdict(self)


def check_step(dt_s: float, label: str = "dt_s=") -> None:
    """A simulation step (s) every backend can take, :data:`MIN_DT_S`..:data:`MAX_DT_S`; else a UsageError
    that names it with ``label`` (``"dt_s="``, or an option such as ``"--dt "``)."""
    if not MIN_DT_S <= dt_s <= MAX_DT_S:  # NaN fails this too
        raise UsageError(f"{label}{dt_s} s is outside {MIN_DT_S:g}..{MAX_DT_S:g} s (CARLA's substepping limit)")


def check_spawn_noise(std_m: float, label: str = "spawn noise ") -> None:
    """A lateral spawn noise (the standard deviation of the start's offset, m) in 0..:data:`MAX_SPAWN_NOISE_M`;
    else a UsageError that names it with ``label`` (``"spawn noise "``, or an option such as ``"--spawn-noise "``)."""
    if not 0.0 <= std_m <= MAX_SPAWN_NOISE_M:  # NaN fails this too
        raise UsageError(f"{label}{std_m} m must be in 0..{MAX_SPAWN_NOISE_M:g} m (the standard deviation of the "
                         "start's lateral offset)")


def parse_resolution(spec: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` (as CARLA's ``--res``) into ``(width, height)``."""
    try:
        width, height = (int(p) for p in spec.lower().split("x"))
    except ValueError:
        raise UsageError(f"resolution {spec!r} is not WIDTHxHEIGHT, e.g. 448x448") from None
    return width, height


@dataclass(frozen=True)
class Pose:
    """Vehicle pose in the world frame: metres and degrees (CARLA convention)."""

    x_m: float
    y_m: float
    z_m: float
    yaw_deg: float
    pitch_deg: float = 0.0
    roll_deg: float = 0.0


@dataclass(frozen=True)
class LaneFrame:
    """Privileged lane-relative state measured against the route's lane centre.

    ``lateral_offset_m`` is positive to the right; ``heading_error_deg`` is the vehicle yaw minus the lane
    direction, wrapped to [-180, 180), positive when pointing right of the lane; ``route_progress`` is the
    travelled fraction of the route in [0, 1]; ``distance_to_goal_m`` the route length still ahead;
    ``curvature_1pm`` the lane centre's signed curvature (1/m, positive turning right) at the vehicle.
    """

    lateral_offset_m: float
    heading_error_deg: float
    route_progress: float
    distance_along_m: float
    distance_to_goal_m: float
    curvature_1pm: float
    in_junction: bool
    road_id: int
    lane_id: int


class RoadOption(IntEnum):
    """The route's high-level command at the vehicle, with the values of CARLA's
    ``agents.navigation.local_planner.RoadOption`` (and the leaderboard's global plan).

    ``LEFT``/``RIGHT``/``STRAIGHT`` name the movement through the next junction from
    :data:`sim.routes.COMMAND_LOOKAHEAD_M` before it until :data:`sim.routes.COMMAND_HOLD_M` past its exit;
    ``LANEFOLLOW`` everywhere else. It is
    navigation, as a GPS route planner gives it, not privileged state: conditional imitation (CIL, CILRS)
    feeds it to the policy.
    """

    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4

    @property
    def mirrored(self) -> RoadOption:
        """The command of the left-right mirrored scene (flip augmentation): LEFT <-> RIGHT."""
        return {RoadOption.LEFT: RoadOption.RIGHT, RoadOption.RIGHT: RoadOption.LEFT}.get(self, self)


@dataclass(frozen=True)
class CollisionEvent:
    """The vehicle touched something: ``other`` names it (e.g. ``static.building``, ``vehicle``)."""

    frame: int
    other: str
    impulse_ns: float  # N*s, as CARLA's normal impulse magnitude


@dataclass(frozen=True)
class LaneInvasionEvent:
    """The vehicle body crossed lane markings; ``markings`` lists their kinds as CARLA names them
    (``Broken``, ``Solid``, ``SolidSolid``, ...)."""

    frame: int
    markings: tuple[str, ...]


@dataclass(frozen=True)
class Observation:
    """What a simulator returns each tick.

    ``image`` is the forward camera, HxWx3 uint8 RGB. ``frame`` counts ticks since the world started and
    ``sim_time_s`` is ``frame * dt``. ``lane`` is privileged (for the expert and metrics, never the policy).
    Event tuples hold what happened since the previous observation.
    """

    image: np.ndarray
    speed_mps: float
    pose: Pose
    frame: int
    sim_time_s: float
    lane: LaneFrame
    control: Control = field(default_factory=Control)
    collisions: tuple[CollisionEvent, ...] = ()
    lane_invasions: tuple[LaneInvasionEvent, ...] = ()
    command: RoadOption = RoadOption.LANEFOLLOW

    @property
    def speed_kmh(self) -> float:
        return self.speed_mps * 3.6
