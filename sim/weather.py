"""Weather presets, named and parameterised as CARLA's ``carla.WeatherParameters``.

The parameters keep CARLA's names and scales (0-100 for amounts, degrees for the sun) so the CARLA backend
passes them through unchanged, and the embedded renderer derives its look (brightness, colour, haze, wet
sheen, rain streaks) from the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.errors import unknown_name


@dataclass(frozen=True)
class Weather:
    """One weather state. Amounts are 0-100 as in CARLA; angles in degrees; fog distance in metres."""

    name: str
    cloudiness: float = 5.0
    precipitation: float = 0.0
    precipitation_deposits: float = 0.0
    wind_intensity: float = 10.0
    sun_azimuth_angle_deg: float = 0.0
    sun_altitude_angle_deg: float = 45.0
    fog_density: float = 2.0
    fog_distance_m: float = 0.75
    wetness: float = 0.0

    def to_dict(self) -> dict:
        """Plain dict for configs and episode metadata."""
        return asdict(self)


_PRESETS: tuple[Weather, ...] = (
    Weather("ClearNoon", cloudiness=5, sun_altitude_angle_deg=45),
    Weather("CloudyNoon", cloudiness=60, sun_altitude_angle_deg=45),
    Weather("WetNoon", cloudiness=5, precipitation_deposits=50, sun_altitude_angle_deg=45, wetness=50),
    Weather("WetCloudyNoon", cloudiness=60, precipitation_deposits=50, wetness=50),
    Weather("SoftRainNoon", cloudiness=20, precipitation=30, precipitation_deposits=50, wetness=50),
    Weather("MidRainyNoon", cloudiness=60, precipitation=60, precipitation_deposits=60, wind_intensity=60,
            wetness=60, fog_density=3),
    Weather("HardRainNoon", cloudiness=100, precipitation=100, precipitation_deposits=90, wind_intensity=100,
            fog_density=7, wetness=100),
    Weather("ClearSunset", cloudiness=5, sun_altitude_angle_deg=15),
    Weather("CloudySunset", cloudiness=60, sun_altitude_angle_deg=15),
    Weather("WetSunset", cloudiness=5, precipitation_deposits=50, sun_altitude_angle_deg=15, wetness=50),
    Weather("HardRainSunset", cloudiness=100, precipitation=100, precipitation_deposits=90, wind_intensity=100,
            sun_altitude_angle_deg=15, fog_density=7, wetness=100),
)

WEATHERS: dict[str, Weather] = {w.name: w for w in _PRESETS}


def get_weather(name: str) -> Weather:
    """Return the preset called ``name``; an unknown name raises an error listing the valid ones."""
    try:
        return WEATHERS[name]
    except KeyError:
        raise unknown_name("weather", name, list(WEATHERS)) from None


def parse_weathers(spec: str) -> list[Weather]:
    """Parse a comma-separated list of preset names and groups: ``all``, ``train`` (the weathers training data
    may be recorded in) and ``heldout`` (those it never is; see :mod:`sim.split`)."""
    from sim.split import HELDOUT_WEATHERS, TRAIN_WEATHERS

    groups = {"all": tuple(WEATHERS), "train": TRAIN_WEATHERS, "heldout": HELDOUT_WEATHERS}
    names: list[str] = []
    for item in (n.strip() for n in spec.split(",") if n.strip()):
        names += [n for n in groups.get(item, (item,)) if n not in names]
    return [get_weather(n) for n in names]
