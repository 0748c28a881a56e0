"""Draws: the correction's samples, from a seeded generator, exactly as asked or in blocks."""

import numpy as np
import pytest

from agent.draws import Draws, mean_of
from sim.errors import UsageError


def test_unblocked_draws_are_numpys_own_uniform_and_normal_samples():
    lo, hi, mean, sd = -0.25, 0.5, 0.1, 0.3
    draws = Draws(np.random.default_rng(5), block=0)
    uniform = [lo + (hi - lo) * u for u in draws.uniform(6)]
    normal = [mean + sd * z for z in draws.normal(4)]
    numpy = np.random.default_rng(5)
    assert uniform == numpy.uniform(lo, hi, 6).tolist()
    assert normal == numpy.normal(mean, sd, 4).tolist()


def test_blocks_come_from_the_generator_in_order_each_kind_from_its_own():
    draws = Draws(np.random.default_rng(9), block=8)
    got = [draws.uniform(3), draws.normal(3), draws.uniform(3), draws.uniform(3), draws.normal(10)]
    g = np.random.default_rng(9)
    u1, z1, u2, z2 = g.random(8).tolist(), g.standard_normal(8).tolist(), g.random(8).tolist(), g.standard_normal(10)
    # the third uniform call needs 3 of the 2 left: a new block; a request beyond the block size is drawn whole
    assert got == [u1[0:3], z1[0:3], u1[3:6], u2[0:3], z2.tolist()]


def test_same_seed_same_draws_and_another_seed_others():
    def run(seed):
        d = Draws(np.random.default_rng(seed), block=16)
        return [d.uniform(10) + d.normal(10) for _ in range(5)]  # crosses block boundaries
    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("args, message", [((None,), "needs a numpy Generator"),
                                           ((np.random.RandomState(0),), "got RandomState"),
                                           ((np.random.default_rng(0), -1), "integer >= 0"),
                                           ((np.random.default_rng(0), True), "integer >= 0")])
def test_bad_arguments_are_one_clear_error(args, message):
    with pytest.raises(UsageError, match=message):
        Draws(*args)


def test_mean_of_scales_then_adds_in_order():
    assert mean_of(1.0, 2.0, [0.0, 0.5, 1.0]) == 2.0
    unit = [0.1, 0.7, 0.2]
    assert mean_of(0.3, 0.4, unit) == ((0.3 + 0.4 * 0.1) + (0.3 + 0.4 * 0.7) + (0.3 + 0.4 * 0.2)) / 3
