"""The simulator contract, the embedded simulator and the backends' Gymnasium registration.

Importing ``sim`` registers ``caril/Embedded-v0`` and ``caril/Carla-v0``
with Gymnasium by string entry point, so nothing heavy is imported until an environment is made.
"""

from gymnasium.envs.registration import register, registry

from sim.types import CameraConfig, Control, LaneFrame, Observation, Pose
from sim.weather import WEATHERS, Weather, get_weather

__all__ = ["WEATHERS", "CameraConfig", "Control", "LaneFrame", "Observation", "Pose", "Weather", "get_weather"]

if "caril/Embedded-v0" not in registry:
    register(id="caril/Embedded-v0", entry_point="sim.env:make_embedded_env")
if "caril/Carla-v0" not in registry:
    register(id="caril/Carla-v0", entry_point="sim.carla_backend:make_carla_env")
