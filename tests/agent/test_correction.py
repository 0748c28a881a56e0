"""Confidence-aware correction: every branch of the paper's rule, the deterministic strategies, safety."""

import json
import math
import re

import numpy as np
import pytest

from agent import correction
from agent.bins import SteeringBins
from agent.correction import (
    STRATEGIES,
    STRATEGY_RULES,
    CorrectionParams,
    CorrectionRecord,
    InvalidProbabilitiesError,
    correct,
    entropy,
    temperature_scale,
    validate_probs,
)
from sim.errors import CarilError, UnknownNameError, UsageError

BINS = SteeringBins()
EDGE = 1 / 11  # the straight bin (5) is [-EDGE, EDGE]


def peaked(c: int, m: float, n: int = 11) -> np.ndarray:
    """Probability m on bin c, the rest spread evenly."""
    p = np.full(n, (1.0 - m) / (n - 1))
    p[c] = m
    return p


def uniform(n: int = 11) -> np.ndarray:
    return np.full(n, 1.0 / n)


def mean_in_order(samples: np.ndarray) -> float:
    """The mean with the samples added first to last (NumPy's mean adds pairwise: it can differ by an ulp)."""
    total = 0.0
    for x in samples.tolist():
        total += x
    return total / len(samples)


# ------------------------------------------------------------------------------------------------- caril


@pytest.mark.parametrize("r", [0.0, 0.2, -0.25, 0.27, -0.27])  # bins 5, 6, 4, 6, 4: within one bin of 5
def test_caril_confident_and_consistent_keeps_regression(r):
    rec = correct("caril", r, peaked(5, 0.95), np.random.default_rng(0))
    assert rec.rule == "keep_regression_agree"
    assert rec.steer == r
    assert rec.predicted_bin == 5 and abs(rec.regression_bin - 5) <= 1


def test_caril_confidence_threshold_is_inclusive():
    p = peaked(5, 0.9)
    assert p.max() == 0.9
    assert correct("caril", 0.2, p, np.random.default_rng(0)).rule == "keep_regression_agree"
    assert correct("caril", 0.2, peaked(5, 0.8999), np.random.default_rng(0)).rule == "gaussian_blend"


@pytest.mark.parametrize(("r", "c"), [(0.5, 5), (-0.5, 5), (0.0, 9), (-1.0, 3), (0.0, 0)])
def test_caril_confident_and_inconsistent_samples_inside_the_confident_bin(r, c):
    p = peaked(c, 0.97)
    rec = correct("caril", r, p, np.random.default_rng(7))
    lo, hi = BINS.interval(c)
    assert rec.rule == "confident_bin_sample"
    assert lo <= rec.steer <= hi
    samples = np.random.default_rng(7).uniform(lo, hi, size=10)  # NumPy's own 10 samples from that generator ...
    assert rec.steer == mean_in_order(samples)  # ... averaged
    assert rec.steer == pytest.approx(samples.mean(), rel=1e-15)


def test_caril_sample_count_is_a_parameter():
    params = CorrectionParams(n_samples=1)
    rec = correct("caril", 0.5, peaked(5, 0.95), np.random.default_rng(3), params=params)
    assert rec.steer == np.random.default_rng(3).uniform(-EDGE, EDGE)


def test_caril_agreement_tolerance_is_a_parameter():
    rng = np.random.default_rng(0)
    params = CorrectionParams(agree_bins=0)
    assert correct("caril", 0.2, peaked(5, 0.95), rng, params=params).rule == "confident_bin_sample"
    assert correct("caril", 0.05, peaked(5, 0.95), rng, params=params).rule == "keep_regression_agree"


