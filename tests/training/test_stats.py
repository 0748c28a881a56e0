import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

import training.stats as stats
from training.stats import StatsError, bootstrap_ci, relative_change, summarise


def sample(n, seed=1):
    return np.random.default_rng(seed).normal(loc=5.0, scale=2.0, size=n)


def test_ci_contains_the_mean_and_is_deterministic_for_a_seed():
    x = sample(30)
    est, low, high = bootstrap_ci(x, n_resamples=2000, seed=7)
    assert est == float(np.mean(x))
    assert low < est < high
    assert bootstrap_ci(x, n_resamples=2000, seed=7) == (est, low, high)
    assert bootstrap_ci(x, n_resamples=2000, seed=8) != (est, low, high)


def test_ci_width_shrinks_with_more_data():
    _, lo_small, hi_small = bootstrap_ci(sample(20), n_resamples=2000)
    _, lo_big, hi_big = bootstrap_ci(sample(2000), n_resamples=2000)
    assert hi_big - lo_big < 0.5 * (hi_small - lo_small)


def test_constant_data_gives_a_point_interval():
    assert bootstrap_ci([3.25] * 7) == (3.25, 3.25, 3.25)
    est, low, high = bootstrap_ci([0.1] * 10)
    assert low == est == high == pytest.approx(0.1)
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)


def test_two_values_give_the_full_range_at_95_percent():
    # resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0], n_resamples=10000) == (0.5, 0.0, 1.0)


def test_median_statistic_and_small_blocks_fill_every_resample(monkeypatch):
    x = sample(50)
    est, low, high = bootstrap_ci(x, n_resamples=1000, statistic=np.median)
    assert est == float(np.median(x)) and low < est < high
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 7 * 50)  # 7 rows per block, last block partial
    a = bootstrap_ci(x, n_resamples=1000, seed=3)
    assert a == bootstrap_ci(x, n_resamples=1000, seed=3)
    assert x.min() < a[1] < a[0] < a[2] < x.max()


FIXED = {  # 4 trials per cell as the demo runs them, a skewed sample, a failure among successes
    "completion": [0.93, 1.0, 1.0, 0.4],
    "skewed": [0.1, 0.2, 0.15, 0.9, 0.3],
    "one_failure": [1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
    "exponential": np.random.default_rng(3).exponential(size=12).tolist(),
}


@pytest.mark.parametrize(("name", "method", "scipy_method", "statistic"), [
    (name, method, scipy_method, statistic) for name in FIXED
    for method, scipy_method in (("bca", "BCa"), ("percentile", "percentile")) for statistic in (np.mean, np.median)
    if (name, method, statistic) != ("one_failure", "bca", np.median)])  # degenerate: the next test
def test_intervals_equal_scipy_bootstrap_on_fixed_data(name, method, scipy_method, statistic):
    x = np.asarray(FIXED[name])
    ours = bootstrap_ci(x, n_resamples=10000, seed=5, statistic=statistic, method=method)
    theirs = scipy_stats.bootstrap((x,), statistic, n_resamples=10000, confidence_level=0.95,
                                   method=scipy_method, rng=np.random.default_rng(5)).confidence_interval
    assert ours[1:] == pytest.approx((theirs.low, theirs.high), rel=1e-12, abs=1e-12)


def test_bca_without_jackknife_spread_has_no_acceleration_where_scipy_gives_nan():
    x = np.asarray(FIXED["one_failure"])  # every leave-one-out median is 1.0
    with pytest.warns(scipy_stats.DegenerateDataWarning):
        theirs = scipy_stats.bootstrap((x,), np.median, n_resamples=10000, method="BCa",
                                       rng=np.random.default_rng(5)).confidence_interval
    assert math.isnan(theirs.low) and math.isnan(theirs.high)
    est, low, high = bootstrap_ci(x, seed=5, statistic=np.median)
    assert est == 1.0 and high == 1.0 and 0.0 <= low < 1.0


def test_bca_moves_the_interval_towards_the_long_tail():
    _, low, high = bootstrap_ci(FIXED["skewed"], seed=5)
    _, p_low, p_high = bootstrap_ci(FIXED["skewed"], seed=5, method="percentile")
    assert (round(low, 4), round(high, 4)) == (0.16, 0.76) and (round(p_low, 4), round(p_high, 4)) == (0.14, 0.62)
    assert low > p_low and high > p_high  # one value far above the rest: the mean's uncertainty lies upwards


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"values": []}, "at least one value"),
    ({"values": [1.0, math.nan]}, "NaN"),
    ({"values": [1.0, 2.0], "confidence": 1.5}, "confidence"),
    ({"values": [1.0, 2.0], "n_resamples": 0}, "n_resamples"),
    ({"values": [1.0, 2.0], "method": "studentized"}, "unknown CI method 'studentized'; one of bca, percentile"),
])
def test_bad_input_is_rejected(kwargs, match):
    with pytest.raises(StatsError, match=match):
        bootstrap_ci(**kwargs)


def test_relative_change():
    assert relative_change(50.0, 100.0) == -0.5
    assert relative_change(150.0, 100.0) == 0.5
    assert relative_change(-50.0, -100.0) == 0.5  # relative to |baseline|: up is positive
    assert math.isnan(relative_change(1.0, 0.0))
    assert math.isnan(relative_change(0.0, 0.0))


def results_rows():
    """Rows as training.evaluation.read_results returns them: every value a string."""
    rows = []
    for policy, rc in (("caril", ("1.0", "0.8", "0.9")), ("regression", ("0.5", "0.5", ""))):
        for route in ("straight", "one-turn"):
            for trial, value in enumerate(rc):
                rows.append({"route": route, "policy": policy, "trial": str(trial), "route_completion": value,
                             "collisions": str(trial % 2)})
    return rows


def test_summarise_groups_in_order_with_mean_and_ci():
    out = summarise(results_rows(), ("policy",), ("route_completion", "collisions"), n_resamples=500)
    assert [r["policy"] for r in out] == ["caril", "regression"]
    caril, regression = out
    assert caril["n"] == 6 and caril["route_completion_n"] == 6
    assert caril["route_completion_mean"] == pytest.approx(0.9, rel=1e-15)
    assert caril["route_completion_low"] < 0.9 < caril["route_completion_high"]
    assert regression["route_completion_n"] == 4  # blank cells are skipped
    assert (regression["route_completion_mean"], regression["route_completion_low"],
            regression["route_completion_high"]) == (0.5, 0.5, 0.5)
    assert caril["collisions_mean"] == pytest.approx(2 / 6, rel=1e-15)
    assert summarise(results_rows(), ("policy",), ("route_completion",), n_resamples=500) == \
        [{k: v for k, v in r.items() if not k.startswith("collisions")} for r in out]


def test_summarise_by_two_keys_and_missing_columns():
    out = summarise(results_rows(), ("route", "policy"), ("route_completion",), n_resamples=200)
    assert [(r["route"], r["policy"], r["n"]) for r in out] == [
        ("straight", "caril", 3), ("one-turn", "caril", 3), ("straight", "regression", 3),
        ("one-turn", "regression", 3)]
    with pytest.raises(StatsError, match="no column 'weather' to group by"):
        summarise(results_rows(), ("weather",), ("route_completion",))
    with pytest.raises(StatsError, match="no column 'speed'"):
        summarise(results_rows(), ("policy",), ("speed",))
