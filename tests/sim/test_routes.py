import math
import re

import numpy as np
import pytest

from sim.errors import UnknownNameError
from sim.roadnet import JUNCTION_HALF_SIZE_M
from sim.routes import (
    COMMAND_HOLD_M,
    COMMAND_LOOKAHEAD_M,
    NAMED_ROUTES,
    get_route,
    parse_routes,
    road_clearance_violations,
)
from sim.types import RoadOption


@pytest.mark.parametrize("name", [*NAMED_ROUTES, "random:0", "random:7"])
def test_routes_are_continuous_lane_centres_on_non_overlapping_maps(name):
    route = get_route(name)
    steps = np.hypot(np.diff(route.x), np.diff(route.y))
    assert steps.max() < 0.6 and steps.min() > 0.05
    # no kinks between legs: heading changes at most step / min radius (10.3 m on junction right turns)
    assert np.abs(np.diff(route.heading_rad)).max() < 0.6 / 10.0
    assert road_clearance_violations(route.network) == []
    assert 250 < route.length_m < 2000


def test_paper_suite_and_junction_turns():
    assert parse_routes("paper") == ["straight", "one-turn", "two-turn"]
    expected = {"straight": [0], "one-turn": [90], "two-turn": [-90, 90]}  # degrees, + is a right turn
    for name, turns in expected.items():
        route = get_route(name)
        inside = route.in_junction.astype(int)
        starts, ends = np.flatnonzero(np.diff(inside) == 1), np.flatnonzero(np.diff(inside) == -1) + 1
        turned = [round(math.degrees(route.heading_rad[e] - route.heading_rad[s]))
                  for s, e in zip(starts, ends, strict=True)]
        assert turned == turns, name


def test_lane_is_right_of_the_road_centre_and_junction_arms_meet_the_boundary():
    route = get_route("one-turn")
    net = route.network
    road = net.roads[int(route.road_id[0])]
    assert road.samples["y"][0] == pytest.approx(0.0)
    assert route.y[0] == pytest.approx(1.75)  # keep right: +y is right of +x in CARLA's frame
    j = net.junctions[0]
    for side, (road_id, contact) in j.arms.items():
        smp = net.roads[road_id].samples
        i = -1 if contact == "end" else 0
        assert math.hypot(smp["x"][i] - j.x_m, smp["y"][i] - j.y_m) == pytest.approx(JUNCTION_HALF_SIZE_M)
        assert len([c for c in j.connections if c.incoming_road == road_id]) == 3, side


def test_projection_gives_signed_offset_and_progress():
    route = get_route("straight")
    p = route.project(50.0, 1.75 + 0.4)
    assert p.lateral_offset_m == pytest.approx(0.4)
    assert p.distance_along_m == pytest.approx(50.0)
    assert route.project(50.0, 1.0).lateral_offset_m == pytest.approx(-0.75)


def test_random_routes_are_deterministic_and_differ_by_seed():
    a, b, c = get_route("random:3"), get_route.__wrapped__("random:3"), get_route("random:4")
    np.testing.assert_array_equal(a.x, b.x)
    assert a.length_m != c.length_m


def test_unknown_route_lists_valid_names():
    with pytest.raises(UnknownNameError, match=re.escape("unknown route 'nowhere'; valid routes: straight, one-turn")):
        get_route("nowhere")
    for bad in ("random:abc", "random:-3"):
        with pytest.raises(UnknownNameError, match=re.escape("Random routes are random:<seed>, a seed of 0 or more")):
            get_route(bad)
    with pytest.raises(UnknownNameError, match="'paper' is a suite of routes: name one of them here") as info:
        get_route("paper")
    assert "valid routes: straight, one-turn, two-turn" in str(info.value) and "paper," not in str(info.value)


def _command_runs(route):
    """[(command, first metre, last metre)] of the route's per-sample commands."""
    change = np.flatnonzero(np.diff(route.command)) + 1
    starts, stops = [0, *change], [*change, len(route.command)]
    return [(RoadOption(int(route.command[a])), route.s_m[a], route.s_m[b - 1])
            for a, b in zip(starts, stops, strict=True)]


@pytest.mark.parametrize(("name", "movements"), [
    ("straight", [RoadOption.STRAIGHT]), ("one-turn", [RoadOption.RIGHT]),
    ("two-turn", [RoadOption.LEFT, RoadOption.RIGHT]), ("s-curve", []),
    ("mixed", [RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT])])
def test_route_command_names_each_junction_movement_from_the_lookahead_to_past_its_exit(name, movements):
    route = get_route(name)
    runs = _command_runs(route)
    turns = [r for r in runs if r[0] != RoadOption.LANEFOLLOW]
    assert [c for c, _, _ in runs if c != RoadOption.LANEFOLLOW] == movements
    assert runs[0][0] == runs[-1][0] == RoadOption.LANEFOLLOW
    entries = np.flatnonzero(np.diff(route.in_junction.astype(int)) == 1) + 1
    exits = np.flatnonzero(np.diff(route.in_junction.astype(int)) == -1) + 1
    for (command, first, last), entry, exit_ in zip(turns, entries, exits, strict=True):
        assert first == pytest.approx(route.s_m[entry] - COMMAND_LOOKAHEAD_M, abs=0.5)
        assert last == pytest.approx(route.s_m[exit_ - 1] + COMMAND_HOLD_M, abs=0.5)
        assert route.command_at(first + 0.2) == command and route.command_at(last + 1.0) == RoadOption.LANEFOLLOW


def test_road_option_values_are_carlas_and_mirror_left_and_right():
    # agents.navigation.local_planner.RoadOption: VOID -1, LEFT 1, RIGHT 2, STRAIGHT 3, LANEFOLLOW 4
    assert [(o.name, int(o)) for o in RoadOption] == [("LEFT", 1), ("RIGHT", 2), ("STRAIGHT", 3), ("LANEFOLLOW", 4)]
    assert [o.mirrored for o in RoadOption] == [RoadOption.RIGHT, RoadOption.LEFT, RoadOption.STRAIGHT,
                                                RoadOption.LANEFOLLOW]
