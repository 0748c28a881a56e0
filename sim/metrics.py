"""Per-episode driving metrics computed from a trajectory (both backends, any policy).

A trajectory is the table written to ``trajectories/*.csv``: one row per tick with ``t_s, x_m, y_m,
yaw_deg, speed_mps, lateral_offset_m, steer, throttle, brake``.
"""

from __future__ import annotations

import numpy as np

TRAJECTORY_COLUMNS = ("t_s", "x_m", "y_m", "yaw_deg", "speed_mps", "lateral_offset_m", "steer", "throttle",
                      "brake")


def lane_deviation(lateral_offset_m: np.ndarray) -> dict[str, float]:
    """Mean, RMS and max of the absolute lateral offset from the lane centre (metres)."""
    a = np.abs(np.asarray(lateral_offset_m, dtype=np.float64))
    if a.size == 0:
        return {"lateral_offset_mean_m": 0.0, "lateral_offset_rms_m": 0.0, "lateral_offset_max_m": 0.0}
    return {"lateral_offset_mean_m": float(a.mean()), "lateral_offset_rms_m": float(np.sqrt((a * a).mean())),
            "lateral_offset_max_m": float(a.max())}


def route_completion(distance_along_m: float, route_length_m: float, termination: str) -> float:
    """Fraction of the route driven, 1.0 exactly when the goal was reached."""
    if termination == "goal":
        return 1.0
    return float(min(1.0, max(0.0, distance_along_m / route_length_m)))