def test_caril_regression_bin_is_not_clipped_for_the_agreement_test():
    # The reference uses np.digitize(r, edges) - 1: r = 1.0 is "bin 11", two bins from 9, although the
    # record's (clipped) regression_bin is 10.
    rng = np.random.default_rng(1)
    rec = correct("caril", 1.0, peaked(9, 0.95), rng)
    assert rec.rule == "confident_bin_sample" and rec.regression_bin == 10
    lo, hi = BINS.interval(9)
    assert lo <= rec.steer <= hi
    # ... and r = 1.3 is "bin 11", next to 10: kept (then clipped to the steering range).
    rec = correct("caril", 1.3, peaked(10, 0.95), rng)
    assert rec.rule == "keep_regression_agree" and rec.steer == 1.0 and rec.steer_regression == 1.3
    rec = correct("caril", -1.2, peaked(0, 0.95), rng)  # "bin -1", next to 0
    assert rec.rule == "keep_regression_agree" and rec.steer == -1.0


def test_caril_very_uncertain_keeps_regression():
    rec = correct("caril", 0.3, uniform(), np.random.default_rng(0))
    assert rec.rule == "uncertain_keep_regression"
    assert rec.steer == 0.3
    assert rec.entropy == pytest.approx(math.log(11), abs=1e-6) and rec.entropy > 1.5


@pytest.mark.parametrize(
    "p",
    [
        peaked(3, 0.7),  # 0.5 <= m < 0.9
        peaked(3, 0.5),  # m = 0.5 is not "< 0.5"
        np.array([0.45, 0.45, 0.1] + [0.0] * 8),  # m < 0.5 but entropy ~0.95 nats <= 1.5
    ],
)
def test_caril_otherwise_averages_normal_samples_with_the_variance_of_the_probabilities(p):
    r = 0.1
    rec = correct("caril", r, p, np.random.default_rng(11))
    assert rec.rule == "gaussian_blend"
    # Var(p) is the population variance of the 11 probability values, used as the steering noise variance.
    samples = np.random.default_rng(11).normal(r, math.sqrt(np.var(p)), size=10)
    assert rec.steer == pytest.approx(mean_in_order(samples), rel=1e-12, abs=1e-15)
    assert rec.steer != r


def test_caril_is_deterministic_for_a_seed_and_differs_between_seeds():
    for r, p in [(0.5, peaked(5, 0.95)), (0.1, peaked(3, 0.7))]:  # both sampling branches
        a = correct("caril", r, p, np.random.default_rng(42))
        b = correct("caril", r, p, np.random.default_rng(42))
        c = correct("caril", r, p, np.random.default_rng(43))
        assert a == b
        assert a.steer != c.steer


def test_caril_without_rng_uses_seed_zero_per_call():
    p = peaked(3, 0.7)
    a, b = correct("caril", 0.1, p), correct("caril", 0.1, p)
    assert a == b
    assert a == correct("caril", 0.1, p, np.random.default_rng(0))


def test_caril_draws_only_in_sampling_branches():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    correct("caril", 0.0, peaked(5, 0.95), rng)  # keep_regression_agree
    correct("caril", 0.0, uniform(), rng)  # uncertain_keep_regression
    assert rng.bit_generator.state == state
    correct("caril", 0.5, peaked(5, 0.95), rng)
    assert rng.bit_generator.state != state


# ------------------------------------------------------------------------------------ other strategies


def test_regression_strategy_is_the_regression_clipped():
    assert correct("regression", 0.37, peaked(0, 0.99)).steer == 0.37
    rec = correct("regression", 1.7, uniform())
    assert rec.rule == "regression" and rec.steer == 1.0 and rec.steer_regression == 1.7


def test_classification_strategies():
    rec = correct("classification", 0.0, peaked(8, 0.6))
    assert rec.rule == "classification_argmax" and rec.steer == BINS.centres[8]
    assert rec.steer == pytest.approx(6 / 11)
    assert correct("classification_expected", 0.3, uniform()).steer == 0.0
    p = np.zeros(11)
    p[5] = p[6] = 0.5
    rec = correct("classification_expected", 0.3, p)
    assert rec.rule == "classification_expected" and rec.steer == pytest.approx(BINS.centres[6] / 2, abs=1e-15)


