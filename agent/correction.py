"""Confidence-aware correction: the classification head's confidence adjusts the regression head's steering.

This is the paper's contribution (CARIL, arXiv 2503.00783), kept free of any network so it can be tested,
swept and replayed offline. Everything works on NORMALISED steering, the paper's "x4" units in [-1, 1]
(CARLA steer = steer / 4), and on the class probabilities over :class:`agent.bins.SteeringBins` (11 by default).
Pass temperature-scaled probabilities (:func:`temperature_scale`) when the agent has a calibrated temperature:
every threshold below is a threshold on a probability.

``correct(strategy, steer_regression, class_probs, rng)`` returns a :class:`CorrectionRecord` naming the rule
that fired. Strategies, by name (:data:`STRATEGIES`):

- ``regression``: the regression head alone (the paper's "W/O correction" baseline).
- ``classification``: the centre of the most probable bin; ``classification_expected``: the probability-weighted
  mean of the centres.
- ``caril``: the paper's rule, exactly as its reference code applies it (two branches draw random samples and
  average them, added in order: within an ulp of NumPy's pairwise mean).
- ``clamp`` and ``blend``: deterministic improvements of this project (see their docstrings).

Two ways to check inputs, on purpose:

- :func:`correct` never raises on bad numbers, because it runs inside the control loop: a NaN or infinite
  regression, or probabilities that are NaN, negative, of the wrong length or that do not sum to 1 within
  ``CorrectionParams.prob_sum_tolerance``, give a record with rule ``fallback_invalid``, steer 0.0 and a
  ``reason``. Small deviations from a sum of 1 are renormalised. An unknown strategy name does raise
  (:class:`sim.errors.UnknownNameError`): it is configuration, checked when the agent is built.
- :func:`validate_probs` raises :class:`InvalidProbabilitiesError` with the same diagnosis, for offline use
  (datasets, calibration, analysis).

Randomness: the ``caril`` strategy draws only from the ``rng`` passed in: a NumPy ``Generator`` (each call draws
exactly the samples it needs, the values NumPy's ``uniform``/``normal`` would give) or an :class:`agent.draws.Draws`
over one (samples taken from blocks drawn earlier: what the agent passes, see that module for why). With
``rng=None`` each call uses a fresh ``np.random.default_rng(0)``, so results are deterministic but every call
draws the SAME numbers (a fixed offset rather than noise): pass one seeded generator per episode for the
paper's behaviour.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from agent.bins import SteeringBins
from agent.draws import Draws, mean_of
from sim.errors import CarilError, UsageError, unknown_name

ENTROPY_EPS = 1e-8
"""The reference computes entropy as -sum(p * log(p + 1e-8)); the same epsilon keeps branch decisions equal."""

RULE_FALLBACK = "fallback_invalid"
_RENORMALISE_ABOVE = 1e-9  # sums closer to 1 than this are rounding, not worth changing the values for


class InvalidProbabilitiesError(CarilError, ValueError):
    """Class probabilities that are not a probability vector over the bins (raised by :func:`validate_probs`)."""


@dataclass(frozen=True)
class CorrectionParams:
    """Thresholds of the correction rules (defaults: the paper's reference code).

    confidence_threshold: max probability at or above which the classifier counts as confident (0.9).
    agree_bins: ``caril`` keeps the regression when its bin is within this many bins of the most probable one (1).
    uncertain_max_prob, uncertain_entropy_nats: ``caril`` keeps the regression when max prob < 0.5 AND entropy
        > 1.5 nats (the maximum for 11 bins is ln 11 ~ 2.398). ``blend`` starts pulling above uncertain_max_prob.
    n_samples: samples averaged by ``caril``'s two random branches (10 in the reference code).
    clamp_margin_bins: ``clamp``/``blend`` project into the confident bin widened by this many bins each side
        (0: the bin itself; 1: also accept its neighbours, like ``caril``'s agreement test).
    prob_sum_tolerance: probabilities whose sum is further than this from 1 are invalid; closer ones are
        renormalised (1e-3).
    """

    confidence_threshold: float = 0.9
    agree_bins: int = 1
    uncertain_max_prob: float = 0.5
    uncertain_entropy_nats: float = 1.5
    n_samples: int = 10
    clamp_margin_bins: int = 0
    prob_sum_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("agree_bins", "n_samples", "clamp_margin_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise UsageError(f"correction {name} must be an integer, got {value!r}")
        floats = ("confidence_threshold", "uncertain_max_prob", "uncertain_entropy_nats", "prob_sum_tolerance")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
                raise UsageError(f"correction {name} must be a finite number, got {value!r}")
        if not 0.0 < self.confidence_threshold <= 1.0:
            raise UsageError(f"confidence_threshold must be in (0, 1] (paper: 0.9), got {self.confidence_threshold}")
        if not 0.0 <= self.uncertain_max_prob < self.confidence_threshold:
            raise UsageError(
                f"uncertain_max_prob must be in [0, confidence_threshold={self.confidence_threshold}) (paper: 0.5), "
                f"got {self.uncertain_max_prob}"
            )
        if self.uncertain_entropy_nats < 0.0:
            raise UsageError(f"uncertain_entropy_nats must be >= 0 (paper: 1.5), got {self.uncertain_entropy_nats}")
        if self.agree_bins < 0 or self.clamp_margin_bins < 0:
            raise UsageError("agree_bins and clamp_margin_bins must be >= 0 (paper: agree_bins=1)")
        if self.n_samples < 1:
            raise UsageError(f"n_samples must be >= 1 (paper: 10), got {self.n_samples}")
        if not 0.0 < self.prob_sum_tolerance < 1.0:
            raise UsageError(f"prob_sum_tolerance must be in (0, 1) (default 1e-3), got {self.prob_sum_tolerance}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values that rebuild these parameters with :meth:`from_dict`."""
        return {
            "confidence_threshold": float(self.confidence_threshold),
            "agree_bins": int(self.agree_bins),
            "uncertain_max_prob": float(self.uncertain_max_prob),
            "uncertain_entropy_nats": float(self.uncertain_entropy_nats),
            "n_samples": int(self.n_samples),
            "clamp_margin_bins": int(self.clamp_margin_bins),
            "prob_sum_tolerance": float(self.prob_sum_tolerance),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorrectionParams:
        """Rebuild from a dict; missing keys take the defaults, unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(
                f"unknown correction parameters {sorted(unknown)}; valid: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**data)


class CorrectionRecord(NamedTuple):
    """What the correction decided and why, for one control tick (steering in normalised units).

    ``regression_bin`` is the (clipped) bin of the regression value; ``predicted_bin`` the most probable bin;
    ``entropy`` is in nats. ``rule`` names the branch that fired; ``reason`` is empty unless the rule is
    ``fallback_invalid``. In a fallback record the values that could not be read are NaN / -1. Immutable; a
    NamedTuple rather than a frozen dataclass because it is built on every control tick, and a tuple is built
    in one step where a frozen dataclass sets each of its ten fields through ``object.__setattr__``.
    """

    strategy: str
    steer_regression: float
    class_probs: tuple[float, ...]
    max_prob: float
    entropy: float
    predicted_bin: int
    regression_bin: int
    rule: str
    steer: float
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (class_probs as a list), for logs, recordings and the display."""
        d = self._asdict()
        d["class_probs"] = list(self.class_probs)
        return d


class Evidence(NamedTuple):
    """The checked inputs a strategy decides from (normalised steering, renormalised probabilities)."""

    steer_regression: float
    probs: tuple[float, ...]
    max_prob: float
    entropy: float
    predicted_bin: int
    regression_bin: int  # clipped to 0..n-1
    reference_bin: int  # np.digitize(r, edges) - 1 as the reference computes it: -1 below low, n at/above high


Rng = np.random.Generator | Draws | None
Strategy = Callable[[Evidence, SteeringBins, CorrectionParams, Rng], tuple[float, str]]

CORRECTION_REVISION = 1
"""Counts changes to what the corrections return for the same inputs and seed, as ``sim.embedded.SIM_REVISION``
does for the simulator (``caril evaluate`` refuses to resume results of another revision). 1: the agent takes
``caril``'s samples from blocks (:class:`agent.draws.Draws`), so its sampling ticks draw other numbers."""

DEFAULT_BINS = SteeringBins()
_new_tuple = tuple.__new__
"""Builds a NamedTuple from ALL its fields in one C call; its own ``__new__`` is a Python function, which costs
microseconds when the interpreter's caches are cold (right after the network, see :func:`_fast_evidence`)."""
DEFAULT_PARAMS = CorrectionParams()


# ----------------------------------------------------------------------------------------------- helpers


def entropy(p: Any, eps: float = ENTROPY_EPS) -> Any:
    """Entropy in nats of probability vectors along the last axis: -sum(p * log(p + eps)).

    ``eps=1e-8`` is the reference code's, so branch decisions match it (it lowers a uniform 11-way entropy
    from ln 11 by ~1e-7); ``eps=0`` gives the exact Shannon entropy with 0 log 0 = 0. Returns a float for a
    1-D input, else an array.
    """
    p = np.asarray(p, dtype=np.float64)
    inside_log = np.where(p > 0.0, p, 1.0) if eps == 0.0 else p + eps  # log(1) = 0 makes 0 log 0 = 0
    out = -np.sum(p * np.log(inside_log), axis=-1)
    return float(out) if out.ndim == 0 else out


def temperature_scale(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the last axis (float64), stable for large logits.

    A temperature fitted on held-out data (Guo et al. 2017) makes the max probability a calibrated confidence;
    T > 1 softens, T < 1 sharpens, T = 1 is the plain softmax.
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise UsageError(f"temperature must be a finite number > 0 (1.0 = plain softmax), got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / t
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def validate_probs(class_probs: Any, n_bins: int | None = None, tolerance: float = 1e-3) -> np.ndarray:
    """Check a probability vector offline and return it renormalised (float64); raises on anything invalid.

    Invalid: not convertible to numbers, not one vector, a length other than ``n_bins`` (when given), NaN,
    infinite or negative entries, or a sum further than ``tolerance`` from 1. Use this for datasets and
    analysis; the control loop uses :func:`correct`, which returns a fallback record instead of raising.
    """
    probs, reason = _read_probs(class_probs, n_bins, tolerance)
    if reason:
        raise InvalidProbabilitiesError(f"invalid class probabilities: {reason}")
    return np.asarray(probs, dtype=np.float64)


def _read_probs(class_probs: Any, n_bins: int | None, tolerance: float) -> tuple[tuple[float, ...], str]:
    """(renormalised probabilities, "") or (the values as read, what is wrong with them)."""
    if class_probs is None:
        return (), "no class probabilities (None)"
    try:
        if isinstance(class_probs, np.ndarray) and class_probs.ndim == 1 and class_probs.dtype.kind == "f":
            values = class_probs.tolist()  # the fast path: a softmax output, float32 or float64
        else:
            array = np.asarray(class_probs, dtype=np.float64)
            if sum(d > 1 for d in array.shape) > 1:
                return tuple(array.ravel().tolist()), f"expected one probability vector, got shape {array.shape}"
            values = array.ravel().tolist()
    except (TypeError, ValueError) as err:
        return (), f"not numbers ({type(class_probs).__name__}: {err})"
    if n_bins is not None and len(values) != n_bins:
        return tuple(values), f"expected {n_bins} class probabilities (one per bin), got {len(values)}"
    if not values:
        return (), "empty probability vector"
    for v in values:
        if not 0.0 <= v < math.inf:  # False for NaN too
            return tuple(values), f"entries must be finite and >= 0, found {v}"
    total = math.fsum(values)
    if abs(total - 1.0) > tolerance:
        return tuple(values), f"probabilities sum to {total:.6g}, not 1 (tolerance {tolerance:g}); pass a softmax"
    if abs(total - 1.0) > _RENORMALISE_ABOVE:  # leave float64 softmax outputs bit for bit, as the reference
        values = [v / total for v in values]
    return tuple(values), ""


def _read_regression(steer_regression: Any) -> tuple[float, str]:
    if isinstance(steer_regression, (float, int, np.floating)) and not isinstance(steer_regression, bool):
        r = float(steer_regression)
    elif steer_regression is None:
        return math.nan, "no regression steer (None)"
    else:
        try:
            array = np.asarray(steer_regression, dtype=np.float64)
            if array.size != 1:
                return math.nan, f"regression must be one number, got shape {array.shape}"
            r = float(array.reshape(()))
        except (TypeError, ValueError) as err:
            return math.nan, f"regression is not a number ({type(steer_regression).__name__}: {err})"
    if not math.isfinite(r):
        return r, f"regression steer is {r}"
    return r, ""


def _evidence(r: float, probs: tuple[float, ...], bins: SteeringBins) -> Evidence:
    max_prob = max(probs)
    h = 0.0
    for p in probs:
        h -= p * math.log(p + ENTROPY_EPS)
    reference_bin = bisect.bisect_right(bins._edges_t, r) - 1  # == np.digitize(r, edges) - 1
    regression_bin = min(max(reference_bin, 0), bins.n_bins - 1)
    return Evidence(r, probs, max_prob, h, probs.index(max_prob), regression_bin, reference_bin)


def _fast_evidence(steer_regression: Any, class_probs: Any, bins: SteeringBins) -> Evidence | None:
    """The evidence in one pass for the control loop's usual input, else None (then :func:`correct` checks
    everything the general way and reports what is wrong).

    Usual: a finite float regression and a 1-D float array of one probability per bin, each finite and >= 0,
    summing to 1 within rounding (``_RENORMALISE_ABOVE``). Same values, bit for bit, as the general path (the
    same sums in the same order, the first of tied maxima), with fewer Python steps: the correction runs right
    after the network, when the interpreter's caches are cold, so each step costs several times its warm cost.
    """
    r = steer_regression
    if type(r) is not float or type(class_probs) is not np.ndarray or not -math.inf < r < math.inf:
        return None
    probs = class_probs.tolist()  # floats only from a 1-D float array (nested lists or ints otherwise)
    if len(probs) != bins.n_bins or type(probs[0]) is not float:
        return None
    total = h = 0.0
    max_prob, c = -1.0, 0
    log = math.log
    for i, p in enumerate(probs):
        if not 0.0 <= p < math.inf:
            return None
        total += p
        h -= p * log(p + ENTROPY_EPS)
        if p > max_prob:
            max_prob, c = p, i
    if abs(total - 1.0) > _RENORMALISE_ABOVE:
        return None
    reference_bin = bisect.bisect_right(bins._edges_t, r) - 1  # == np.digitize(r, edges) - 1
    regression_bin = min(max(reference_bin, 0), bins.n_bins - 1)
    return _new_tuple(Evidence, (r, tuple(probs), max_prob, h, c, regression_bin, reference_bin))


def _confident_span(c: int, bins: SteeringBins, margin: int) -> tuple[float, float]:
    """The confident bin's interval, widened by ``margin`` bins each side (within the range)."""
    edges = bins._edges_t
    return edges[max(c - margin, 0)], edges[min(c + margin + 1, bins.n_bins)]


def _draws(rng: Rng) -> Draws:
    """Where ``caril``'s samples come from: the agent's :class:`Draws`, else exactly as asked from ``rng``."""
    if isinstance(rng, Draws):
        return rng
    return Draws(np.random.default_rng(0) if rng is None else rng, block=0)


# -------------------------------------------------------------------------------------------- strategies


def strategy_regression(ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Any) -> tuple[float, str]:
    """The regression head alone: the baseline ("W/O correction" in the paper)."""
    return ev.steer_regression, "regression"


def strategy_classification(ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Any) -> tuple[float, str]:
    """The classification head alone: the centre of the most probable bin (first one on a tie).

    Robust but quantised to the bin centres (steps of 2/11 in normalised units), so it cannot hold a steady
    small steer between two centres; it shows what the classifier alone would drive like.
    """
    return bins._centres_t[ev.predicted_bin], "classification_argmax"


def strategy_classification_expected(
    ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Any
) -> tuple[float, str]:
    """The probability-weighted mean of the bin centres, sum(p_i * centre_i).

    Smooth in the probabilities (the TF++ "expected value" readout of a classification head), but a diffuse
    distribution pulls it towards the middle of the range, i.e. towards driving straight.
    """
    return math.fsum(p * c for p, c in zip(ev.probs, bins._centres_t, strict=True)), "classification_expected"


def strategy_caril(
    ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Rng
) -> tuple[float, str]:
    """The paper's rule, as ``process()`` in its ``Driving Evaluation/test_scenario.py`` applies it.

    Checked in this order, with m = max p, c = argmax p, b = np.digitize(r, edges) - 1, H = -sum p log(p + 1e-8):

    1. m >= 0.9 and |b - c| <= 1: keep r ("keep_regression_agree").
    2. m >= 0.9 otherwise: the mean of 10 Uniform(edges[c], edges[c + 1]) samples ("confident_bin_sample").
    3. m < 0.5 and H > 1.5 nats: keep r ("uncertain_keep_regression").
    4. otherwise: the mean of 10 Normal(r, var(p)) samples, where var(p) is the population variance of the
       probability VALUES (np.var), not a steering variance ("gaussian_blend").

    As in the reference, b is not clipped: a regression below ``low`` is bin -1 and one at or above ``high``
    is bin n, which matters only for the agreement test of the end bins. Samples come from ``rng`` only.
    """
    r, m, c, b = ev.steer_regression, ev.max_prob, ev.predicted_bin, ev.reference_bin
    if m >= params.confidence_threshold:
        if abs(b - c) <= params.agree_bins:
            return r, "keep_regression_agree"
        lo, hi = bins._edges_t[c], bins._edges_t[c + 1]
        return mean_of(lo, hi - lo, _draws(rng).uniform(params.n_samples)), "confident_bin_sample"
    if m < params.uncertain_max_prob and ev.entropy > params.uncertain_entropy_nats:
        return r, "uncertain_keep_regression"
    return mean_of(r, _std_of(ev.probs), _draws(rng).normal(params.n_samples)), "gaussian_blend"


def _std_of(values: tuple[float, ...]) -> float:
    """The population standard deviation by np.std's formula (the mean, then the mean squared deviation), added
    in order, so within an ulp of np.std (which adds pairwise) and the same bits on every Python (the builtin
    ``sum`` of floats adds differently from Python 3.12 on)."""
    mean = 0.0
    for v in values:
        mean += v
    mean /= len(values)
    squares = 0.0
    for v in values:
        squares += (v - mean) * (v - mean)
    return math.sqrt(squares / len(values))


def strategy_clamp(ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Any) -> tuple[float, str]:
    """When the classifier is confident, project the regression into the confident bin; else keep it.

    Reasoning: the regression head is precise but drifts; a confident classifier (m >= confidence_threshold)
    says where the steer lies, to one bin. The nearest point of that bin is the smallest change that makes
    the command consistent with it: a regression already inside is kept bit for bit (no noise, no loss of
    its precision), one outside moves to the near edge. The paper's rule 2 instead jumps to ~the bin centre
    with sampling noise, and its rule 1 ignores a one-bin disagreement; ``clamp_margin_bins=1`` widens the
    bin by one neighbour each side to keep that tolerance. Deterministic, continuous and non-decreasing in
    the regression; it switches on abruptly at the threshold (see ``blend`` for the continuous version).

    Rules: "clamp_not_confident" (kept), "clamp_inside" (confident, already inside), "clamp_moved".
    """
    r = ev.steer_regression
    if ev.max_prob < params.confidence_threshold:
        return r, "clamp_not_confident"
    lo, hi = _confident_span(ev.predicted_bin, bins, params.clamp_margin_bins)
    if lo <= r <= hi:
        return r, "clamp_inside"
    return (lo if r < lo else hi), "clamp_moved"


def strategy_blend(ev: Evidence, bins: SteeringBins, params: CorrectionParams, rng: Any) -> tuple[float, str]:
    """Pull the regression towards the confident bin in proportion to the classifier's confidence.

    steer = r + w * (clamp(r) - r), where clamp(r) is the nearest point of the most probable bin (widened by
    ``clamp_margin_bins``) and w = (m - uncertain_max_prob) / (confidence_threshold - uncertain_max_prob),
    clipped to [0, 1]: no pull at m <= 0.5, the full ``clamp`` at m >= 0.9, linear between (use calibrated,
    temperature-scaled probabilities so that m means what it says).

    Reasoning: it replaces the paper's Var(p) jitter (rule 4), whose noise grows as p gets MORE peaked and
    has no steering units, with a deterministic correction that grows with confidence, and it removes the
    jump at the 0.9 threshold. It is continuous in both the regression and the probabilities: the most
    probable bin can only change where two bins tie, i.e. at m <= 0.5, where w is 0. For a fixed p it is
    non-decreasing in r and never moves r away from the confident bin.

    Rules: "blend_uncertain" (w = 0, kept), "blend_inside" (already in the bin, kept), "blend_pull".
    """
    r = ev.steer_regression
    w = (ev.max_prob - params.uncertain_max_prob) / (params.confidence_threshold - params.uncertain_max_prob)
    if w <= 0.0:
        return r, "blend_uncertain"
    lo, hi = _confident_span(ev.predicted_bin, bins, params.clamp_margin_bins)
    if lo <= r <= hi:
        return r, "blend_inside"
    target = lo if r < lo else hi
    if w >= 1.0:
        return target, "blend_pull"  # exactly clamp's value
    return r + w * (target - r), "blend_pull"


STRATEGIES: dict[str, Strategy] = {
    "regression": strategy_regression,
    "classification": strategy_classification,
    "classification_expected": strategy_classification_expected,
    "caril": strategy_caril,
    "clamp": strategy_clamp,
    "blend": strategy_blend,
}
"""Correction strategies by name; each maps (evidence, bins, params, rng) to (steer, rule name)."""

STRATEGY_RULES: dict[str, tuple[str, ...]] = {
    "regression": ("regression",),
    "classification": ("classification_argmax",),
    "classification_expected": ("classification_expected",),
    "caril": ("keep_regression_agree", "confident_bin_sample", "uncertain_keep_regression", "gaussian_blend"),
    "clamp": ("clamp_not_confident", "clamp_inside", "clamp_moved"),
    "blend": ("blend_uncertain", "blend_inside", "blend_pull"),
}
"""Every rule name each strategy can report (besides ``fallback_invalid``), e.g. for counting rules per episode."""


def correct(
    strategy: str,
    steer_regression: float,
    class_probs: Any,
    rng: Rng = None,
    *,
    bins: SteeringBins | None = None,
    params: CorrectionParams | None = None,
) -> CorrectionRecord:
    """Apply a correction strategy to one tick's head outputs (normalised steering, class probabilities).

    Never raises on bad numbers (see the module docstring): the record's rule is then ``fallback_invalid``,
    steer 0.0 and ``reason`` says what was wrong. Raises :class:`sim.errors.UnknownNameError` for an unknown
    ``strategy``. ``rng`` (a NumPy ``Generator`` or an :class:`agent.draws.Draws`) is only drawn from by
    ``caril``'s sampling branches; None means a fresh ``np.random.default_rng(0)`` per call; anything else raises
    :class:`sim.errors.UsageError` when a sampling branch fires (configuration, like the strategy name). The
    returned steer is clipped to [-1, 1].
    """
    impl = STRATEGIES.get(strategy)
    if impl is None:
        raise unknown_name("correction", strategy, list(STRATEGIES))
    bins = DEFAULT_BINS if bins is None else bins
    params = DEFAULT_PARAMS if params is None else params
    ev = _fast_evidence(steer_regression, class_probs, bins)
    if ev is None:
        r, reason = _read_regression(steer_regression)
        probs, probs_reason = _read_probs(class_probs, bins.n_bins, params.prob_sum_tolerance)
        if reason or probs_reason:
            reason = "; ".join(x for x in (reason, probs_reason) if x)
            return CorrectionRecord(strategy, r, probs, math.nan, math.nan, -1, -1, RULE_FALLBACK, 0.0, reason)
        ev = _evidence(r, probs, bins)
    steer, rule = impl(ev, bins, params, rng)
    steer = -1.0 if steer < -1.0 else (1.0 if steer > 1.0 else steer)
    return _new_tuple(CorrectionRecord, (strategy, ev.steer_regression, ev.probs, ev.max_prob, ev.entropy,
                                         ev.predicted_bin, ev.regression_bin, rule, steer, ""))
