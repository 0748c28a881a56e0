"""Steering bins: the paper's 11 edges and centres, indexing, mirroring for flips, checkpoint round trip."""

import json

import numpy as np
import pytest

from agent.bins import SteeringBins
from sim.errors import UsageError

W = 2 / 11  # the paper's bin width in normalised ("x4") steering units


def reference_edges() -> np.ndarray:
    """The edges exactly as CARIL's test_scenario.py builds them."""
    edges = np.linspace(-1, 1, 12)
    edges[5], edges[6] = -W / 2, W / 2
    return edges


def test_default_edges_are_the_papers():
    bins = SteeringBins()
    assert bins.n_bins == 11 and bins.width == pytest.approx(W)
    assert bins.edges.shape == (12,)
    np.testing.assert_allclose(bins.edges, reference_edges(), rtol=0, atol=2e-16)
    assert bins.edges[0] == -1.0 and bins.edges[11] == 1.0
    assert bins.edges[5] == -1 / 11 and bins.edges[6] == 1 / 11  # class 5 = straight = [-0.0909, +0.0909]
    np.testing.assert_array_equal(bins.edges, -bins.edges[::-1])  # exactly antisymmetric


def test_default_centres():
    bins = SteeringBins()
    np.testing.assert_allclose(bins.centres, [-1 + (2 * i + 1) / 11 for i in range(11)], rtol=0, atol=1e-15)
    assert bins.centres[5] == 0.0
    np.testing.assert_array_equal(bins.centres, -bins.centres[::-1])


def test_edges_and_centres_are_read_only():
    bins = SteeringBins()
    with pytest.raises(ValueError, match="read-only"):
        bins.edges[0] = 3.0
    with pytest.raises(ValueError, match="read-only"):
        bins.centres[0] = 3.0


def test_index_exact_values():
    bins = SteeringBins()
    steer = [-np.inf, -1.5, -1.0, -0.95, -1 / 11, -0.05, 0.0, 0.05, 1 / 11, 0.5, 0.999, 1.0, 2.0, np.inf]
    expected = [0, 0, 0, 0, 5, 5, 5, 5, 6, 8, 10, 10, 10, 10]
    np.testing.assert_array_equal(bins.index(steer), expected)


def test_index_matches_reference_digitize_inside_the_range():
    bins = SteeringBins()
    x = np.random.default_rng(0).uniform(-1, 1, 10_000)
    np.testing.assert_array_equal(bins.index(x), np.digitize(x, reference_edges()) - 1)


def test_index_keeps_shape_and_returns_ints():
    bins = SteeringBins()
    out = bins.index(np.array([[0.0, 0.5], [-0.5, 1.0]]))
    assert out.shape == (2, 2) and out.dtype.kind == "i"
    np.testing.assert_array_equal(out, [[5, 8], [2, 10]])
    scalar = bins.index(0.3)
    assert scalar.shape == () and int(scalar) == 7


def test_index_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        SteeringBins().index([0.0, np.nan])


def test_interval():
    bins = SteeringBins()
    assert bins.interval(5) == (-1 / 11, 1 / 11)
    assert bins.interval(0) == (-1.0, bins.edges[1])
    assert bins.interval(np.int64(10)) == (bins.edges[10], 1.0)
    for bad in (-1, 11):
        with pytest.raises(IndexError, match=r"out of range 0\.\.10"):
            bins.interval(bad)


def test_mirror_exact_values():
    bins = SteeringBins()
    assert bins.mirror(0) == 10 and bins.mirror(5) == 5 and bins.mirror(10) == 0 and bins.mirror(3) == 7
    np.testing.assert_array_equal(bins.mirror(np.arange(11)), np.arange(10, -1, -1))
    with pytest.raises(IndexError):
        bins.mirror(11)
    with pytest.raises(IndexError):
        bins.mirror(np.array([0, -1]))


@pytest.mark.parametrize("n_bins", [2, 3, 11, 20, 21])
def test_mirror_is_the_bin_of_the_negated_steer(n_bins):
    bins = SteeringBins(n_bins)
    x = np.random.default_rng(n_bins).uniform(-1.2, 1.2, 20_000)
    x = x[~np.isin(x, bins.edges)]  # strictly inside bins (or outside the range)
    np.testing.assert_array_equal(bins.index(-x), bins.mirror(bins.index(x)))


def test_mirror_on_an_interior_edge_is_one_bin_off_by_design():
    # A value on an edge belongs to the bin above it, and so does its negation: document the only exception.
    bins = SteeringBins()
    interior = bins.edges[1:-1]
    np.testing.assert_array_equal(bins.index(-interior), bins.mirror(bins.index(interior)) + 1)


def test_mirror_needs_a_symmetric_range():
    with pytest.raises(ValueError, match="symmetric"):
        SteeringBins(4, 0.0, 1.0).mirror(1)


def test_asymmetric_range_is_equal_width():
    bins = SteeringBins(4, 0.0, 1.0)
    np.testing.assert_array_equal(bins.edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(bins.centres, [0.125, 0.375, 0.625, 0.875])
    assert not bins.is_symmetric


def test_dict_round_trip():
    bins = SteeringBins(21, -1.0, 1.0)
    data = json.loads(json.dumps(bins.to_dict()))
    assert data == {"n_bins": 21, "low": -1.0, "high": 1.0}
    again = SteeringBins.from_dict(data)
    assert again == bins and hash(again) == hash(bins)
    np.testing.assert_array_equal(again.edges, bins.edges)


def test_from_dict_rejects_missing_and_unknown_keys():
    with pytest.raises(UsageError, match=r"missing \['high'\], unknown \['width'\]"):
        SteeringBins.from_dict({"n_bins": 11, "low": -1.0, "width": 0.2})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 1}, "n_bins must be an integer >= 2"),
        ({"n_bins": 11.0}, "n_bins must be an integer >= 2"),
        ({"n_bins": True}, "n_bins must be an integer >= 2"),
        ({"low": 1.0, "high": 1.0}, "finite low < high"),
        ({"low": float("nan")}, "finite low < high"),
    ],
)
def test_invalid_bins(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SteeringBins(**kwargs)
