"""Evaluation campaigns: resume and parallel workers give the sequential file, references are shared, the
corrections meet the same episodes, and the agent's decisions are written."""

import csv
import shutil

import numpy as np
import pytest
import torch

from agent.bins import SteeringBins
from agent.checkpoint import save_checkpoint
from agent.correction import STRATEGY_RULES
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.episode import EpisodeLimits
from sim.types import CameraConfig
from training.evaluation import (
    DECISION_COLUMNS,
    RESULT_COLUMNS,
    Campaign,
    PolicyFactory,
    SimFactory,
    plan_episodes,
    read_results,
)

# ~1 simulated second per episode (20 ticks): the time budget is route length / 1e6 m/s + 1 s
LIMITS = EpisodeLimits(min_average_speed_mps=1e6, time_slack_s=1.0)
SIM = {"camera": CameraConfig(width=64, height=64), "spawn_noise_m": 0.3}  # the seed moves the spawn point
CORRECTIONS = ("regression", "caril")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = NetworkConfig(input_size=(32, 32))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), DualHeadNet(cfg).eval(), cfg,
                           PreprocessConfig(height=32, width=32), SteeringBins())


def campaign(out, checkpoint):
    return Campaign(out, SimFactory("embedded", SIM), PolicyFactory(str(checkpoint), device="cpu"), limits=LIMITS,
                    make_reference_sim=SimFactory("embedded", {**SIM, "render_camera": False}))


def specs():
    return plan_episodes(["straight", "one-turn"], ["ClearNoon"], trials=2, seed=3, policy="caril",
                         corrections=CORRECTIONS)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, checkpoint):
    """An uninterrupted sequential campaign."""
    out = tmp_path_factory.mktemp("baseline")
    rows = campaign(out, checkpoint).run(specs())
    assert len(rows) == len(specs()) == 8
    return out


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_results_are_in_plan_order_with_the_result_columns(baseline):
    rows = read_results(baseline / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert [(r["route"], r["correction"], r["trial"]) for r in rows] == \
        [(s.route, s.correction, str(s.trial)) for s in specs()]


def test_resume_after_an_interruption_gives_the_same_results_file(baseline, checkpoint, tmp_path):
    done = []

    def stop_after_three(spec, row):
        done.append(spec)
        if len(done) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        campaign(tmp_path, checkpoint).run(specs(), on_episode=stop_after_three)
    assert len(read_results(tmp_path / "results.csv")) == 3  # appended as each episode finished
    rest = campaign(tmp_path, checkpoint).run(specs(), resume=True)
    assert [(r["route"], r["correction"], r["trial"]) for r in rest] == \
        [(s.route, s.correction, s.trial) for s in specs()[3:]]
    assert (tmp_path / "results.csv").read_bytes() == (baseline / "results.csv").read_bytes()
    for path in (baseline / "trajectories").glob("*.csv"):
        assert (tmp_path / "trajectories" / path.name).read_bytes() == path.read_bytes()


def test_two_workers_give_the_same_results_file_as_one(baseline, checkpoint, tmp_path):
    campaign(tmp_path, checkpoint).run(specs(), workers=2)
    assert (tmp_path / "results.csv").read_bytes() == (baseline / "results.csv").read_bytes()
    for path in (baseline / "decisions").glob("*.csv"):
        assert (tmp_path / "decisions" / path.name).read_bytes() == path.read_bytes()


def test_references_are_written_once_per_route_weather_and_seed_and_reused(baseline, checkpoint, tmp_path):
    names = sorted(p.name for p in (baseline / "references").iterdir())
    assert names == sorted({f"{s.reference_key}.csv" for s in specs()})
    assert len(names) == 4  # 2 routes x 2 seeds; both corrections share them
    shutil.copytree(baseline / "references", tmp_path / "references")
    moved = tmp_path / "references" / names[0]
    header, *body = read_csv(moved)
    table = np.array(body, dtype=float)
    table[:, header.index("y_m")] += 2.0  # a reference 2 m to the side: only a reused file gives this
    moved.write_text(",".join(header) + "\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in table) + "\n")
    before = moved.read_bytes()
    campaign(tmp_path, checkpoint).run(specs(), resume=True)  # a fresh (non-resumed) run would clear them
    assert moved.read_bytes() == before  # not driven again
    key = names[0].removesuffix(".csv")
    new, old = read_results(tmp_path / "results.csv"), read_results(baseline / "results.csv")
    for n, o, spec in zip(new, old, specs(), strict=True):
        if spec.reference_key == key:
            assert float(n["frechet_m"]) > float(o["frechet_m"]) + 1.0
            assert n["lateral_offset_mean_m"] == o["lateral_offset_mean_m"]  # the drive itself is unchanged
        else:
            assert n == o


def test_corrections_are_compared_on_the_same_seeds_and_starts(baseline):
    rows = read_results(baseline / "results.csv")
    by_episode = {}
    for spec, row in zip(specs(), rows, strict=True):
        by_episode.setdefault((row["route"], row["weather"], row["trial"]), []).append((spec, row))
    for (_, _, trial), pair in by_episode.items():
        assert [row["correction"] for _, row in pair] == list(CORRECTIONS)
        assert {row["seed"] for _, row in pair} == {str(3 + int(trial))}
        starts = [read_csv(baseline / "trajectories" / f"{spec.key}.csv")[1] for spec, _ in pair]
        assert starts[0] == starts[1]  # same spawn for both corrections
    t0 = read_csv(baseline / "trajectories" / "straight__ClearNoon__caril-caril__t0.csv")[1]
    t1 = read_csv(baseline / "trajectories" / "straight__ClearNoon__caril-caril__t1.csv")[1]
    assert t0 != t1  # and the trials differ (spawn noise from the seed)


def test_decisions_are_written_for_the_caril_policy(baseline):
    rows = read_results(baseline / "results.csv")
    for spec, row in zip(specs(), rows, strict=True):
        header, *body = read_csv(baseline / "decisions" / f"{spec.key}.csv")
        assert tuple(header) == DECISION_COLUMNS
        trajectory = read_csv(baseline / "trajectories" / f"{spec.key}.csv")
        assert len(body) == len(trajectory) - 2  # a decision per step; the trajectory also has its reset row
        rules = [r[DECISION_COLUMNS.index("rule")] for r in body]
        assert set(rules) <= set(STRATEGY_RULES[spec.correction])
        shares = ";".join(f"{rule}={rules.count(rule) / len(rules):.4f}" for rule in sorted(set(rules)))
        assert row["rule_shares"] == shares
