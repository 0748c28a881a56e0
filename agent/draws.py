"""Random draws for the correction's sampling branches, taken from one seeded generator in blocks.

Why blocks: the ``caril`` rule averages ten uniform or ten normal samples at every control tick where one of
its sampling branches fires. The correction runs right after the network, when the interpreter's caches are
cold, and a first call into a NumPy routine is then slow: on the project's 2-core CI machine a sampling tick
cost ~0.04 ms when it asked NumPy's generator for its samples, ~1.6% of the default network's ~2.4 ms (the
correction may cost 1%). From a block drawn earlier the draw itself costs ~5 us, and the whole sampling tick
0.02-0.025 ms (``caril bench policy``, ``correction_p50_ms_by_rule``): still a little over 1% of that small
network, most of it now the cold interpreter running the rule at all. A block is refilled once every
``block / 10`` sampling ticks.

The samples are standard: uniform on [0, 1) and normal with mean 0 and deviation 1; a caller scales them
(``low + (high - low) * u``, ``mean + sd * z``), exactly as NumPy's ``Generator.uniform`` and
``Generator.normal`` do internally. With ``block=0`` every call draws exactly what it needs, so the values are
the ones NumPy's own ``uniform(low, high, n)`` / ``normal(mean, sd, n)`` would give from that generator; with
blocks, the uniforms and the normals each come from their own blocks, so a seed still gives the same draws
every run, but not the same as unblocked calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.errors import UsageError

DEFAULT_BLOCK = 1024


class Draws:
    """Standard uniform and normal samples from ``rng``, ``block`` at a time (0: exactly as asked)."""

    def __init__(self, rng: np.random.Generator, block: int = DEFAULT_BLOCK) -> None:
        if not isinstance(rng, np.random.Generator):
            raise UsageError(f"Draws needs a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise UsageError(f"Draws block must be an integer >= 0 (0: draw exactly as asked), got {block!r}")
        self.rng, self.block = rng, block
        self._uniform = _Pool(rng.random, block)
        self._normal = _Pool(rng.standard_normal, block)

    def uniform(self, n: int) -> list[float]:
        """``n`` samples of the uniform distribution on [0, 1)."""
        return self._uniform.take(n)

    def normal(self, n: int) -> list[float]:
        """``n`` samples of the standard normal distribution."""
        return self._normal.take(n)


class _Pool:
    """Samples of one kind drawn ``block`` at a time; a request that does not fit in what is left of the block
    starts a new one (the rest is skipped), one larger than a block is drawn whole."""

    def __init__(self, draw: Callable[[int], np.ndarray], block: int) -> None:
        self.draw, self.block = draw, block
        self.values: list[float] = []
        self.next = 0

    def take(self, n: int) -> list[float]:
        i = self.next
        if i + n > len(self.values):
            self.values, i = self.draw(max(self.block, n)).tolist(), 0
        self.next = i + n
        return self.values[i:i + n]


def mean_of(loc: float, scale: float, unit: list[float]) -> float:
    """The mean of ``loc + scale * u`` over the standard samples ``unit``, summed in order.

    An explicit loop rather than the builtin ``sum``: Python 3.12 changed how ``sum`` adds floats, and the
    simulator's runs must give the same bits on every supported Python.
    """
    total = 0.0
    for u in unit:
        total += loc + scale * u
    return total / len(unit)
