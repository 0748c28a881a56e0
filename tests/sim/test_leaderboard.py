import pytest

from sim.episode import TERMINATIONS
from sim.errors import UnknownNameError
from sim.leaderboard import (
    PENALTY_COEFFICIENTS,
    TERMINATION_INFRACTIONS,
    Infraction,
    LeaderboardError,
    driving_score,
    episode_infractions,
    infraction_penalty,
)


def test_coefficients_are_leaderboard_1_0():
    assert PENALTY_COEFFICIENTS == {"collision_pedestrian": 0.50, "collision_vehicle": 0.60,
                                    "collision_static": 0.65, "red_light": 0.70, "stop_sign": 0.80}


def test_penalties_compound_per_instance():
    assert infraction_penalty([]) == 1.0
    assert infraction_penalty([Infraction("collision_static")] * 2) == 0.65 ** 2
    assert infraction_penalty([Infraction("collision_vehicle")] * 2) == 0.6 * 0.6
    assert infraction_penalty([Infraction("collision_pedestrian"), Infraction("red_light")]) == 0.5 * 0.7
    every = [Infraction(k) for k in PENALTY_COEFFICIENTS]
    assert infraction_penalty(every) == pytest.approx(0.5 * 0.6 * 0.65 * 0.7 * 0.8, rel=1e-15)


def test_outside_route_lanes_multiplies_by_the_share_driven_inside():
    assert infraction_penalty([Infraction("outside_route_lanes", percentage=25.0)]) == 0.75
    assert infraction_penalty([Infraction("collision_static"), Infraction("outside_route_lanes", percentage=10.0)]) \
        == 0.65 * 0.9
    assert infraction_penalty([Infraction("outside_route_lanes", percentage=100.0)]) == 0.0


def test_route_ending_infractions_carry_no_multiplier():
    ending = [Infraction("route_deviation"), Infraction("agent_blocked"), Infraction("route_timeout")]
    assert infraction_penalty(ending) == 1.0


def test_driving_score_is_in_percent():
    assert driving_score(100.0, []) == 100.0
    assert driving_score(80.0, [Infraction("collision_static")]) == 80.0 * 0.65
    assert driving_score(50.0, [Infraction("collision_static")] * 2 + [Infraction("stop_sign")]) == \
        pytest.approx(50.0 * 0.65 * 0.65 * 0.8, rel=1e-15)
    assert driving_score(0.0, [Infraction("collision_pedestrian")]) == 0.0
    with pytest.raises(LeaderboardError, match="multiply a fraction by 100"):
        driving_score(120.0, [])


def test_infraction_validation_says_how_to_fix():
    with pytest.raises(UnknownNameError, match="collision_static"):
        Infraction("collision_wall")
    with pytest.raises(LeaderboardError, match="needs percentage"):
        Infraction("outside_route_lanes")
    with pytest.raises(LeaderboardError, match="needs percentage"):
        Infraction("outside_route_lanes", percentage=150.0)
    with pytest.raises(LeaderboardError, match="drop percentage"):
        Infraction("collision_static", percentage=5.0)


def test_every_termination_has_a_mapping():
    assert set(TERMINATION_INFRACTIONS) == set(TERMINATIONS)


@pytest.mark.parametrize(("collisions", "termination", "kinds"), [
    (0, "goal", []),
    (2, "goal", ["collision_static", "collision_static"]),
    (1, "collision", ["collision_static"]),
    (0, "off_route", ["route_deviation"]),
    (1, "off_route", ["collision_static", "route_deviation"]),
    (0, "blocked", ["agent_blocked"]),
    (0, "time_limit", ["route_timeout"]),
])
def test_episode_outcomes_map_to_leaderboard_infractions(collisions, termination, kinds):
    assert [i.kind for i in episode_infractions(collisions, termination)] == kinds


def test_episode_score_end_to_end():
    infractions = episode_infractions(1, "collision", outside_lanes_pct=20.0)
    assert [i.kind for i in infractions] == ["collision_static", "outside_route_lanes"]
    assert driving_score(40.0, infractions) == pytest.approx(40.0 * 0.65 * 0.8, rel=1e-15)
    vehicle = episode_infractions(1, "collision", collision_kind="collision_vehicle")
    assert infraction_penalty(vehicle) == 0.6


def test_episode_infractions_rejects_inconsistent_input():
    with pytest.raises(UnknownNameError, match="time_limit"):
        episode_infractions(0, "crashed")
    with pytest.raises(LeaderboardError, match="at least 1"):
        episode_infractions(0, "collision")
    with pytest.raises(LeaderboardError, match="count >= 0"):
        episode_infractions(-1, "goal")
    with pytest.raises(UnknownNameError, match="collision_vehicle"):
        episode_infractions(1, "goal", collision_kind="red_light")
    with pytest.raises(LeaderboardError, match="outside_lanes_pct"):
        episode_infractions(0, "goal", outside_lanes_pct=-1.0)
