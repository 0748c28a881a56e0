"""Similarity of a driven trajectory to a reference trajectory, as in the CARIL paper but deterministic.

The paper (``Driving Evaluation/Metric.py`` of the reference code) compares the driven x/y path with the
autopilot's using discrete Fréchet distance, DTW, area between curves and the curve-length measure, after
downsampling both paths to the shorter length with unseeded random sampling, so its numbers are not
reproducible. Here both paths are resampled at a fixed arc-length step instead
(:func:`resample_by_arc_length`) and every measure is exact and deterministic:

- ``frechet_m``: exact discrete Fréchet distance (metres).
- ``dtw_m``: classic full dynamic time warping, the sum of Euclidean distances along the optimal warping path
  (metres; like the paper's ``fastdtw`` value it grows with the number of points, i.e. with route length / step).
- ``area_m2``: area between the curves (m^2), defined in :func:`area_between_curves`.
- ``curve_length``: the curve-length measure of ``similaritymeasures`` (unitless), see
  :func:`curve_length_measure`.

The two O(N*M) dynamic programmes run as anti-diagonal sweeps: every cell of an anti-diagonal depends only
on the two previous anti-diagonals, so each sweep step is a handful of numpy operations on a vector and the
memory is O(N + M).
"""

from __future__ import annotations

import numpy as np

from sim.errors import CarilError


class TrajectoryError(CarilError, ValueError):
    """A trajectory that is not an (N, 2) array of finite x/y metres, or is too short for the measure."""


def _as_xy(xy: np.ndarray, name: str = "trajectory") -> np.ndarray:
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] == 0:
        raise TrajectoryError(f"{name} must be a non-empty (N, 2) array of x/y metres, got shape {a.shape}; "
                              "pass e.g. np.column_stack([x_m, y_m]).")
    if not np.all(np.isfinite(a)):
        raise TrajectoryError(f"{name} contains NaN or infinite coordinates; drop those rows first.")
    return a


def _drop_repeats(a: np.ndarray) -> np.ndarray:
    """The points of ``a`` without consecutive duplicates (standing still adds no arc length)."""
    keep = np.ones(len(a), dtype=bool)
    keep[1:] = np.any(a[1:] != a[:-1], axis=1)
    return a[keep]


def _cumulative_length(a: np.ndarray) -> np.ndarray:
    """Arc length at each vertex of the polyline ``a``, starting at 0 (metres)."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(a, axis=0).T))])


def resample_by_arc_length(xy: np.ndarray, step_m: float = 0.5) -> np.ndarray:
    """Points equally spaced along the polyline ``xy`` (N, 2), including its first and last point.

    The polyline of length L is cut into ``n = ceil(L / step_m)`` equal pieces, so the spacing along the arc
    is exactly ``L / n`` (<= ``step_m``; == ``step_m`` when L is a multiple of it) and the output has
    ``n + 1`` points. Repeated points (a vehicle standing still) are dropped first; a path that never moves
    comes back as its single point.
    """
    if not (np.isfinite(step_m) and step_m > 0):
        raise TrajectoryError(f"step_m must be a positive number of metres, got {step_m!r}.")
    a = _drop_repeats(_as_xy(xy))
    if len(a) == 1:
        return a.copy()
    s = _cumulative_length(a)
    length_m = float(s[-1])
    n = max(1, int(np.ceil(length_m / step_m - 1e-9)))
    targets = np.linspace(0.0, length_m, n + 1)
    return np.column_stack([np.interp(targets, s, a[:, 0]), np.interp(targets, s, a[:, 1])])


def _antidiagonal_dp(a: np.ndarray, b: np.ndarray, accumulate: str) -> float:
    """Value at the last cell of ``C[i,j] = f(d(a_i, b_j), min(C[i-1,j], C[i,j-1], C[i-1,j-1]))``.

    ``accumulate`` is ``"max"`` (discrete Fréchet) or ``"sum"`` (DTW). Anti-diagonal ``k`` holds the cells
    with ``i + j == k``; a diagonal is stored in an array of length ``n + 1`` where slot ``i + 1`` is row
    ``i`` and every slot outside the diagonal's rows is +inf, so borders need no special case.
    """
    n, m = len(a), len(b)
    ax, ay = np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1])
    bx_rev, by_rev = np.ascontiguousarray(b[::-1, 0]), np.ascontiguousarray(b[::-1, 1])
    combine = np.maximum if accumulate == "max" else np.add
    prev2 = np.full(n + 1, np.inf)  # diagonal k - 2
    prev1 = np.full(n + 1, np.inf)  # diagonal k - 1
    for k in range(n + m - 1):
        lo, hi = max(0, k - m + 1), min(k, n - 1)
        r0 = m - 1 - k + lo  # b[k - i] for i = lo..hi is b_rev[r0 .. r0 + hi - lo]
        r1 = r0 + hi - lo + 1
        d = np.hypot(ax[lo:hi + 1] - bx_rev[r0:r1], ay[lo:hi + 1] - by_rev[r0:r1])
        cur = np.full(n + 1, np.inf)
        if k == 0:
            cur[1] = d[0]
        else:
            best = np.minimum(np.minimum(prev1[lo:hi + 1], prev1[lo + 1:hi + 2]), prev2[lo:hi + 1])
            cur[lo + 1:hi + 2] = combine(d, best)
        prev2, prev1 = prev1, cur
    return float(prev1[n])


def discrete_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Exact discrete Fréchet distance between polylines ``a`` (N, 2) and ``b`` (M, 2), in metres.

    The smallest, over all monotone couplings of the vertices that start at both first points and end at
    both last points, of the largest coupled distance (Eiter and Mannila, 1994). O(N*M) time, O(N+M) memory.
    """
    return _antidiagonal_dp(_as_xy(a, "a"), _as_xy(b, "b"), "max")


