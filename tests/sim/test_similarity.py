import math

import numpy as np
import pytest

from sim.similarity import (
    TrajectoryError,
    area_between_curves,
    curve_length_measure,
    discrete_frechet,
    dtw,
    resample_by_arc_length,
    trajectory_similarity,
)


def naive_dp(a: np.ndarray, b: np.ndarray, mode: str) -> float:
    """The textbook O(N*M) table, cell by cell: Fréchet with mode 'max', DTW with mode 'sum'."""
    n, m = len(a), len(b)
    c = np.full((n, m), np.inf)
    for i in range(n):
        for j in range(m):
            d = math.dist(a[i], b[j])
            if i == 0 and j == 0:
                c[i, j] = d
                continue
            best = min(c[i - 1, j] if i else np.inf, c[i, j - 1] if j else np.inf,
                       c[i - 1, j - 1] if i and j else np.inf)
            c[i, j] = max(d, best) if mode == "max" else d + best
    return float(c[-1, -1])


def published_curve_length(exp: np.ndarray, num: np.ndarray) -> float:
    """A loop transcription of similaritymeasures.curve_length_measure (valid when the means are positive)."""
    def cumulative(x, y):
        sx, sy = max(np.max(np.abs(x)), 1e-15), max(np.max(np.abs(y)), 1e-15)
        cum = [0.0]
        for i in range(len(x) - 1):
            cum.append(cum[-1] + math.sqrt(((x[i + 1] - x[i]) / sx) ** 2 + ((y[i + 1] - y[i]) / sy) ** 2))
        return np.array(cum)
    le, lc = cumulative(exp[:, 0], exp[:, 1]), cumulative(num[:, 0], num[:, 1])
    xm, ym = np.mean(exp[:, 0]), np.mean(exp[:, 1])
    total = 0.0
    for i in range(len(exp)):
        t = le[i] * (lc[-1] / le[-1])
        xt, yt = np.interp(t, lc, num[:, 0]), np.interp(t, lc, num[:, 1])
        total += math.log(1 + abs(xt - exp[i, 0]) / xm) ** 2 + math.log(1 + abs(yt - exp[i, 1]) / ym) ** 2
    return math.sqrt(total)


def line(x0, x1, y, step=0.5):
    x = np.linspace(x0, x1, round((x1 - x0) / step) + 1)
    return np.column_stack([x, np.full_like(x, y)])


# --- resampling -------------------------------------------------------------------------------------------


def test_resample_spacing_is_exact_along_the_arc_and_keeps_corners_and_ends():
    pts = resample_by_arc_length(np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]]), 0.5)
    expected = [(0.5 * k, 0.0) for k in range(7)] + [(3.0, 0.5 * k) for k in range(1, 9)]
    np.testing.assert_allclose(pts, expected, rtol=0, atol=1e-12)
    assert tuple(pts[-1]) == (3.0, 4.0)


def test_resample_uses_equal_pieces_no_longer_than_the_step_when_length_is_not_a_multiple():
    pts = resample_by_arc_length(np.array([[1.0, 2.0], [1.0, 12.2]]), 0.5)
    assert len(pts) == 22  # ceil(10.2 / 0.5) = 21 pieces
    np.testing.assert_allclose(np.diff(pts[:, 1]), 10.2 / 21, rtol=0, atol=1e-12)
    assert tuple(pts[0]) == (1.0, 2.0) and tuple(pts[-1]) == (1.0, 12.2)


def test_resample_ignores_standing_still_and_a_still_path_is_one_point():
    moving = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 2.0]])
    np.testing.assert_array_equal(resample_by_arc_length(moving, 1.0),
                                  resample_by_arc_length(moving[[0, 2, 5]], 1.0))
    np.testing.assert_array_equal(resample_by_arc_length(np.array([[5.0, 1.0]] * 4)), [[5.0, 1.0]])


@pytest.mark.parametrize(("xy", "step", "match"), [
    (np.zeros((3, 3)), 0.5, r"\(N, 2\)"),
    (np.zeros((0, 2)), 0.5, r"\(N, 2\)"),
    (np.array([[0.0, 0.0], [np.nan, 1.0]]), 0.5, "NaN"),
    (np.zeros((3, 2)), 0.0, "step_m"),
])
def test_bad_trajectories_are_rejected_with_a_fix(xy, step, match):
    with pytest.raises(TrajectoryError, match=match):
        resample_by_arc_length(xy, step)


# --- Fréchet and DTW --------------------------------------------------------------------------------------


def test_parallel_lines_at_offset_d():
    a, b = line(0, 50, 0.0), line(0, 50, 1.75)
    assert discrete_frechet(a, b) == 1.75
    assert dtw(a, b) == pytest.approx(len(a) * 1.75, rel=1e-12)  # the diagonal path, d at every vertex
    assert area_between_curves(a, b) == pytest.approx(1.75 * 50, rel=1e-12)


def test_frechet_hand_computed_cases():
    a = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert discrete_frechet(a, a[::-1]) == 2.0  # both ends are coupled to the opposite end
    assert discrete_frechet(a, a + np.array([3.0, 0.0])) == 3.0
    assert discrete_frechet(a, a + np.array([3.0, 4.0])) == 5.0
    bump = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    assert discrete_frechet(bump, np.array([[0.0, 0.0], [2.0, 0.0]])) == math.sqrt(2.0)


