"""The heads against the expert: exact statistics, the expert's label is taken in the state the agent decided
in, and decisions files without the columns give nothing rather than wrong numbers."""

import math

import numpy as np
import pytest

from agent.expert import ExpertPolicy
from sim.embedded import EmbeddedSimulator
from sim.routes import get_route
from sim.types import CameraConfig, Control
from training.evaluation import DECISION_COLUMNS, DecisionLog, write_table
from training.head_errors import HEAD_COLUMNS, head_stats, read_head_columns


def ticks(e_reg, e_cls, e_out, expert=0.3):
    """A (ticks, 4) array of HEAD_COLUMNS with the given errors against a constant expert steer."""
    e_reg, e_cls, e_out = (np.asarray(e, dtype=np.float64) for e in (e_reg, e_cls, e_out))
    return np.stack([expert + e_reg, expert + e_cls, expert + e_out, np.full(len(e_reg), expert)], axis=1)


def test_exact_statistics():
    s = head_stats(ticks([0.1, -0.2, 0.3, 0.0], [0.05, 0.1, 0.3, -0.1], [0.1, -0.1, 0.2, 0.0]))
    assert s["ticks"] == 4
    assert s["regression_mae"] == pytest.approx(0.15)
    assert s["classification_mae"] == pytest.approx(0.1375)
    assert s["corrected_mae"] == pytest.approx(0.1)
    assert s["regression_bias"] == pytest.approx(0.05)
    assert s["best_pick_mae"] == pytest.approx((0.05 + 0.1 + 0.3 + 0.0) / 4)
    assert s["best_mix_mae"] == pytest.approx((0.05 + 0.0 + 0.3 + 0.0) / 4)  # opposite signs: 0 lies between
    assert s["best_pick_cut"] == pytest.approx(1 - 0.1125 / 0.15)
    assert s["best_mix_cut"] == pytest.approx(1 - 0.0875 / 0.15)
    a, b = np.array([0.1, -0.2, 0.3, 0.0]), np.array([0.05, 0.1, 0.3, -0.1])
    a, b = a - a.mean(), b - b.mean()
    assert s["error_correlation"] == pytest.approx((a @ b) / math.sqrt((a @ a) * (b @ b)))


def test_the_same_mistake_twice_leaves_nothing_to_correct():
    errors = np.random.default_rng(0).normal(0.0, 0.1, 50)
    s = head_stats(ticks(errors, errors, errors))
    assert s["error_correlation"] == pytest.approx(1.0)
    assert s["best_pick_cut"] == 0.0 and s["best_mix_cut"] == 0.0


def test_no_ticks_give_no_statistics():
    assert head_stats(np.empty((0, 4))) == {"ticks": 0}


def test_reading_drops_fallback_ticks_and_ignores_files_without_the_columns(tmp_path):
    nan = float("nan")
    rows = [(0.05, 0.1, 0.1, 0.6, 1.2, "regression", 0.12, 0.2), (0.1, nan, 0.0, nan, nan, "fallback", nan, nan),
            (0.15, -0.1, -0.1, 0.5, 1.3, "regression", -0.2, -0.15),
            (0.2, 1.7, 1.0, 0.5, 1.3, "regression", 0.9, 1.0)]  # a raw regression beyond the labels' range
    write_table(tmp_path / "new.csv", DECISION_COLUMNS, rows)
    data = read_head_columns(tmp_path / "new.csv")
    assert data.tolist() == [[0.1, 0.12, 0.1, 0.2], [-0.1, -0.2, -0.1, -0.15], [1.0, 0.9, 1.0, 1.0]]
    write_table(tmp_path / "old.csv", DECISION_COLUMNS[:6], [r[:6] for r in rows])  # before the columns existed
    assert read_head_columns(tmp_path / "old.csv").shape == (0, len(HEAD_COLUMNS))


def test_the_expert_label_is_taken_in_the_state_the_agent_decided_in():
    route = get_route("one-turn")
    sim = EmbeddedSimulator(camera=CameraConfig(width=32, height=32), spawn_noise_m=0.5)
    log = DecisionLog(route)
    states = [sim.reset(route, "ClearNoon", 4)]
    log.on_reset(states[0], {})
    for k in range(30):
        record = {"rule": "regression", "steer_regression": 0.0, "steer": 0.0, "steer_scale": 2.5,
                  "steer_classification": 0.1 * k}
        states.append(sim.step(Control(steer=0.05 * math.sin(k / 3), throttle=0.6)))
        log.on_step(states[-1], Control(), record)
    expert = ExpertPolicy()
    expert.reset(route)
    want = [min(1.0, max(-1.0, expert.act(obs)[0].steer * 2.5)) for obs in states[:-1]]
    got = [row[DECISION_COLUMNS.index("steer_expert")] for row in log.rows]
    assert got == want and len(set(got)) > 10  # the state before each step, not after it
    assert [row[DECISION_COLUMNS.index("steer_classification")] for row in log.rows] == [0.1 * k for k in range(30)]
    unrouted = DecisionLog()  # no route, no expert: NaN, which the statistics drop
    unrouted.on_reset(states[0], {})
    unrouted.on_step(states[1], Control(), record)
    assert math.isnan(unrouted.rows[0][DECISION_COLUMNS.index("steer_expert")])
