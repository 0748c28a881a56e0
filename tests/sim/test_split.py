"""The train/test split of the world: held-out maps and weathers, the suites and groups that name them, and the
guard that keeps them out of training recordings."""

import pytest

from sim.errors import UsageError
from sim.routes import NAMED_ROUTES, ROUTE_SUITES, get_route, parse_routes
from sim.split import (
    HELDOUT_SUITE,
    HELDOUT_WEATHERS,
    TRAIN_WEATHERS,
    check_training_conditions,
    heldout_conditions,
    is_training_map,
    is_training_route,
)
from sim.types import RoadOption
from sim.weather import WEATHERS, parse_weathers


def test_weathers_split_in_two_with_a_sunset_and_a_hard_rain_held_out():
    assert set(TRAIN_WEATHERS) | set(HELDOUT_WEATHERS) == set(WEATHERS)
    assert not set(TRAIN_WEATHERS) & set(HELDOUT_WEATHERS)
    assert len(HELDOUT_WEATHERS) >= 3 and "ClearSunset" in HELDOUT_WEATHERS and "HardRainNoon" in HELDOUT_WEATHERS
    assert [w.name for w in parse_weathers("heldout")] == list(HELDOUT_WEATHERS)
    assert [w.name for w in parse_weathers("train,ClearNoon,heldout")] == [*TRAIN_WEATHERS, *HELDOUT_WEATHERS]


def test_only_generated_maps_from_seed_100000_are_training_maps():
    assert is_training_map("random:100000") and is_training_map("random:123456")
    assert not is_training_map("random:99999") and not is_training_map("random:2")
    assert not any(is_training_map(name) for name in NAMED_ROUTES)
    assert not is_training_map("random:x")
    assert is_training_route("10:42", "carla") and not is_training_route("straight", "carla")
    assert heldout_conditions(["random:100001", "one-turn", "random:5"], ["ClearNoon", "HardRainNoon"]) == [
        "one-turn", "random:5", "HardRainNoon"]


def test_heldout_suite_is_held_out_and_covers_every_movement_and_both_curve_signs():
    assert ROUTE_SUITES["heldout"] == HELDOUT_SUITE and parse_routes("heldout") == list(HELDOUT_SUITE)
    assert not any(is_training_map(r) for r in HELDOUT_SUITE)
    commands, curve_signs = set(), set()
    for name in HELDOUT_SUITE:
        route = get_route(name)
        commands |= {RoadOption(int(c)) for c in set(route.command.tolist())}
        bends = route.curvature_1pm[~route.in_junction.astype(bool)]
        curve_signs |= {1 for k in bends if k > 0.01} | {-1 for k in bends if k < -0.01}
    assert {RoadOption.LEFT, RoadOption.RIGHT, RoadOption.STRAIGHT} <= commands and curve_signs == {-1, 1}
    mini = parse_routes("heldout-mini")
    assert set(mini) <= set(HELDOUT_SUITE)


def test_map_ranges_expand_inclusively_and_bad_ranges_are_one_error():
    assert parse_routes("random:100000-100002,random:100001") == ["random:100000", "random:100001", "random:100002"]
    with pytest.raises(UsageError, match=r"route range 'random:5-2': the seeds must satisfy 0 <= first <= last"):
        parse_routes("random:5-2")
    with pytest.raises(UsageError, match=r"route range 'random:a-b': write random:<first>-<last>"):
        parse_routes("random:a-b")


def test_the_guard_names_every_held_out_condition_and_how_to_override():
    with pytest.raises(UsageError) as e:
        check_training_conditions(["random:100000", "paper-ish", "random:7"], ["WetNoon", "ClearSunset"])
    message = str(e.value)
    assert message.startswith("paper-ish, random:7, ClearSunset are held out for evaluation")
    assert "--allow-heldout" in message and "seed >= 100000" in message
    check_training_conditions(["random:7"], ["ClearSunset"], allow_heldout=True)  # told to: no error
    check_training_conditions(["random:100000"], list(TRAIN_WEATHERS))
