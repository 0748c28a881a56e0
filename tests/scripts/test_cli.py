"""The command line as a user meets it: subprocesses, exit codes, one-line errors, files on disk."""

import csv
import json
import os
import subprocess
import sys

import pytest

from training.evaluation import RESULT_COLUMNS


def caril(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=None if env is None else {**os.environ, **env})


def test_evaluate_expert_writes_results_trajectories_and_config(tmp_path):
    out = tmp_path / "eval"
    r = caril("evaluate", "--policy", "expert", "--routes", "paper", "--weathers", "ClearNoon,WetNoon",
              "--trials", "1", "--res", "64x64", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [(row["route"], row["weather"]) for row in rows] == [
        ("straight", "ClearNoon"), ("straight", "WetNoon"), ("one-turn", "ClearNoon"), ("one-turn", "WetNoon"),
        ("two-turn", "ClearNoon"), ("two-turn", "WetNoon")]
    assert all(row["termination"] == "goal" and float(row["route_completion"]) == 1.0 for row in rows)
    traj = (out / "trajectories" / "two-turn__WetNoon__expert__t0.csv").read_text().splitlines()
    assert traj[0] == "t_s,x_m,y_m,yaw_deg,speed_mps,lateral_offset_m,steer,throttle,brake"
    assert len(traj) > 500
    config = json.loads((out / "config.json").read_text())
    assert config["route_names"] == ["straight", "one-turn", "two-turn"] and config["seed"] == 0


def test_evaluate_resume_runs_only_missing_episodes(tmp_path):
    out = tmp_path / "eval"
    assert caril("evaluate", "--routes", "straight", "--no-camera", "--out", str(out)).returncode == 0
    first = (out / "results.csv").read_text()
    r = caril("evaluate", "--routes", "straight,one-turn", "--no-camera", "--resume", "--out", str(out))
    assert r.returncode == 0, r.stderr
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[:2] == first.splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["straight", "one-turn"]


def test_evaluate_resume_refuses_other_settings_and_repairs_a_cut_file(tmp_path):
    """A resume with another seed would mix results: refused, nothing touched. A last row cut by a kill and a
    failed episode are dropped and run again, and the file stays well formed."""
    out = tmp_path / "eval"
    assert caril("evaluate", "--routes", "straight,one-turn", "--no-camera", "--out", str(out)).returncode == 0
    whole = (out / "results.csv").read_text()
    config = (out / "config.json").read_text()
    r = caril("evaluate", "--routes", "straight,one-turn", "--no-camera", "--resume", "--seed", "5", "--out",
              str(out))
    assert r.returncode == 2 and "its results were made with another seed (0, now 5)" in r.stderr
    assert (out / "results.csv").read_text() == whole and (out / "config.json").read_text() == config
    header, straight, one_turn = whole.splitlines()
    failed = straight.split(",")
    failed[RESULT_COLUMNS.index("termination")] = "failed:tick_timeout"
    (out / "results.csv").write_text(f"{header}\n{','.join(failed)}\n{one_turn[:40]}")  # a kill mid-row
    r = caril("evaluate", "--routes", "straight,one-turn", "--no-camera", "--resume", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "results.csv").read_text() == whole  # both run again, in plan order, bit for bit


def test_evaluate_will_not_resume_results_of_another_simulator_revision(tmp_path):
    from sim.embedded import SIM_REVISION

    out = tmp_path / "eval"
    assert caril("evaluate", "--routes", "straight", "--no-camera", "--out", str(out)).returncode == 0
    config = json.loads((out / "config.json").read_text())
    assert config["result_settings"]["sim_revision"] == SIM_REVISION
    config["result_settings"]["sim_revision"] = SIM_REVISION - 1  # made before the renderer changed
    (out / "config.json").write_text(json.dumps(config))
    r = caril("evaluate", "--routes", "straight", "--no-camera", "--resume", "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert f"its results were made with another sim_revision ({SIM_REVISION - 1}, now {SIM_REVISION})" in r.stderr


def test_evaluate_will_not_resume_caril_results_of_another_correction_revision(tmp_path):
    from agent.correction import CORRECTION_REVISION
    from tests.tiny_checkpoint import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    args = ("evaluate", "--policy", "caril", "--checkpoint", str(ckpt), "--corrections", "caril", "--routes",
            "straight", "--res", "64x64", "--out", str(out))
    assert caril(*args).returncode == 0
    config = json.loads((out / "config.json").read_text())
    assert config["result_settings"]["correction_revision"] == CORRECTION_REVISION
    del config["result_settings"]["correction_revision"]  # as written before the corrections' revisions counted
    (out / "config.json").write_text(json.dumps(config))
    r = caril(*args, "--resume")
    assert r.returncode == 2, r.stderr
    assert f"its results were made with another correction_revision (0, now {CORRECTION_REVISION})" in r.stderr


def test_evaluate_checks_a_campaign_from_before_result_settings_on_its_stored_config(tmp_path):
    out = tmp_path / "eval"
    assert caril("evaluate", "--routes", "straight", "--no-camera", "--out", str(out)).returncode == 0
    config = json.loads((out / "config.json").read_text())
    del config["result_settings"]  # as written before this key existed
    (out / "config.json").write_text(json.dumps(config))
    r = caril("evaluate", "--routes", "straight", "--no-camera", "--resume", "--seed", "5", "--out", str(out))
    assert r.returncode == 2 and "its results were made with another seed (0, now 5)" in r.stderr
    # and on the embedded backend such results predate SIM_REVISION: another simulator made them
    r = caril("evaluate", "--routes", "straight", "--no-camera", "--resume", "--out", str(out))
    assert r.returncode == 2 and "its results were made with another sim_revision (0, now" in r.stderr


def test_evaluate_never_overwrites_results_unless_asked(tmp_path):
    out = tmp_path / "eval"
    assert caril("evaluate", "--routes", "straight", "--no-camera", "--out", str(out)).returncode == 0
    first = (out / "results.csv").read_text()
    r = caril("evaluate", "--routes", "one-turn", "--no-camera", "--out", str(out))
    assert r.returncode == 2 and "already holds evaluation results; continue them with --resume" in r.stderr
    assert (out / "results.csv").read_text() == first
    reference = (out / "references" / "straight__ClearNoon__s0.csv").read_text()
    r = caril("evaluate", "--routes", "straight", "--no-camera", "--spawn-noise", "1.0", "--overwrite", "--out",
              str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["route"] for r in rows] == ["straight"]
    assert (out / "references" / "straight__ClearNoon__s0.csv").read_text() != reference  # driven anew
    assert float(rows[0]["frechet_m"]) == 0.0  # the expert against its own reference, not the old one


def test_evaluate_counts_each_name_once(tmp_path):
    out = tmp_path / "eval"
    r = caril("evaluate", "--routes", "straight,straight", "--weathers", "ClearNoon,ClearNoon", "--no-camera",
              "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len((out / "results.csv").read_text().splitlines()) == 2


def test_a_path_that_cannot_be_used_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    r = caril("evaluate", "--routes", "straight", "--no-camera", "--out", str(tmp_path / "file" / "x"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("caril evaluate: error: cannot use") and "Not a directory" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--routes", "moon", "--out", "x"], "unknown route 'moon'; valid routes: straight, one-turn"),
    (["evaluate", "--routes", "moon", "--out", "x"],
     "for a generated route. Suites: paper, named, heldout, heldout-mini."),
    (["evaluate", "--weathers", "Sunny", "--out", "x"], "unknown weather 'Sunny'; valid weathers: ClearNoon"),
    (["evaluate", "--trials", "many", "--out", "x"], "argument --trials: invalid int value: 'many'"),
    (["evaluate", "--trials", "0", "--out", "x"], "--trials must be at least 1, got 0"),
    (["evaluate", "--policy", "robot", "--out", "x"], "argument --policy: invalid choice: 'robot'"),
    (["render", "--route", "straight", "--distance", "9999", "--out", "x.png"], "distance 9999.0 m is outside"),
    (["render", "--res", "wide", "--out", "x.png"], "resolution 'wide' is not WIDTHxHEIGHT"),
    (["evaluate", "--seed", "-3", "--out", "x"], "--seed must not be negative, got -3"),
    (["evaluate", "--policy", "caril", "--out", "x"], "--policy caril needs --checkpoint RUN"),  # as drive says
    (["evaluate", "--checkpoint", "policies/caril_small", "--cuda-graphs", "--out", "x"],
     "--checkpoint, --cuda-graphs only apply to --policy caril (this run drives expert)"),
    (["evaluate", "--policy", "caril", "--checkpoint", "policies/caril_small", "--corrections", ",", "--out", "x"],
     "--corrections ',' names no correction"),
    (["evaluate", "--spawn-noise", "-1", "--out", "x"], "--spawn-noise -1.0 m must be in 0..5 m"),
    (["evaluate", "--spawn-noise", "nan", "--out", "x"], "--spawn-noise nan m must be in 0..5 m"),
    (["evaluate", "--backend", "carla", "--spawn-noise", "0.3", "--out", "x"], "--spawn-noise is for the embedded"),
    (["collect", "--dt", "0.5", "--out", "x"], "--dt 0.5 s is outside 0.001..0.1 s"),
    (["evaluate", "--backend", "carla", "--workers", "2", "--routes", "0:1", "--out", "x"],
     "--workers > 1 needs --backend embedded"),
    (["evaluate", "--resume", "--overwrite", "--out", "x"], "--resume continues the results in OUT, --overwrite"),
    (["data", "check", "x", "--fast", "--sample", "-1"], "--sample must be 0 or more frames, got -1"),
    (["fly"], "unknown command 'fly'"),
    (["bench"], "name a benchmark first: one of sim, collect"),
])
def test_bad_input_is_one_line_and_non_zero(tmp_path, args, message):
    r = caril(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", ["evaluate", "collect", "drive"])
def test_carla_connection_defaults_come_from_the_environment(tmp_path, command):
    """CARLA_HOST / CARLA_PORT set the defaults, as in CARLA's examples; a bad value is the option's error."""
    r = caril(command, "--help", env={"CARLA_HOST": "10.1.2.3", "CARLA_PORT": "2042"})
    assert r.returncode == 0 and "10.1.2.3" in r.stdout and "2042" in r.stdout
    r = caril(command, "--out", "x", cwd=tmp_path, env={"CARLA_PORT": "two-thousand"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "argument --port: invalid int value: 'two-thousand'" in lines[0]
    assert not (tmp_path / "x").exists()


def test_evaluate_says_when_a_campaign_includes_the_checkpoints_training_conditions(tmp_path):
    from types import SimpleNamespace

    from scripts.evaluate import training_conditions_note
    from tests.tiny_checkpoint import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", extra={"trained_on": {"routes": ["random:100004"],
                                                                         "weathers": ["ClearNoon", "WetNoon"]}})
    args = SimpleNamespace(policy="caril", checkpoint=str(ckpt), route_names=["random:2", "random:100004"],
                           weather_names=["ClearNoon", "ClearSunset"])
    assert training_conditions_note(args) == (
        "note: the checkpoint was trained on random:100004, ClearNoon: results there are measured on training "
        "conditions (held-out maps: --routes heldout; held-out weathers: --weathers heldout)")
    args.route_names, args.weather_names = ["random:2"], ["ClearSunset"]
    assert training_conditions_note(args) == ""  # held-out only: nothing to say
    old = save_tiny_checkpoint(tmp_path / "old")  # no record of its data
    assert training_conditions_note(SimpleNamespace(policy="caril", checkpoint=str(old), route_names=["straight"],
                                                    weather_names=["ClearNoon"])) == ""