@pytest.mark.parametrize(
    ("r", "p", "steer", "rule"),
    [
        (0.5, peaked(5, 0.95), EDGE, "clamp_moved"),  # the nearest point of the confident bin
        (-0.5, peaked(5, 0.95), -EDGE, "clamp_moved"),
        (0.2, peaked(5, 0.95), EDGE, "clamp_moved"),  # a neighbour bin is pulled in too
        (0.05, peaked(5, 0.95), 0.05, "clamp_inside"),
        (0.5, peaked(5, 0.9), EDGE, "clamp_moved"),
        (0.5, peaked(5, 0.8), 0.5, "clamp_not_confident"),
        (-0.5, peaked(8, 0.99), BINS.edges[8], "clamp_moved"),
        (1.4, peaked(10, 0.99), 1.0, "clamp_moved"),
    ],
)
def test_clamp_exact_values(r, p, steer, rule):
    rec = correct("clamp", r, p)
    assert (rec.steer, rec.rule) == (steer, rule)


def test_clamp_margin_widens_the_confident_bin():
    params = CorrectionParams(clamp_margin_bins=1)
    assert correct("clamp", 0.2, peaked(5, 0.95), params=params).rule == "clamp_inside"
    rec = correct("clamp", 0.5, peaked(5, 0.95), params=params)
    assert (rec.steer, rec.rule) == (BINS.edges[7], "clamp_moved")
    rec = correct("clamp", -0.9, peaked(0, 0.95), params=params)  # the range ends the span
    assert (rec.steer, rec.rule) == (-0.9, "clamp_inside")


@pytest.mark.parametrize(
    ("r", "p", "steer", "rule"),
    [
        (0.5, peaked(5, 0.95), EDGE, "blend_pull"),  # w = 1: exactly clamp
        (0.5, peaked(5, 0.9), EDGE, "blend_pull"),
        (0.5, peaked(5, 0.7), 0.5 + 0.5 * (EDGE - 0.5), "blend_pull"),  # w = (0.7 - 0.5) / 0.4 = 0.5
        (-0.5, peaked(5, 0.6), -0.5 + 0.25 * (0.5 - EDGE), "blend_pull"),  # w = 0.25
        (0.5, peaked(5, 0.5), 0.5, "blend_uncertain"),  # w = 0
        (0.3, uniform(), 0.3, "blend_uncertain"),
        (0.05, peaked(5, 0.95), 0.05, "blend_inside"),
    ],
)
def test_blend_exact_values(r, p, steer, rule):
    rec = correct("blend", r, p)
    assert rec.rule == rule
    assert rec.steer == pytest.approx(steer, rel=1e-12, abs=1e-15)


def test_blend_equals_clamp_when_confident():
    for r in np.linspace(-1.5, 1.5, 61):
        for c in (0, 3, 5, 10):
            p = peaked(c, 0.93)
            assert correct("blend", r, p).steer == correct("clamp", r, p).steer


@pytest.mark.parametrize("strategy", ["clamp", "blend", "regression", "classification_expected"])
def test_deterministic_strategies_are_non_decreasing_in_the_regression(strategy):
    r = np.linspace(-1.5, 1.5, 601)
    for p in (peaked(5, 0.95), peaked(2, 0.7), peaked(9, 0.55), uniform()):
        steer = np.array([correct(strategy, x, p).steer for x in r])
        assert np.all(np.diff(steer) >= 0.0)


def test_blend_is_continuous_in_confidence():
    # |d steer| <= |d w| * |target - r|: no jump at either threshold.
    m = np.linspace(0.3, 1.0, 1401)
    steer = np.array([correct("blend", 0.5, peaked(5, x)).steer for x in m])
    dw = (m[1] - m[0]) / 0.4
    assert np.max(np.abs(np.diff(steer))) <= dw * (0.5 - EDGE) + 1e-12
    assert steer[0] == 0.5 and steer[-1] == EDGE


