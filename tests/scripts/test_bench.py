"""Benchmarks run end to end and write the JSON keys the issues name (tiny budgets; no timing asserted)."""

import json
import subprocess
import sys


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
    data = bench(tmp_path, "policy", "--steps", "10", "--warmup", "1", "--device", "cpu")
    for net in ("default", "paper"):
        row = data[net]
        assert set(row) >= {"act_p50_ms", "act_p99_ms", "preprocess_p50_ms", "network_p50_ms", "correction_p50_ms"}
        assert row["network_p50_ms"] > 0 and row["correction_p50_ms"] > 0 and row["calls"] == 10
        assert row["act_p50_ms"] >= row["network_p50_ms"]


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
