import math
import re

import numpy as np
import pytest

from sim.errors import InvalidControlError
from sim.types import CameraConfig, Control, parse_resolution


def test_control_accepts_range_and_converts_to_float():
    c = Control(np.float32(-1.0), 1, 0)
    assert (c.steer, c.throttle, c.brake) == (-1.0, 1.0, 0.0)
    assert isinstance(c.throttle, float)
    np.testing.assert_array_equal(c.to_array(), np.array([-1, 1, 0], np.float32))


@pytest.mark.parametrize("kwargs, message", [
    ({"steer": 1.5}, "control steer=1.5 is outside [-1, 1]"),
    ({"throttle": -0.1}, "control throttle=-0.1 is outside [0, 1]"),
    ({"brake": float("nan")}, "control brake=nan is not a finite number"),
    ({"steer": float("inf")}, "control steer=inf is not a finite number"),
    ({"steer": "left"}, "control steer='left' is not a finite number"),
])
def test_control_rejects_invalid_values(kwargs, message):
    with pytest.raises(InvalidControlError, match=re.escape(message)):
        Control(**kwargs)


def test_control_from_array_checks_shape():
    assert Control.from_array([0.5, 0.2, 0.0]) == Control(0.5, 0.2, 0.0)
    with pytest.raises(InvalidControlError, match="3 values"):
        Control.from_array([0.1, 0.2])


def test_camera_defaults_are_the_papers_and_focal_follows_fov():
    cam = CameraConfig()
    assert (cam.width, cam.height, cam.fov_deg, cam.x_m, cam.z_m) == (448, 448, 110.0, 1.5, 2.4)
    assert cam.focal_px == pytest.approx(224 / math.tan(math.radians(55)))
    k = cam.intrinsics()
    assert k[0, 2] == 224 and k[1, 2] == 224 and k[0, 0] == k[1, 1]


def test_camera_rejects_bad_values():
    with pytest.raises(ValueError, match="fov 0.5 deg"):
        CameraConfig(fov_deg=0.5)
    with pytest.raises(ValueError, match="outside 8..4096"):
        CameraConfig(width=4)


def test_parse_resolution():
    assert parse_resolution("1280x720") == (1280, 720)
    with pytest.raises(ValueError, match="is not WIDTHxHEIGHT"):
        parse_resolution("big")