def test_blend_is_continuous_where_the_most_probable_bin_switches():
    # The argmax can only switch at a tie, i.e. at m <= 0.5, where blend keeps the regression.
    p = np.zeros(11)
    p[2], p[8] = 0.5 + 1e-9, 0.5 - 1e-9
    a = correct("blend", 0.0, p).steer
    b = correct("blend", 0.0, p[::-1].copy()).steer
    assert a == pytest.approx(0.0, abs=1e-7) and b == pytest.approx(0.0, abs=1e-7)


def test_deterministic_strategies_repeat_exactly():
    for name in ("regression", "classification", "classification_expected", "clamp", "blend"):
        p = peaked(4, 0.8)
        assert correct(name, 0.33, p, np.random.default_rng(1)) == correct(name, 0.33, p, np.random.default_rng(2))


def test_every_reported_rule_is_listed():
    assert set(STRATEGY_RULES) == set(STRATEGIES)
    seen = {name: set() for name in STRATEGIES}
    rng = np.random.default_rng(0)
    for name in STRATEGIES:
        for r in (-1.2, -0.5, -0.2, 0.0, 0.05, 0.2, 0.5, 1.0, 1.3):
            for p in (peaked(5, 0.95), peaked(0, 0.99), peaked(3, 0.7), uniform(), np.array([0.45, 0.55] + [0] * 9)):
                seen[name].add(correct(name, r, p, rng).rule)
    for name in STRATEGIES:
        assert seen[name] == set(STRATEGY_RULES[name]), name


# ------------------------------------------------------------------------------------------ the record


def test_record_fields_and_plain_dict():
    rec = correct("caril", 0.5, peaked(5, 0.95).astype(np.float32), np.random.default_rng(0))
    assert isinstance(rec, CorrectionRecord)
    assert rec.strategy == "caril" and rec.reason == ""
    assert rec.max_prob == pytest.approx(0.95) and rec.predicted_bin == 5 and rec.regression_bin == 8
    assert rec.entropy == pytest.approx(entropy(peaked(5, 0.95)), rel=1e-6)
    assert len(rec.class_probs) == 11 and all(type(x) is float for x in rec.class_probs)
    d = rec.to_dict()
    assert set(d) >= {"strategy", "steer_regression", "class_probs", "max_prob", "entropy", "predicted_bin"}
    assert set(d) >= {"regression_bin", "rule", "steer", "reason"}
    assert type(d["class_probs"]) is list and type(d["steer"]) is float and type(d["predicted_bin"]) is int
    assert json.loads(json.dumps(d)) == d
    with pytest.raises(AttributeError):
        rec.steer = 0.0


def test_fast_path_gives_the_general_paths_evidence_bit_for_bit():
    """The control loop's one-pass evidence equals the general checked path's, value for value."""
    rng = np.random.default_rng(3)
    cases = [(0.0, uniform()), (-1.3, peaked(0, 0.99)), (1.0, peaked(10, 0.95)), (EDGE, peaked(5, 0.5))]
    tie = np.zeros(11)
    tie[[2, 7]] = 0.5  # tied maxima: the first one is the most probable bin
    cases.append((0.3, tie))
    for _ in range(300):
        logits = rng.normal(scale=rng.uniform(0.1, 8.0), size=11)
        for dtype in (np.float64, np.float32):
            cases.append((float(rng.uniform(-1.5, 1.5)), temperature_scale(logits).astype(dtype)))
    for r, p in cases:
        fast = correction._fast_evidence(r, p, BINS)
        probs, reason = correction._read_probs(p, 11, 1e-3)
        if fast is None:  # float32 sums off 1 by more than rounding: renormalised by the general path
            assert reason == "" and abs(float(np.sum(p, dtype=np.float64)) - 1.0) > 1e-9
            continue
        assert fast == correction._evidence(r, probs, BINS)
    assert sum(correction._fast_evidence(r, p, BINS) is not None for r, p in cases) > 300


