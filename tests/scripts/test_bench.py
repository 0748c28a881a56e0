"""Benchmarks run end to end and write the JSON keys the issues name (tiny budgets; no timing asserted)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.bins import SteeringBins
from agent.correction import STRATEGY_RULES, correct
from scripts.bench_policy import Args as PolicyArgs
from scripts.bench_policy import _time_acts, rule_inputs
from sim.errors import CarilError, UsageError

SHIPPED_POLICY = Path(__file__).resolve().parents[2] / "policies" / "caril_small"


def bench(tmp_path, *args):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "bench", *args, "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env={"SDL_VIDEODRIVER": "dummy",
                                                                          "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data == json.loads(r.stdout)
    return data


def test_bench_sim_compares_with_carracing(tmp_path):
    data = bench(tmp_path, "sim", "--steps", "30", "--baseline-steps", "20", "--warmup", "2")
    cases = data["cases"]
    assert set(cases) == {"carracing_96", "embedded_160", "embedded_448"}
    for name in ("embedded_160", "embedded_448"):
        assert cases[name]["steps"] == 30 and cases[name]["steps_per_s"] > 0
        ratio = cases[name]["steps_per_s"] / cases["carracing_96"]["steps_per_s"]
        assert abs(cases[name]["ratio_vs_carracing"] - ratio) < 0.01


def test_bench_policy_splits_act_latency(tmp_path):
    data = bench(tmp_path, "policy", "--steps", "10", "--warmup", "1", "--device", "cpu",
                 "--checkpoint", str(SHIPPED_POLICY), "--route", "one-turn")
    drive = data["checkpoint"]  # the trained policy in closed loop: the rules fire as on the road
    assert (drive["route"], drive["calls"], drive["path"]) == ("one-turn", 10, str(SHIPPED_POLICY))
    assert set(drive["rule_shares"]) == set(drive["correction_p50_ms_by_rule"]) <= set(STRATEGY_RULES["caril"])
    assert sum(drive["rule_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    for net in ("default", "paper"):
        row = data[net]
        assert set(row) >= {"act_p50_ms", "act_p99_ms", "preprocess_p50_ms", "network_p50_ms", "correction_p50_ms"}
        assert row["network_p50_ms"] > 0 and row["correction_p50_ms"] > 0 and row["calls"] == 10
        assert row["act_p50_ms"] >= row["network_p50_ms"]
        by_rule = row["correction_p50_ms_by_rule"]  # every rule of caril timed, not only the one act() hit
        assert set(by_rule) == set(STRATEGY_RULES["caril"]) and min(by_rule.values()) > 0
        worst = max(by_rule.values()) / row["network_p50_ms"]
        assert row["correction_worst_rule_share_of_network"] == pytest.approx(worst, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize(("args", "message"), [(("--checkpoint", "no/such/policy"), "does not exist"),
                                               (("--checkpoint", str(SHIPPED_POLICY), "--route", "moon"),
                                                "unknown route 'moon'")])
def test_bench_policy_refuses_a_bad_checkpoint_or_route_before_timing(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "bench", "policy", "--steps", "10", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""  # nothing was timed


class _Agent:
    """Records as CarilAgent.act() gives them: a safe stop wherever ``stops`` says, else a keep-regression tick."""
    device, uses_cuda_graphs = "cpu", False

    def __init__(self, stops):
        self.stops, self.k = stops, 0

    def reset(self):
        self.k = 0

    def act(self, obs):
        stop, self.k = self.stops[self.k], self.k + 1
        if stop:
            return None, {"fallback": f"regression output nan at {self.k - 1}", "rule": "fallback_safe_stop",
                          "preprocess_ms": 0.0, "network_ms": 0.0, "correction_ms": 0.0}
        return None, {"fallback": "", "rule": "keep_regression_agree", "preprocess_ms": 0.5, "network_ms": 2.0,
                      "correction_ms": 0.01}


def test_bench_policy_counts_safe_stops_apart_from_the_timed_calls():
    args = PolicyArgs(steps=10, warmup=2)
    stops = [True, False] + [False, True, False, True] + [False] * 6  # two in warm-up (one a stop), 2 stops timed
    row = _time_acts(_Agent(stops), None, lambda control: None, args)
    assert (row["calls"], row["fallbacks"], row["first_fallback"]) == (8, 2, "regression output nan at 3")
    assert row["network_p50_ms"] == 2.0 and row["correction_share_of_network"] == 0.005  # no zeros in the p50s
    assert list(row["by_rule"]) == ["keep_regression_agree"] and len(row["by_rule"]["keep_regression_agree"]) == 8
    with pytest.raises(CarilError, match="every one of the 10 timed act"):
        _time_acts(_Agent([False, False] + [True] * 10), None, lambda control: None, args)


@pytest.mark.parametrize(("kwargs", "message"), [({"warmup": -1}, "--warmup must not be negative"),
                                                 ({"route": "one-turn"}, "give --checkpoint DIR too")])
def test_bench_policy_arguments(kwargs, message):
    with pytest.raises(UsageError, match=message):
        PolicyArgs(**kwargs)
    assert PolicyArgs(checkpoint="x").route == "two-turn"


@pytest.mark.parametrize("strategy", sorted(STRATEGY_RULES))
def test_bench_policy_finds_inputs_for_every_rule(strategy):
    inputs = rule_inputs(strategy, SteeringBins())
    assert set(inputs) == set(STRATEGY_RULES[strategy])
    for rule, (r, p) in inputs.items():
        assert correct(strategy, r, p, bins=SteeringBins()).rule == rule


def test_bench_serve_pairs_rounds_through_the_real_client(tmp_path):
    data = bench(tmp_path, "serve", "--ticks", "6", "--rounds", "3", "--warmup", "2", "--size", "64")
    assert len(data["rounds"]) == 3 and data["camera"] == [64, 64, 110.0]
    assert data["frames_matched"] == data["frames"] == 3 * 8  # every camera frame matched its tick
    for r in data["rounds"]:
        assert r["direct"]["ticks"] == r["served"]["ticks"] == 6
        assert r["ratio"] == round(r["served"]["ticks_per_s"] / r["direct"]["ticks_per_s"], 3)
    served = sorted(r["served"]["ticks_per_s"] for r in data["rounds"])[1]
    direct = sorted(r["direct"]["ticks_per_s"] for r in data["rounds"])[1]
    assert (data["ticks_per_s_served"], data["ticks_per_s_direct"]) == (served, direct)  # medians
    assert data["target_met"] == (data["ratio_served_to_direct"] >= data["target_ratio"] == 0.5)
    # CPU per timed tick, all threads: this process on each side, and the server from /proc (10 ms clock ticks)
    cpu = {"direct": [r["direct"]["cpu_us_per_tick"] for r in data["rounds"]],
           "served_client": [r["served"]["client_cpu_us_per_tick"] for r in data["rounds"]],
           "served_server": [r["served"]["server_cpu_us_per_tick"] for r in data["rounds"]]}
    assert all(v > 0 for v in cpu["direct"] + cpu["served_client"])
    ticks = [v * 6 / 1e4 for v in cpu["served_server"]]  # in 10 ms clock ticks over the 6 timed ticks
    assert all(t >= 0 and abs(t - round(t)) < 1e-3 for t in ticks)
    assert data["cpu_us_per_tick"] == {k: round(sorted(v)[1], 1) for k, v in cpu.items()}


def test_cpu_seconds_of_this_process_and_of_another():
    import os

    from scripts.bench_serve import cpu_s

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\ninput()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10.0
        while (cpu_s(busy.pid) or 0.0) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert 0.25 <= cpu_s(busy.pid) < 5.0  # the child's own CPU, not ours
    finally:
        busy.communicate(b"\n", timeout=10)
    assert cpu_s(os.getpid()) is not None and cpu_s(2 ** 30) is None  # no such process
    assert cpu_s() == pytest.approx(time.process_time(), abs=0.05)
