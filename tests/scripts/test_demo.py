"""The shipped policy and `caril demo`: the recipe documented is the one `--from-scratch` runs, the policy is
what the recipe trains on training conditions only, and it drives held-out maps in a training weather."""

import json
import re

import pytest

from agent.caril_agent import CarilAgent, CarilAgentConfig
from agent.checkpoint import load_checkpoint
from scripts import demo
from scripts.cli import main
from sim.embedded import EmbeddedSimulator
from sim.episode import EpisodeMonitor
from sim.split import TRAIN_WEATHERS, is_training_route

AUGMENT_FLAGS = {"--flip": "flip_prob", "--brightness": "brightness", "--jitter": "contrast", "--colour": "colour",
                 "--haze": "haze", "--blur": "blur_prob"}


def _readme_command(name: str) -> str:
    text = (demo.SHIPPED / "README.md").read_text()
    block = re.search(rf"caril {name} (.*?)(?:\n(?!\s)|\Z)", text.split("```bash", 1)[1], re.S).group(1)
    return " ".join(re.sub(r"#.*", "", block).replace("\\", " ").split())


def test_the_readme_recipe_is_what_from_scratch_runs_and_what_the_policy_was_trained_with():
    assert " ".join(demo.RECIPE_COLLECT) in _readme_command("collect")
    train_cmd = _readme_command("train")
    for flag, value in zip(demo.RECIPE_TRAIN[::2], demo.RECIPE_TRAIN[1::2], strict=True):
        assert f"{flag} {value}" in train_cmd
    ckpt = load_checkpoint(demo.SHIPPED)
    meta = json.loads((demo.SHIPPED / "config.json").read_text())["meta"]
    recipe = dict(zip(demo.RECIPE_TRAIN[::2], demo.RECIPE_TRAIN[1::2], strict=True))
    assert meta["epoch"] <= int(recipe["--epochs"]) and meta["labels"]["seed"] == int(recipe["--seed"])
    assert meta["labels"]["steer_limit"] == float(recipe["--steer-limit"])
    assert ckpt.steer_scale == meta["labels"]["steer_scale"] == float(recipe["--steer-scale"])
    assert meta["labels"]["max_per_bin"] == int(recipe["--max-per-bin"])
    for flag, key in AUGMENT_FLAGS.items():
        assert meta["augment"][key] == float(recipe[flag]), flag
    assert ckpt.model.config.command_branches and ckpt.model.config.backbone == "small_cnn"
    assert (demo.SHIPPED / "model.safetensors").stat().st_size < 4_000_000  # "a few MB at most"


def test_the_shipped_policy_was_trained_on_training_conditions_only():
    trained_on = json.loads((demo.SHIPPED / "config.json").read_text())["meta"]["trained_on"]
    assert len(trained_on["routes"]) == 120 and all(is_training_route(r, "embedded") for r in trained_on["routes"])
    assert set(trained_on["weathers"]) == set(TRAIN_WEATHERS)
    assert "--allow-heldout" not in demo.RECIPE_COLLECT


@pytest.mark.parametrize("route", ["random:2", "random:6"])  # heldout-mini: never in its training data
def test_the_shipped_policy_drives_held_out_maps_to_their_goal_in_a_training_weather(route):
    sim = EmbeddedSimulator()
    agent = CarilAgent(demo.SHIPPED, CarilAgentConfig(correction="regression", device="cpu"))
    obs = sim.reset(route, "ClearNoon", 0)
    agent.reset(sim.route)
    monitor, reason, collisions = EpisodeMonitor(sim.route.length_m), None, 0
    while reason is None:
        control, record = agent.act(obs)
        assert record["fallback"] == ""
        obs = sim.step(control)
        collisions += len(obs.collisions)
        reason = monitor.update(obs)
    assert reason == "goal" and collisions == 0


def test_demo_prints_the_table_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--corrections", "regression,clamp", "--weathers", "ClearNoon",
                 "--trials", "1", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"overall: mean \[95% BCa bootstrap CI\], change vs regression", printed)
    for name in ("regression", "clamp", "expert"):
        assert re.search(rf"^\s+{name}\s+\d", printed, re.M)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["reference_correction"] == "regression"
    assert (out / "eval" / "report.md").is_file() and any((out / "eval" / "plots").iterdir())
    rows = (out / "eval" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header + 2 held-out maps (heldout-mini) x 2 corrections x 1 trial