@pytest.mark.parametrize("r, p", [
    (math.nan, uniform()), (math.inf, uniform()), (1, uniform()), (np.float32(0.1), uniform()),
    (0.1, np.append(uniform(10), np.nan)), (0.1, -peaked(5, 0.9)), (0.1, uniform().tolist()),
    (0.1, uniform()[None]), (0.1, uniform(10)), (0.1, np.ones(11, dtype=np.int64)), (0.1, uniform() * 1.01),
])
def test_fast_path_leaves_everything_unusual_to_the_general_path(r, p):
    assert correction._fast_evidence(r, p, BINS) is None


@pytest.mark.parametrize(
    ("r", "p"),
    [
        (np.float32(0.25), peaked(5, 0.95)),
        (np.array([0.25]), peaked(5, 0.95)),
        (np.array([[0.25]]), peaked(5, 0.95)[None, :]),  # the network's batch of one
        (0.25, list(peaked(5, 0.95))),
        (0.25, tuple(peaked(5, 0.95).astype(np.float32))),
    ],
)
def test_accepts_the_shapes_a_network_returns(r, p):
    rec = correct("caril", r, p)
    assert rec.rule == "keep_regression_agree" and rec.steer == pytest.approx(0.25)


def test_small_sum_deviation_is_renormalised():
    p = peaked(5, 0.95) * 1.0005
    rec = correct("classification_expected", 0.0, p)
    assert rec.rule == "classification_expected"
    assert math.fsum(rec.class_probs) == pytest.approx(1.0, abs=1e-12)
    assert rec.max_prob == pytest.approx(0.95)


# --------------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize(
    ("r", "p", "reason"),
    [
        (math.nan, peaked(5, 0.95), "regression steer is nan"),
        (math.inf, peaked(5, 0.95), "regression steer is inf"),
        (None, peaked(5, 0.95), "no regression steer"),
        (np.array([0.1, 0.2]), peaked(5, 0.95), "regression must be one number"),
        ("left", peaked(5, 0.95), "regression is not a number"),
        (0.1, np.where(np.arange(11) == 3, np.nan, 0.1), "finite and >= 0, found nan"),
        (0.1, np.where(np.arange(11) == 3, np.inf, 0.1), "finite and >= 0, found inf"),
        (0.1, np.array([-0.1, 1.1] + [0.0] * 9), r"finite and >= 0, found -0.1"),
        (0.1, np.full(11, 0.05), r"sum to 0.55, not 1 \(tolerance 0.001\)"),
        (0.1, peaked(5, 0.95) * 1.002, "sum to 1.002, not 1"),
        (0.1, np.zeros(11), "sum to 0, not 1"),
        (0.1, uniform(10), "expected 11 class probabilities"),
        (0.1, np.full((2, 11), 1 / 11), r"one probability vector, got shape \(2, 11\)"),
        (0.1, None, "no class probabilities"),
        (0.1, ["a"] * 11, "not numbers"),
        (math.nan, uniform(10), "regression steer is nan; expected 11"),
    ],
)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_invalid_inputs_fall_back_to_straight_without_raising(strategy, r, p, reason):
    rec = correct(strategy, r, p, np.random.default_rng(0))
    assert rec.rule == "fallback_invalid"
    assert rec.steer == 0.0
    assert rec.strategy == strategy
    assert rec.predicted_bin == -1 and rec.regression_bin == -1 and math.isnan(rec.max_prob)
    assert re.search(reason, rec.reason), rec.reason
    json.dumps(rec.to_dict())


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown correction 'caril2'; valid corrections: regression, "):
        correct("caril2", 0.0, uniform())
    with pytest.raises(UnknownNameError, match="caril, clamp, blend"):
        correct("", 0.0, uniform())


