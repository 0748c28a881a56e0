"""Our value conversions checked against the REAL ``carla`` 0.9.16 types (no server needed)."""

from __future__ import annotations

import math
import types

import carla
import numpy as np
import pytest

from sim.carla_convert import (
    WEATHER_FIELDS,
    bgra_to_rgb,
    camera_attributes,
    camera_transform,
    collision_event,
    from_vehicle_control,
    lane_invasion_event,
    mount_radius_m,
    pose_to_transform,
    speed_mps,
    to_vehicle_control,
    to_weather_parameters,
    transform_to_pose,
)
from sim.dynamics import VehicleParams, VehicleState, step_vehicle
from sim.routes import Route
from sim.types import CameraConfig, Control, Pose
from sim.weather import WEATHERS, Weather, get_weather


def test_camera_mount_is_a_carla_transform_relative_to_the_vehicle():
    t = camera_transform(carla, CameraConfig(x_m=1.5, y_m=0.2, z_m=2.4, pitch_deg=-5.0, yaw_deg=1.0, roll_deg=2.0))
    assert isinstance(t, carla.Transform)
    assert (t.location.x, t.location.y, t.location.z) == pytest.approx((1.5, 0.2, 2.4))
    assert (t.rotation.pitch, t.rotation.yaw, t.rotation.roll) == pytest.approx((-5.0, 1.0, 2.0))


def test_camera_attributes_deliver_every_tick_with_our_size_and_fov():
    attrs = camera_attributes(CameraConfig(width=448, height=224, fov_deg=110.0))
    assert attrs == {"image_size_x": "448", "image_size_y": "224", "fov": "110", "sensor_tick": "0.0"}


def test_paper_camera_mount_is_within_the_leaderboard_radius():
    assert mount_radius_m(CameraConfig()) == pytest.approx(math.hypot(1.5, 2.4))
    assert mount_radius_m(CameraConfig()) < 3.0


def test_pose_and_transform_round_trip():
    pose = Pose(10.5, -3.25, 0.4, 93.0, -1.5, 0.5)
    t = pose_to_transform(carla, pose)
    assert isinstance(t, carla.Transform)
    back = transform_to_pose(t)
    assert (back.x_m, back.y_m, back.z_m, back.yaw_deg, back.pitch_deg, back.roll_deg) == pytest.approx(
        (10.5, -3.25, 0.4, 93.0, -1.5, 0.5))


def test_control_maps_to_vehicle_control_without_sign_flips():
    vc = to_vehicle_control(carla, Control(steer=0.4, throttle=0.7, brake=0.1))
    assert isinstance(vc, carla.VehicleControl)
    assert (vc.steer, vc.throttle, vc.brake) == pytest.approx((0.4, 0.7, 0.1))
    assert (vc.hand_brake, vc.reverse, vc.manual_gear_shift) == (False, False, False)
    assert to_vehicle_control(carla, Control(steer=-1.0)).steer == pytest.approx(-1.0)


def test_vehicle_control_maps_back_and_is_clipped_to_our_ranges():
    c = from_vehicle_control(carla.VehicleControl(throttle=1.0000001, steer=-1.2, brake=0.25))
    assert c == Control(steer=-1.0, throttle=1.0, brake=0.25)
    back = from_vehicle_control(to_vehicle_control(carla, Control(0.3, 0.2, 0.0)))
    assert (back.steer, back.throttle, back.brake) == pytest.approx((0.3, 0.2, 0.0))


def test_steering_sign_is_carlas_positive_right():
    """+steer turns towards +y, and +y is the vehicle's right in CARLA's frame, which is ours."""
    forward_at_right_turn = carla.Rotation(yaw=30.0).get_forward_vector()
    assert forward_at_right_turn.y > 0  # positive yaw heads towards +y
    right = carla.Rotation(yaw=0.0).get_right_vector()
    assert (right.x, right.y) == pytest.approx((0.0, 1.0))  # facing +x, the right is +y
    state = VehicleState(0.0, 0.0, 0.0, speed_mps=5.0)
    for _ in range(20):
        state = step_vehicle(state, Control(steer=+0.3, throttle=0.2), VehicleParams(), 0.05)
    assert state.yaw_rad > 0 and state.y_m > 0  # positive steer: yaw grows, the car moves to +y (right)
    # and our lateral offset is positive on that side: a point on the route's right vector
    route = Route("r", np.linspace(0, 10, 21), np.zeros(21), np.zeros(21, bool), np.zeros(21, np.int32),
                  np.zeros(21, np.int8))
    assert route.project(5.0, right.y * 1.0).lateral_offset_m == pytest.approx(1.0)


def test_bgra_bytes_become_an_owned_rgb_copy():
    h, w = 3, 4
    bgra = np.zeros((h, w, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 255  # B, G, R, A
    bgra[0, 1] = (1, 2, 3, 255)
    raw = bytearray(bgra.tobytes())
    rgb = bgra_to_rgb(raw, w, h)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    assert rgb[2, 3].tolist() == [30, 20, 10]
    assert rgb[0, 1].tolist() == [3, 2, 1]
    assert rgb.flags.writeable and rgb.flags.c_contiguous
    raw[:] = bytes(len(raw))  # CARLA reuses its buffer: our copy must not change
    assert rgb[2, 3].tolist() == [30, 20, 10]


def test_bgra_buffer_of_the_wrong_size_is_rejected():
    with pytest.raises(ValueError, match="expected 4x3x4 = 48"):
        bgra_to_rgb(bytes(40), 4, 3)


@pytest.mark.parametrize("name", sorted(WEATHERS))
def test_weather_fields_map_one_to_one_onto_weather_parameters(name):
    ours = get_weather(name)
    params = to_weather_parameters(carla, ours)
    assert isinstance(params, carla.WeatherParameters)
    for our_field, carla_field in WEATHER_FIELDS.items():
        assert getattr(params, carla_field) == pytest.approx(getattr(ours, our_field)), carla_field
    preset = getattr(carla.WeatherParameters, name)
    for extra in ("fog_falloff", "scattering_intensity", "mie_scattering_scale", "rayleigh_scattering_scale"):
        assert getattr(params, extra) == pytest.approx(getattr(preset, extra))


def test_weather_without_a_carla_preset_takes_clear_noons_extra_fields():
    params = to_weather_parameters(carla, Weather("Custom", cloudiness=33.0, fog_distance_m=12.0))
    assert (params.cloudiness, params.fog_distance) == pytest.approx((33.0, 12.0))
    assert params.fog_falloff == pytest.approx(carla.WeatherParameters.ClearNoon.fog_falloff)


def test_every_weather_field_is_mapped():
    assert set(WEATHER_FIELDS) == {f for f in Weather.__dataclass_fields__ if f != "name"}


def test_speed_and_events_from_carla_values():
    assert speed_mps(carla.Vector3D(3.0, 4.0, 0.0)) == pytest.approx(5.0)
    event = types.SimpleNamespace(other_actor=types.SimpleNamespace(type_id="static.pole"),
                                  normal_impulse=carla.Vector3D(0.0, 300.0, 400.0))
    hit = collision_event(event, 7)
    assert (hit.frame, hit.other, hit.impulse_ns) == (7, "static.pole", pytest.approx(500.0))
    invasion = types.SimpleNamespace(crossed_lane_markings=[
        types.SimpleNamespace(type=carla.LaneMarkingType.SolidSolid),
        types.SimpleNamespace(type=carla.LaneMarkingType.Broken)])
    assert lane_invasion_event(invasion, 3).markings == ("SolidSolid", "Broken")
