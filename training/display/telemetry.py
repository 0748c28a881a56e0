"""What the HUD shows, read from the rollout: the CARIL agent's decision record, recent history, frame rates.

No pygame here, so it is cheap to test. The CARIL agent's ``act()`` record carries (normalised steering, the
paper's "x4" units in [-1, 1]; see :mod:`agent.correction`)::

    steer_regression  what the regression head wanted
    class_probs       the classification head's probabilities over the steering bins
    max_prob, entropy confidence (entropy in nats)
    rule              the correction branch that fired (e.g. "confident_bin_sample")
    steer             the steering after the correction (what was applied, before / steer_scale)
    correction        the strategy's name (e.g. "caril")

Optional: ``predicted_bin``, ``regression_bin``, ``reason`` (why a ``fallback_invalid`` fired) and
``steer_scale`` (CARLA steer = steer / steer_scale; 4 when absent, the paper's scale).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.bins import SteeringBins

CARIL_KEYS = ("steer_regression", "class_probs", "max_prob", "entropy", "rule", "steer")
DEFAULT_STEER_SCALE = 4.0
CORRECTION_EPS = 1e-6  # normalised steering: a correction "fires" when it moves the command more than this


@dataclass(frozen=True)
class CarilView:
    """One tick of the CARIL agent's decision, checked and ready to draw (normalised steering)."""

    steer_regression: float
    steer: float
    class_probs: tuple[float, ...]
    max_prob: float
    entropy: float
    rule: str
    correction: str
    predicted_bin: int
    regression_bin: int
    reason: str = ""

    @property
    def change(self) -> float:
        """How far the correction moved the command, |steer - steer_regression| (1.0 for a fallback)."""
        if self.rule.startswith("fallback") or not math.isfinite(self.steer - self.steer_regression):
            return 1.0
        return abs(self.steer - self.steer_regression)

    @property
    def corrected(self) -> bool:
        """True when the applied steering differs from the regression's (or a fallback fired)."""
        if self.rule.startswith("fallback"):  # fallback_invalid (correction), fallback_safe_stop (agent)
            return True
        return abs(self.steer - self.steer_regression) > CORRECTION_EPS


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def caril_view(record: dict[str, Any] | None, bins: SteeringBins | None = None) -> CarilView | None:
    """The CARIL fields of an ``act()`` record, or None for a policy without them (expert, manual).

    Missing optional fields are derived (most probable bin, the regression's bin); unreadable numbers become
    NaN rather than errors, since this runs in the display loop.
    """
    if not record or any(k not in record for k in CARIL_KEYS):
        return None
    bins = bins or SteeringBins()
    try:
        probs = tuple(float(p) for p in np.asarray(record["class_probs"], dtype=np.float64).ravel())
    except (TypeError, ValueError):
        probs = ()
    regression = _number(record["steer_regression"])
    predicted = record.get("predicted_bin")
    if predicted is None:
        predicted = int(np.argmax(probs)) if probs and all(math.isfinite(p) for p in probs) else -1
    regression_bin = record.get("regression_bin")
    if regression_bin is None:
        regression_bin = int(bins.index(regression)) if math.isfinite(regression) else -1
    return CarilView(regression, _number(record["steer"]), probs, _number(record["max_prob"]),
                     _number(record["entropy"]), str(record["rule"]), str(record.get("correction", "")),
                     int(predicted), int(regression_bin), str(record.get("reason", "")))


class History:
    """The last ``span_s`` seconds of simulated time: confidence, steering (normalised) and correction events
    (``corrected``, and ``change``: how far each moved the command)."""

    def __init__(self, span_s: float = 10.0) -> None:
        self.span_s = span_s
        self.time_s: deque[float] = deque()
        self.max_prob: deque[float] = deque()
        self.steer_regression: deque[float] = deque()
        self.steer: deque[float] = deque()
        self.corrected: deque[bool] = deque()
        self.change: deque[float] = deque()

    def _series(self) -> tuple[deque, ...]:
        return self.time_s, self.max_prob, self.steer_regression, self.steer, self.corrected, self.change

    def clear(self) -> None:
        for d in self._series():
            d.clear()

    def __len__(self) -> int:
        return len(self.time_s)

    def add(self, time_s: float, steer: float, view: CarilView | None) -> None:
        """Append one tick (``steer`` normalised) and drop samples older than ``span_s``."""
        self.time_s.append(time_s)
        self.steer.append(steer)
        self.max_prob.append(view.max_prob if view else math.nan)
        self.steer_regression.append(view.steer_regression if view else math.nan)
        self.corrected.append(view.corrected if view else False)
        self.change.append(view.change if view and view.corrected else 0.0)
        while self.time_s and self.time_s[0] < time_s - self.span_s:
            for d in self._series():
                d.popleft()


class RateMeter:
    """Events per second over the last ``window_s`` seconds of wall time (frame rates for the HUD)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._stamps: deque[float] = deque()

    def tick(self, now_s: float | None = None) -> None:
        now = time.perf_counter() if now_s is None else now_s
        self._stamps.append(now)
        while self._stamps[0] < now - self.window_s:
            self._stamps.popleft()

    def reset(self) -> None:
        self._stamps.clear()

    @property
    def rate_hz(self) -> float:
        """Events per second (0 until two events have been seen)."""
        if len(self._stamps) < 2:
            return 0.0
        span = self._stamps[-1] - self._stamps[0]
        return (len(self._stamps) - 1) / span if span > 0 else 0.0
