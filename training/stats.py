"""Confidence intervals and relative changes for evaluation results (deterministic for a seed).

The CARIL paper reports means and standard deviations over 10 trials per route; we add bootstrap
confidence intervals so two policies can be compared with an honest error bar, and relative changes
computed the way the paper's "up to 50%" claim is (``(new - baseline) / |baseline|``).

The intervals are BCa (bias-corrected and accelerated, Efron 1987) by default: with 4 trials per cell the
plain percentile interval under-covers (its two ends are shifted and too close when the sampling
distribution is skewed, as completion and collisions are); BCa corrects both from the bootstrap's median
bias and the jackknife's skewness. ``method="percentile"`` keeps the plain one. Both equal scipy's
``stats.bootstrap`` for the same generator (tested), without needing scipy at run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from sim.errors import CarilError

# Elements of one block of resampled indices: bounds memory (8 MB of int64) whatever n and n_resamples are.
_BLOCK_ELEMENTS = 1 << 20
METHODS = ("bca", "percentile")
DEFAULT_METHOD = "bca"
CI_NAMES = {"bca": "BCa bootstrap", "percentile": "percentile bootstrap"}


class StatsError(CarilError, ValueError):
    """Bad input to a statistic (no values, NaN, a confidence outside (0, 1), a missing column)."""


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = 10000, confidence: float = 0.95,
                 seed: int = 0, statistic: Callable[..., Any] = np.mean,
                 method: str = DEFAULT_METHOD) -> tuple[float, float, float]:
    """Bootstrap CI: ``(statistic(values), low, high)`` at the two-sided ``confidence`` level.

    ``n_resamples`` samples of ``len(values)`` indices are drawn with replacement, in blocks of whole rows
    (one ``(rows, n)`` index array per block, ``rows`` fixed by ``n``), from ``np.random.default_rng(seed)``;
    ``statistic`` must accept ``axis=`` (``np.mean``, ``np.median``, ...) and is applied along each row.
    With ``method="percentile"``, ``low`` and ``high`` are the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (numpy's linear interpolation) of the resampled statistics; with
    ``"bca"`` (default) those two levels are first moved by :func:`bca_levels`. The result depends only on the
    values, the seed and ``n_resamples``. When all values are equal every resample is the sample itself, so
    the interval is the point ``statistic(values)``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise StatsError("bootstrap_ci needs at least one value; got none (did every episode fail to run?).")
    if not np.all(np.isfinite(x)):
        raise StatsError("bootstrap_ci got NaN or infinite values; drop them or fix the metric that produced them.")
    if not (0.0 < confidence < 1.0):
        raise StatsError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}.")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise StatsError(f"n_resamples must be a positive integer, e.g. 10000; got {n_resamples!r}.")
    if method not in METHODS:
        raise StatsError(f"unknown CI method {method!r}; one of {', '.join(METHODS)}.")
    estimate = float(statistic(x))
    if np.all(x == x[0]):
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    n = x.size
    rows = max(1, _BLOCK_ELEMENTS // n)
    stats = np.empty(int(n_resamples))
    for start in range(0, int(n_resamples), rows):
        stop = min(start + rows, int(n_resamples))
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = statistic(x[idx], axis=1)
    alpha = 1.0 - confidence
    levels = (alpha / 2, 1 - alpha / 2)
    if method == "bca":
        levels = bca_levels(x, stats, estimate, statistic, alpha / 2)
    low, high = np.quantile(stats, levels)
    return estimate, float(low), float(high)


def bca_levels(x: np.ndarray, stats: np.ndarray, estimate: float, statistic: Callable[..., Any],
               tail: float) -> tuple[float, float]:
    """The quantile levels of the BCa interval for one-sided tail probability ``tail`` (0.025 at 95%).

    Bias ``z0 = Phi^-1(share of resampled statistics below the estimate, ties counted half)``; acceleration
    ``a = sum(U^3) / (6 sum(U^2)^1.5)`` from the jackknife ``U_i = (n-1)(mean_j theta_(j) - theta_(i))``;
    level ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z = Phi^-1(tail)`` and ``Phi^-1(1 - tail)``.
    Where the bias is infinite (every resample on one side) the percentile levels are kept, and a jackknife
    without spread (``sum(U^2) = 0``) gives ``a = 0``.
    """
    normal = NormalDist()
    share = (np.sum(stats < estimate) + np.sum(stats <= estimate)) / (2 * stats.size)
    if not 0.0 < share < 1.0:
        return tail, 1.0 - tail
    z0 = normal.inv_cdf(float(share))
    n = x.size
    jack = statistic(np.broadcast_to(x, (n, n))[~np.eye(n, dtype=bool)].reshape(n, n - 1), axis=1)  # without i
    u = (n - 1) * (jack.mean() - jack)
    spread = float(np.sum(u ** 2))
    a = float(np.sum(u ** 3)) / (6 * spread ** 1.5) if spread > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf(tail), normal.inv_cdf(1.0 - tail)):
        levels.append(normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    return levels[0], levels[1]


def relative_change(new: float, baseline: float) -> float:
    """``(new - baseline) / |baseline|`` as a fraction (-0.5 is a 50% decrease, whatever the baseline's sign).

    NaN when ``baseline`` is 0: a change relative to nothing is undefined, and NaN keeps tables printable
    and poisons any average it enters instead of silently reading as a huge improvement (inf) or none (0).
    """
    if baseline == 0:
        return math.nan
    return (float(new) - float(baseline)) / abs(float(baseline))


def _metric_values(rows: list[dict], metric: str) -> np.ndarray:
    """Finite float values of ``metric`` over ``rows`` (CSV strings are parsed; blanks and NaN dropped)."""
    out = []
    for row in rows:
        if metric not in row:
            raise StatsError(f"no column {metric!r} in the results; available: {', '.join(map(str, row))}.")
        raw = row[metric]
        try:
            value = float(raw) if raw not in ("", None) else math.nan
        except (TypeError, ValueError) as err:
            raise StatsError(f"column {metric!r} holds {raw!r}, not a number; summarise numeric columns only.") \
                from err
        if math.isfinite(value):
            out.append(value)
    return np.asarray(out, dtype=np.float64)


def summarise(rows: list[dict], group_by: tuple[str, ...], metrics: tuple[str, ...], seed: int = 0, *,
              n_resamples: int = 10000, confidence: float = 0.95) -> list[dict]:
    """Mean and bootstrap CI of each metric for each group of rows, groups in order of first appearance.

    Each output row holds the ``group_by`` values, ``n`` (rows in the group) and, per metric,
    ``<metric>_mean``, ``<metric>_low``, ``<metric>_high`` and ``<metric>_n`` (finite values used; blank or
    NaN cells are skipped, and a metric with none gets NaN). Values may be numbers, bools or the strings
    ``training.evaluation.read_results`` returns. Every group and metric uses the same ``seed``.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        missing = [k for k in group_by if k not in row]
        if missing:
            raise StatsError(f"no column {missing[0]!r} to group by; available: {', '.join(map(str, row))}.")
        groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    summary = []
    for key, members in groups.items():
        out: dict[str, Any] = dict(zip(group_by, key, strict=True))
        out["n"] = len(members)
        for metric in metrics:
            values = _metric_values(members, metric)
            if values.size:
                mean, low, high = bootstrap_ci(values, n_resamples, confidence, seed)
            else:
                mean = low = high = math.nan
            out.update({f"{metric}_mean": mean, f"{metric}_low": low, f"{metric}_high": high,
                        f"{metric}_n": int(values.size)})
        summary.append(out)
    return summary
