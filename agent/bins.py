"""Steering bins: the classification head's classes over NORMALISED steering.

The paper (CARIL, arXiv 2503.00783) trains in "x4" units: CARLA steer in [-0.25, 0.25] times 4, clipped to
[-1, 1]. Its 11 classes are equal-width bins on that range, built as ``np.linspace(-1, 1, 12)`` with the middle
bin then set to [-w/2, +w/2] (w = 2/11), so class 5 = [-0.0909, +0.0909] is "straight". The override is a
no-op up to the last bit. Here the edges of a symmetric range are made exactly antisymmetric
(``edges[i] == -edges[n - i]``), so flipping an image maps bin ``i`` to bin ``n - 1 - i`` with no rounding
surprises. They differ from the reference's edges by at most 2e-16.

A value goes in the bin ``i`` with ``edges[i] <= x < edges[i + 1]``, which is the reference's test-time
``np.digitize(x, edges) - 1``. Values at or above ``high`` go in the last bin and values below ``low`` in the
first one. (The reference's training labels come from ``pd.cut`` with right-closed bins, so the two disagree
only on a value that lies exactly on an interior edge.)
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.errors import UsageError


@dataclass(frozen=True)
class SteeringBins:
    """``n_bins`` equal-width bins over normalised steering [low, high] (the paper uses 11 bins over [-1, 1])."""

    n_bins: int = 11
    low: float = -1.0
    high: float = 1.0
    _edges: np.ndarray = field(init=False, repr=False, compare=False)
    _centres: np.ndarray = field(init=False, repr=False, compare=False)
    _edges_t: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _centres_t: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, (int, np.integer)) or self.n_bins < 2:
            raise UsageError(f"n_bins must be an integer >= 2 (the paper uses 11), got {self.n_bins!r}")
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UsageError(f"steering bins need finite low < high (the paper uses -1, 1), got {low}, {high}")
        object.__setattr__(self, "n_bins", int(self.n_bins))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        edges = _build_edges(self.n_bins, low, high)
        centres = 0.5 * (edges[:-1] + edges[1:])
        edges.setflags(write=False)
        centres.setflags(write=False)
        object.__setattr__(self, "_edges", edges)
        object.__setattr__(self, "_centres", centres)
        object.__setattr__(self, "_edges_t", tuple(edges.tolist()))
        object.__setattr__(self, "_centres_t", tuple(centres.tolist()))

    @property
    def width(self) -> float:
        """Width of one bin, in normalised steering units (2/11 ~ 0.1818 for the paper's bins)."""
        return (self.high - self.low) / self.n_bins

    @property
    def edges(self) -> np.ndarray:
        """The ``n_bins + 1`` increasing edges (read-only float64 array)."""
        return self._edges

    @property
    def centres(self) -> np.ndarray:
        """The ``n_bins`` bin centres (read-only float64 array); the middle one of a symmetric odd set is 0."""
        return self._centres

    @property
    def is_symmetric(self) -> bool:
        """True when ``low == -high``, the only case where :meth:`mirror` means "the bin of -steer"."""
        return self.low == -self.high

    def index(self, steer: Any) -> np.ndarray:
        """Bin index of each steering value: an int array of ``steer``'s shape (0-d for a scalar).

        Bin ``i`` holds ``edges[i] <= x < edges[i + 1]``; values outside [low, high) clip to the end bins
        (``+inf`` to the last, ``-inf`` to the first). NaN has no bin and raises ``ValueError``.
        """
        values = np.asarray(steer, dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError("steering contains NaN, which has no bin; drop or repair those samples first")
        idx = np.searchsorted(self._edges, values, side="right") - 1
        return np.clip(idx, 0, self.n_bins - 1)

    def interval(self, i: int) -> tuple[float, float]:
        """The (lo, hi) edges of bin ``i``, in normalised steering units."""
        i = self._check_bin(i)
        return self._edges_t[i], self._edges_t[i + 1]

    def mirror(self, i: Any) -> Any:
        """The bin of ``-steer`` for a value of bin ``i`` (``n_bins - 1 - i``), for flip augmentation.

        Exact for values strictly inside a bin; a value exactly on an interior edge belongs to the bin above
        it, so its negation lies on the mirrored edge and belongs to the bin above *that*. Accepts an int or
        an int array; needs a symmetric range.
        """
        if not self.is_symmetric:
            raise ValueError(f"mirror needs a symmetric range (low == -high), got [{self.low}, {self.high}]")
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            return self.n_bins - 1 - self._check_bin(i)
        idx = np.asarray(i)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"bin indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_bins):
            raise IndexError(f"bin index out of range 0..{self.n_bins - 1}")
        return self.n_bins - 1 - idx

    def to_dict(self) -> dict[str, Any]:
        """Plain values that rebuild these bins with :meth:`from_dict` (stored in checkpoints)."""
        return {"n_bins": self.n_bins, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteeringBins:
        """Rebuild bins from :meth:`to_dict`'s output; all three keys are required, no others are accepted."""
        keys = {"n_bins", "low", "high"}
        missing, unknown = keys - set(data), set(data) - keys
        if missing or unknown:
            raise UsageError(
                f"steering bins config needs exactly the keys n_bins, low, high; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}: is this a checkpoint from this project?"
            )
        return cls(n_bins=data["n_bins"], low=data["low"], high=data["high"])

    def _check_bin(self, i: Any) -> int:
        i = operator.index(i)
        if not 0 <= i < self.n_bins:
            raise IndexError(f"bin index {i} is out of range 0..{self.n_bins - 1}")
        return i


def _build_edges(n_bins: int, low: float, high: float) -> np.ndarray:
    """Equal-width edges as the reference builds them; exactly antisymmetric for a symmetric range."""
    edges = np.linspace(low, high, n_bins + 1)
    if low == -high:
        edges = 0.5 * (edges - edges[::-1])  # a - b == -(b - a) exactly, so edges[i] == -edges[n - i]
        if n_bins % 2 == 1:  # the reference's explicit middle bin [-w/2, +w/2]
            half_width = (high - low) / n_bins / 2
            edges[n_bins // 2] = -half_width
            edges[n_bins // 2 + 1] = half_width
    edges[0], edges[-1] = low, high
    return edges
