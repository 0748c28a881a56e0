"""OpenDRIVE plan-view primitives: lines, arcs and clothoids (Euler spirals).

A road's reference line is a chain of these, exactly as in an OpenDRIVE ``<planView>``. Coordinates are in
the world frame of ``sim.types`` (CARLA's: y right, heading positive towards +y), so a positive curvature
turns right. The OpenDRIVE exporter flips y, heading and curvature signs to OpenDRIVE's right-handed frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CLOTHOID_STEPS = 64  # integration steps per clothoid evaluation (error well below a millimetre)


@dataclass(frozen=True)
class Geometry:
    """One plan-view record: start pose, length and a curvature that varies linearly along it.

    ``curvature_start == curvature_end == 0`` is a line, equal non-zero values an arc, different values a
    clothoid (OpenDRIVE ``<spiral curvStart curvEnd>``). Units: metres, radians, 1/m.
    """

    s0_m: float
    x_m: float
    y_m: float
    heading_rad: float
    length_m: float
    curvature_start: float = 0.0
    curvature_end: float = 0.0

    @property
    def kind(self) -> str:
        if self.curvature_start == self.curvature_end:
            return "line" if self.curvature_start == 0.0 else "arc"
        return "spiral"

    def curvature_at(self, ds: np.ndarray) -> np.ndarray:
        """Curvature (1/m) at local distances ``ds`` from the start of this record."""
        rate = (self.curvature_end - self.curvature_start) / self.length_m
        return self.curvature_start + rate * np.asarray(ds, dtype=np.float64)

    def heading_at(self, ds: np.ndarray) -> np.ndarray:
        """Heading (rad) at local distances ``ds``: the integral of the linear curvature."""
        ds = np.asarray(ds, dtype=np.float64)
        rate = (self.curvature_end - self.curvature_start) / self.length_m
        return self.heading_rad + self.curvature_start * ds + 0.5 * rate * ds * ds

    def sample(self, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Positions, headings and curvatures at local distances ``ds`` (metres, 0..length)."""
        ds = np.asarray(ds, dtype=np.float64)
        heading = self.heading_at(ds)
        k0 = self.curvature_start
        if self.kind == "line":
            x = self.x_m + ds * math.cos(self.heading_rad)
            y = self.y_m + ds * math.sin(self.heading_rad)
        elif self.kind == "arc":
            x = self.x_m + (np.sin(heading) - math.sin(self.heading_rad)) / k0
            y = self.y_m - (np.cos(heading) - math.cos(self.heading_rad)) / k0
        else:
            x, y = self._integrate_spiral(ds)
        return x, y, heading, self.curvature_at(ds)

    def _integrate_spiral(self, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clothoid positions by Simpson integration of (cos, sin) of the heading from 0 to each ``ds``."""
        u = np.linspace(0.0, 1.0, 2 * _CLOTHOID_STEPS + 1)
        weights = np.ones_like(u)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        weights /= 3.0 * (len(u) - 1)
        t = ds.reshape(-1, 1) * u.reshape(1, -1)  # (n, steps) local distances
        h = self.heading_at(t)
        x = self.x_m + ds * (np.cos(h) @ weights)
        y = self.y_m + ds * (np.sin(h) @ weights)
        return x.reshape(ds.shape), y.reshape(ds.shape)

    def end_pose(self) -> tuple[float, float, float]:
        """(x, y, heading) at the end of this record."""
        x, y, h, _ = self.sample(np.array([self.length_m]))
        return float(x[0]), float(y[0]), float(h[0])


class PlanView:
    """A chain of :class:`Geometry` records, continuous in position and heading, built by appending."""

    def __init__(self, x_m: float, y_m: float, heading_rad: float) -> None:
        self.records: list[Geometry] = []
        self._pose = (x_m, y_m, heading_rad)
        self.length_m = 0.0

    def _add(self, length_m: float, k0: float, k1: float) -> PlanView:
        if length_m <= 0:
            raise ValueError(f"geometry length must be positive, got {length_m}")
        x, y, h = self._pose
        g = Geometry(self.length_m, x, y, h, length_m, k0, k1)
        self.records.append(g)
        self._pose = g.end_pose()
        self.length_m += length_m
        return self

    def line(self, length_m: float) -> PlanView:
        return self._add(length_m, 0.0, 0.0)

    def arc(self, length_m: float, curvature: float) -> PlanView:
        return self._add(length_m, curvature, curvature)

    def spiral(self, length_m: float, curvature_start: float, curvature_end: float) -> PlanView:
        return self._add(length_m, curvature_start, curvature_end)

    def turn(self, angle_rad: float, radius_m: float, spiral_fraction: float = 0.4) -> PlanView:
        """A curve turning by ``angle_rad`` (positive right) with minimum radius ``radius_m``: a clothoid in,
        an arc, a clothoid out; ``spiral_fraction`` of the angle is spent in the two clothoids together."""
        k = math.copysign(1.0 / radius_m, angle_rad)
        angle = abs(angle_rad)
        spiral_len = spiral_fraction * angle / abs(k)  # each clothoid turns k*L/2
        arc_len = (1.0 - spiral_fraction) * angle / abs(k)
        if spiral_len > 0:
            self.spiral(spiral_len, 0.0, k)
        if arc_len > 1e-9:
            self.arc(arc_len, k)
        if spiral_len > 0:
            self.spiral(spiral_len, k, 0.0)
        return self

    @property
    def end_pose(self) -> tuple[float, float, float]:
        return self._pose

    def sample(self, step_m: float = 0.5) -> dict[str, np.ndarray]:
        """Sample the whole chain at most ``step_m`` apart, including every record's ends.

        Returns arrays ``s``, ``x``, ``y``, ``heading``, ``curvature`` (metres, radians, 1/m).
        """
        parts: list[tuple[np.ndarray, ...]] = []
        for i, g in enumerate(self.records):
            n = max(1, math.ceil(g.length_m / step_m))
            ds = np.linspace(0.0, g.length_m, n + 1)
            if i < len(self.records) - 1:
                ds = ds[:-1]
            x, y, h, k = g.sample(ds)
            parts.append((g.s0_m + ds, x, y, h, k))
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        return dict(zip(("s", "x", "y", "heading", "curvature"), cols, strict=True))


def turn_displacement(angle_rad: float, radius_m: float, spiral_fraction: float = 0.4) -> tuple[float, float]:
    """(forward, lateral) displacement of :meth:`PlanView.turn` started at the origin heading +x."""
    pv = PlanView(0.0, 0.0, 0.0).turn(angle_rad, radius_m, spiral_fraction)
    x, y, _ = pv.end_pose
    return x, y