def dtw(a: np.ndarray, b: np.ndarray) -> float:
    """Classic full dynamic time warping between ``a`` (N, 2) and ``b`` (M, 2), in metres.

    The smallest sum of Euclidean vertex distances along a warping path from (0, 0) to (N-1, M-1) with steps
    (1, 0), (0, 1), (1, 1). No window and no approximation (unlike ``fastdtw``). O(N*M) time, O(N+M) memory.
    """
    return _antidiagonal_dp(_as_xy(a, "a"), _as_xy(b, "b"), "sum")


def _distance_to_polyline(points: np.ndarray, poly: np.ndarray, max_elements: int = 1 << 20) -> np.ndarray:
    """Euclidean distance (metres) from each of ``points`` (P, 2) to the nearest point of polyline ``poly``."""
    if len(poly) == 1:
        return np.hypot(*(points - poly[0]).T)
    s0 = poly[:-1]
    v = poly[1:] - s0
    vv = np.einsum("ij,ij->i", v, v)
    vv_safe = np.where(vv > 0, vv, 1.0)  # zero-length segment: w.v == 0 so t == 0, the point itself
    out = np.empty(len(points))
    chunk = max(1, max_elements // len(s0))
    for start in range(0, len(points), chunk):
        w = points[start:start + chunk, None, :] - s0[None, :, :]
        t = np.clip((w[..., 0] * v[:, 0] + w[..., 1] * v[:, 1]) / vv_safe, 0.0, 1.0)
        dx, dy = w[..., 0] - t * v[:, 0], w[..., 1] - t * v[:, 1]
        out[start:start + chunk] = (dx * dx + dy * dy).min(axis=1)
    return np.sqrt(out)


def _one_sided_area(a: np.ndarray, b: np.ndarray) -> float:
    """Trapezoid-rule integral over the arc length of ``a`` of the distance from ``a`` to ``b`` (m^2)."""
    if len(a) == 1:
        return 0.0
    f = _distance_to_polyline(a, b)
    ds = np.hypot(*np.diff(a, axis=0).T)
    return float(np.sum(0.5 * (f[:-1] + f[1:]) * ds))


def area_between_curves(a: np.ndarray, b: np.ndarray) -> float:
    """Area between polylines ``a`` and ``b`` in m^2: the mean of the two one-sided distance integrals.

    ``area = (integral over a's arc length of dist(a(s), b) + integral over b's arc length of dist(b(s), a)) / 2``
    where ``dist(p, c)`` is the distance from point p to the nearest point of polyline c. Each integral uses
    the trapezoid rule on the vertices of the curve it runs along, so pass curves resampled with
    :func:`resample_by_arc_length` (as :func:`trajectory_similarity` does).

    Why this definition rather than the shoelace area of the polygon ``a + reversed(b)``:

    - it is exact for the analytic cases: parallel segments of length L at offset d give ``d * L`` (both
      integrals are ``d * L``), and for concentric arcs of radii R and R + d over angle theta the inner and
      outer integrals are ``d * theta * R`` and ``d * theta * (R + d)``, whose mean is the exact annulus
      sector area ``theta * d * (R + d / 2)``;
    - a driven path that weaves across the reference does not cancel: the polygon's signed area subtracts
      the pieces on either side of each crossing, and fixing that needs all crossings in a consistent order;
    - it is symmetric in ``a`` and ``b`` and needs no equal point counts (``similaritymeasures`` inserts
      points into the shorter curve until the counts match, so its value depends on the sampling);
    - a path that stops early still pays for the rest of the reference (distance to its last point).
    """
    a, b = _as_xy(a, "a"), _as_xy(b, "b")
    return 0.5 * (_one_sided_area(a, b) + _one_sided_area(b, a))


def _normalised_cumulative_length(xy: np.ndarray) -> tuple[np.ndarray, float]:
    """``similaritymeasures.get_length``: each axis divided by the curve's own max |coordinate| (>= 1e-15)."""
    x, y = xy[:, 0], xy[:, 1]
    sx, sy = max(float(np.max(np.abs(x))), 1e-15), max(float(np.max(np.abs(y))), 1e-15)
    seg = np.sqrt((np.diff(x) / sx) ** 2 + (np.diff(y) / sy) ** 2)
    return np.concatenate([[0.0], np.cumsum(seg)]), float(np.sum(seg))


def curve_length_measure(reference: np.ndarray, other: np.ndarray, min_scale_m: float = 1.0) -> float:
    """The curve-length measure of ``similaritymeasures.curve_length_measure`` (unitless, 0 for equal curves).

    Published definition (Andrade-Campos et al. 2012, OF2 form, as implemented in ``similaritymeasures``
    with ``exp_data = reference`` and ``num_data = other``):

    1. each curve gets a cumulative arc length computed with x divided by its own max |x| and y by its own
       max |y|;
    2. each reference vertex i, at normalised arc length ``l_i``, is matched with the point of ``other`` at
       the same fraction of its normalised length, ``l_i * L_other / L_reference`` (linear interpolation);
    3. ``r = sqrt(sum_i ln(1 + |dx_i| / mean_x)^2 + ln(1 + |dy_i| / mean_y)^2)`` with ``mean_x``, ``mean_y``
       the mean reference coordinates.

    Deviation, for finite values in any world frame: the scales are ``max(|mean_x|, min_scale_m)`` and
    ``max(|mean_y|, min_scale_m)``. The published code divides by the signed mean, which gives NaN when a
    mean is negative and a deviation exceeds it, and infinity when a mean is 0 (a route along y = 0). The
    two agree whenever both means are >= ``min_scale_m``. Either way the value depends on where the world
    origin is, so compare it only between runs on the same route and map.
    """
    ref, oth = _as_xy(reference, "reference"), _drop_repeats(_as_xy(other, "other"))
    if not (np.isfinite(min_scale_m) and min_scale_m > 0):
        raise TrajectoryError(f"min_scale_m must be a positive number of metres, got {min_scale_m!r}.")
    le_cum, le_total = _normalised_cumulative_length(ref)
    if le_total == 0:
        raise TrajectoryError("the reference trajectory has zero length; the curve-length measure needs a "
                              "reference that moves (at least two distinct points).")
    if len(oth) == 1:
        x_c, y_c = np.full(len(ref), oth[0, 0]), np.full(len(ref), oth[0, 1])
    else:
        lc_cum, lc_total = _normalised_cumulative_length(oth)
        l_eq = le_cum * (lc_total / le_total)
        x_c, y_c = np.interp(l_eq, lc_cum, oth[:, 0]), np.interp(l_eq, lc_cum, oth[:, 1])
    scale_x = max(abs(float(np.mean(ref[:, 0]))), min_scale_m)
    scale_y = max(abs(float(np.mean(ref[:, 1]))), min_scale_m)
    r_sq = np.log(1.0 + np.abs(x_c - ref[:, 0]) / scale_x) ** 2 + np.log(1.0 + np.abs(y_c - ref[:, 1]) / scale_y) ** 2
    return float(np.sqrt(np.sum(r_sq)))


def trajectory_similarity(driven_xy: np.ndarray, reference_xy: np.ndarray, step_m: float = 0.5) -> dict[str, float]:
    """The paper's four measures between a driven path and its reference, both resampled every ``step_m``.

    Returns ``frechet_m`` (m), ``dtw_m`` (m, grows with route length / ``step_m``), ``area_m2`` (m^2) and
    ``curve_length`` (unitless). Deterministic: no random downsampling. Unlike the reference code, nothing is
    cropped; crop an overshoot past the goal before calling if you want the paper's post-processing.
    """
    driven = resample_by_arc_length(_as_xy(driven_xy, "driven_xy"), step_m)
    reference = resample_by_arc_length(_as_xy(reference_xy, "reference_xy"), step_m)
    return {
        "frechet_m": discrete_frechet(driven, reference),
        "dtw_m": dtw(driven, reference),
        "area_m2": area_between_curves(driven, reference),
        "curve_length": curve_length_measure(reference, driven),
    }