def test_dtw_hand_computed_cases():
    assert dtw(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 0.0], [2.0, 0.0]])) == 1.0
    on_x = lambda *xs: np.column_stack([xs, np.zeros(len(xs))])  # noqa: E731
    assert dtw(on_x(0, 1, 2), on_x(0, 0, 3)) == 2.0  # path (0,0) (0,1) (1,1) (2,2): 0 + 0 + 1 + 1
    assert dtw(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]])) == 5.0
    assert dtw(on_x(0, 1, 2, 3), on_x(0, 1, 1, 1, 2, 3)) == 0.0


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_sweeps_match_the_textbook_table_and_are_symmetric(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 14, size=2)
    a, b = rng.normal(size=(n, 2)) * 3, rng.normal(size=(m, 2)) * 3
    assert discrete_frechet(a, b) == pytest.approx(naive_dp(a, b, "max"), abs=1e-12)
    assert dtw(a, b) == pytest.approx(naive_dp(a, b, "sum"), rel=1e-12)
    assert discrete_frechet(a, b) == discrete_frechet(b, a)
    assert dtw(a, b) == dtw(b, a)


# --- area ------------------------------------------------------------------------------------------------


def test_area_of_crossing_lines_is_the_mean_of_both_distance_integrals():
    a = np.array([[0.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    b = np.array([[0.0, -1.0], [5.0, 0.0], [10.0, 1.0]])  # crosses a at x = 5
    # along a: |0.2x - 1| / sqrt(1.04) integrates to 5 / sqrt(1.04); along b: |0.2x - 1| * sqrt(1.04) ds/dx
    expected = 0.5 * (5 / math.sqrt(1.04) + 5 * math.sqrt(1.04))
    assert area_between_curves(a, b) == pytest.approx(expected, rel=1e-12)
    assert area_between_curves(a, b) == area_between_curves(b, a)


def test_area_between_concentric_arcs_is_the_annulus_sector():
    theta = np.linspace(0, math.pi / 2, 2001)
    inner = np.column_stack([20 * np.cos(theta), 20 * np.sin(theta)])
    outer = np.column_stack([22 * np.cos(theta), 22 * np.sin(theta)])
    assert area_between_curves(inner, outer) == pytest.approx(math.pi / 2 * 2 * (20 + 1), rel=1e-5)


def test_a_path_that_stops_early_pays_for_the_rest_of_the_reference():
    ref, stub = line(0, 10, 0.0), line(0, 5, 0.0)
    # along ref: distance to stub's end grows linearly from 0 at x=5 to 5 at x=10 (area 12.5); along stub: 0
    assert area_between_curves(stub, ref) == pytest.approx(0.5 * 12.5, rel=1e-12)


# --- curve length ----------------------------------------------------------------------------------------


def test_curve_length_hand_computed_and_matches_the_published_formula_for_positive_means():
    ref = np.array([[10.0, 10.0], [20.0, 10.0]])
    up_1m = ref + np.array([0.0, 1.0])
    assert curve_length_measure(ref, up_1m) == pytest.approx(math.sqrt(2) * math.log(1.1), rel=1e-12)
    rng = np.random.default_rng(3)
    ref = np.column_stack([np.linspace(100, 160, 40), 50 + np.sin(np.linspace(0, 3, 40)) * 5])
    other = np.column_stack([np.linspace(101, 158, 55), 50.5 + np.sin(np.linspace(0, 3.2, 55)) * 4])
    other += rng.normal(scale=0.1, size=other.shape)
    assert curve_length_measure(ref, other) == pytest.approx(published_curve_length(ref, other), rel=1e-12)


def test_curve_length_is_finite_for_negative_or_zero_means_and_needs_a_moving_reference():
    ref = line(-100, -20, -0.5)  # mean x < 0, |mean y| < min_scale_m
    value = curve_length_measure(ref, ref + np.array([0.0, 3.0]))
    expected_per_point = math.log(1 + 3.0 / 1.0) ** 2
    assert value == pytest.approx(math.sqrt(len(ref) * expected_per_point), rel=1e-12)
    with pytest.raises(TrajectoryError, match="zero length"):
        curve_length_measure(np.array([[1.0, 1.0], [1.0, 1.0]]), ref)


# --- the four together -----------------------------------------------------------------------------------


def wavy_path(n=400):
    s = np.linspace(0, 120, n)
    return np.column_stack([s, 4 * np.sin(s / 15)])


def test_identical_trajectories_score_zero_everywhere():
    path = wavy_path()
    assert trajectory_similarity(path, path) == {"frechet_m": 0.0, "dtw_m": 0.0, "area_m2": 0.0,
                                                  "curve_length": 0.0}


def test_trajectory_similarity_is_deterministic_and_uses_the_resampled_paths():
    reference = wavy_path()
    driven = reference + np.column_stack([np.zeros(len(reference)), 0.3 * np.cos(reference[:, 0] / 7)])
    driven = np.concatenate([driven[:1].repeat(5, axis=0), driven])  # a wait at the start changes nothing
    out = trajectory_similarity(driven, reference, step_m=1.0)
    assert out == trajectory_similarity(driven, reference, step_m=1.0)
    d, r = resample_by_arc_length(driven, 1.0), resample_by_arc_length(reference, 1.0)
    assert out == {"frechet_m": discrete_frechet(d, r), "dtw_m": dtw(d, r), "area_m2": area_between_curves(d, r),
                   "curve_length": curve_length_measure(r, d)}
    assert 0.0 < out["frechet_m"] <= 0.3 + 1.0  # lateral wobble of 0.3 m plus at most one step of phase