def test_validate_probs_raises_for_offline_use():
    np.testing.assert_allclose(validate_probs(peaked(5, 0.95) * 1.0005, 11).sum(), 1.0)
    for bad, match in [
        (np.full(11, 0.05), "sum to 0.55"),
        (uniform(10), "expected 11"),
        ([np.nan] * 11, "found nan"),
        ([], "empty"),
    ]:
        with pytest.raises(InvalidProbabilitiesError, match=match):
            validate_probs(bad, 11 if len(bad) else None)
    assert issubclass(InvalidProbabilitiesError, CarilError) and issubclass(InvalidProbabilitiesError, ValueError)


# ---------------------------------------------------------------------------------- helpers and params


def test_entropy():
    assert entropy(uniform(), eps=0.0) == pytest.approx(math.log(11), abs=1e-12)
    assert entropy(uniform()) == pytest.approx(math.log(11), abs=2e-7)  # the reference's +1e-8
    assert entropy(np.eye(11)[3], eps=0.0) == 0.0
    assert entropy([0.5, 0.5], eps=0.0) == pytest.approx(math.log(2))
    batch = entropy(np.stack([uniform(), np.eye(11)[0]]), eps=0.0)
    np.testing.assert_allclose(batch, [math.log(11), 0.0], atol=1e-12)


def test_temperature_scale():
    logits = np.array([1.0, 2.0, 3.0])
    plain = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(temperature_scale(logits), plain, rtol=1e-12)
    np.testing.assert_allclose(temperature_scale(logits * 2.0, 2.0), plain, rtol=1e-12)
    big = temperature_scale(np.array([1000.0, 1001.0, -1e6]))  # no overflow
    np.testing.assert_allclose(big, [1 / (1 + math.e), math.e / (1 + math.e), 0.0], rtol=1e-12)
    batch = temperature_scale(np.random.default_rng(0).normal(size=(4, 11)) * 5, 1.5)
    np.testing.assert_allclose(batch.sum(axis=-1), 1.0, rtol=1e-12)
    assert entropy(temperature_scale(logits, 3.0)) > entropy(plain) > entropy(temperature_scale(logits, 0.5))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(UsageError, match="temperature must be a finite number > 0"):
            temperature_scale(logits, bad)


def test_params_round_trip():
    params = CorrectionParams(confidence_threshold=0.8, agree_bins=2, n_samples=20, clamp_margin_bins=1)
    data = json.loads(json.dumps(params.to_dict()))
    assert CorrectionParams.from_dict(data) == params
    assert CorrectionParams.from_dict({}) == CorrectionParams()
    with pytest.raises(UsageError, match=r"unknown correction parameters \['threshold'\]"):
        CorrectionParams.from_dict({"threshold": 0.9})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"confidence_threshold": 1.5}, r"confidence_threshold must be in \(0, 1\]"),
        ({"confidence_threshold": 0.0}, r"confidence_threshold must be in \(0, 1\]"),
        ({"uncertain_max_prob": 0.9}, r"uncertain_max_prob must be in \[0, confidence_threshold=0.9\)"),
        ({"uncertain_entropy_nats": -1.0}, "uncertain_entropy_nats must be >= 0"),
        ({"n_samples": 0}, "n_samples must be >= 1"),
        ({"agree_bins": -1}, "must be >= 0"),
        ({"agree_bins": 1.5}, "agree_bins must be an integer"),
        ({"confidence_threshold": math.nan}, "confidence_threshold must be a finite number"),
        ({"prob_sum_tolerance": 0.0}, r"prob_sum_tolerance must be in \(0, 1\)"),
    ],
)
def test_invalid_params(kwargs, match):
    with pytest.raises(UsageError, match=match):
        CorrectionParams(**kwargs)


def test_other_bin_counts():
    bins = SteeringBins(5)
    rec = correct("clamp", 0.9, peaked(2, 0.95, n=5), bins=bins)
    assert (rec.steer, rec.rule) == (0.2, "clamp_moved")
    assert correct("clamp", 0.9, peaked(2, 0.95), bins=bins).rule == "fallback_invalid"  # 11 probs for 5 bins
