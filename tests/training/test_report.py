"""The campaign report: its numbers are those recomputed from results.csv, the relative change against the
reference correction is right, the plots are real PNGs, and the expert appears beside the policies."""

import json
import math
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from agent.bins import SteeringBins
from agent.checkpoint import save_checkpoint
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig
from sim.episode import EpisodeLimits
from sim.metrics import lane_deviation
from sim.types import CameraConfig
from training.evaluation import (
    RESULT_COLUMNS,
    Campaign,
    PolicyFactory,
    SimFactory,
    plan_episodes,
    read_results,
    write_table,
)
from training.head_errors import head_stats, read_head_columns
from training.report import METRIC_INFO, METRICS, ReportError, read_table, reference_rows, write_report
from training.stats import bootstrap_ci

LIMITS = EpisodeLimits(min_average_speed_mps=1e6, time_slack_s=1.0)  # ~1 simulated second per episode
N_RESAMPLES = 2000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------- a hand-written results.csv


def row(route, correction, trial, frechet, lat, completion, termination="off_route", collisions=0,
        rule_shares=""):
    values = {c: "0.000000" for c in RESULT_COLUMNS}
    values.update(route=route, weather="ClearNoon", seed=str(trial), trial=str(trial), policy="caril",
                  correction=correction, route_completion=f"{completion:.6f}", collisions=str(collisions),
                  lane_invasions="1", lateral_offset_mean_m=f"{lat:.6f}", lateral_offset_rms_m=f"{1.5 * lat:.6f}",
                  lateral_offset_max_m=f"{3 * lat:.6f}", frechet_m=f"{frechet:.6f}", dtw_m=f"{40 * frechet:.6f}",
                  area_m2=f"{100 * frechet:.6f}", curve_length=f"{frechet / 10:.6f}", infraction_penalty="1.000000",
                  driving_score=f"{100 * completion:.6f}", corrected_share="0.250000", mean_max_prob="0.700000",
                  rule_shares=rule_shares, termination=termination, sim_time_s=f"{10 + trial:.6f}")
    return [values[c] for c in RESULT_COLUMNS]


def failed_row(route, correction, trial):
    values = {c: "nan" for c in RESULT_COLUMNS}
    values.update(route=route, weather="ClearNoon", seed=str(trial), trial=str(trial), policy="caril",
                  correction=correction, rule_shares="", termination="failed:tick_timeout")
    return [values[c] for c in RESULT_COLUMNS]


REGRESSION_FRECHET = {"straight": [2.0, 2.2, 2.4, 2.6], "one-turn": [3.0, 3.5, 4.0, 4.5]}
CARIL_SHARES = ["keep_regression_agree=0.5000;gaussian_blend=0.5000",
                "keep_regression_agree=0.2500;uncertain_keep_regression=0.7500"]


def constructed_rows():
    """caril's Fréchet is exactly half of regression's; lane deviation, completion and outcomes vary."""
    out = []
    for route, frechets in REGRESSION_FRECHET.items():
        for k, f in enumerate(frechets):
            out.append(row(route, "regression", k, f, 0.3 + 0.1 * k, 0.5 + 0.1 * k, "goal" if k == 3 else "off_route",
                           rule_shares="regression=1.0000"))
        for k, f in enumerate(frechets):
            out.append(row(route, "caril", k, f / 2, 0.2 + 0.05 * k, 0.6 + 0.1 * k, "goal" if k >= 2 else "off_route",
                           collisions=k % 2, rule_shares=CARIL_SHARES[k % 2]))
        out.append(failed_row(route, "caril", 4))
    return out


@pytest.fixture
def constructed(tmp_path):
    write_table(tmp_path / "results.csv", RESULT_COLUMNS, constructed_rows())
    return tmp_path


def recomputed(path, seed):
    """{group: {label: {metric: (mean, low, high)}}} from results.csv with numpy and bootstrap_ci only."""
    rows = read_results(path)
    routes = dict.fromkeys(x["route"] for x in rows)
    groups = {"overall": rows, **{r: [x for x in rows if x["route"] == r] for r in routes}}
    out = {}
    for group, members in groups.items():
        out[group] = {}
        for label in dict.fromkeys(x["correction"] for x in members):
            mine = [x for x in members if x["correction"] == label]
            stats = {}
            for metric in METRICS:
                if metric == "success_rate":
                    values = [float(x["termination"] == "goal") for x in mine if not x["termination"].startswith("f")]
                else:
                    values = [float(x[metric]) for x in mine]
                values = np.array([v for v in values if math.isfinite(v)])
                stats[metric] = bootstrap_ci(values, N_RESAMPLES, 0.95, seed)
            out[group][label] = stats
    return out


def markdown_table(md, heading):
    """{label: {column header: cell}} of the first table after ``## heading``."""
    lines = md.split(f"## {heading}\n", 1)[1].strip().splitlines()
    table = lines[:next((i for i, ln in enumerate(lines) if not ln.startswith("|")), len(lines))]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    return {cells[0].strip("`"): dict(zip(header, cells, strict=True)) for cells in rows}


CELL = re.compile(r"^(-?\d+\.(\d+)) \[(-?\d+\.\d+), (-?\d+\.\d+)\](?: \((n/a|[+-]\d+\.\d%)(\*?)\))?$")


def parse_cell(cell):
    m = CELL.match(cell)
    assert m, f"cell {cell!r} is not 'mean [low, high] (change)'"
    return float(m[1]), float(m[3]), float(m[4]), len(m[2]), m[5], m[6] == "*"


def test_summary_and_report_equal_the_statistics_recomputed_from_results_csv(constructed):
    summary = write_report(constructed, seed=5, n_resamples=N_RESAMPLES)
    on_disk = json.loads((constructed / "summary.json").read_text())
    assert on_disk == summary
    expected = recomputed(constructed / "results.csv", seed=5)
    md = (constructed / "report.md").read_text()
    assert on_disk["ci_method"] == "bca" and f"(BCa bootstrap, {N_RESAMPLES} resamples, seed 5)" in md
    for group, labels in expected.items():
        assert list(on_disk["groups"][group]) == list(labels)  # no expert: there are no references
        heading = "Overall" if group == "overall" else f"Route `{group}`"
        table = markdown_table(md, heading)
        assert list(table) == list(labels)
        for label, stats in labels.items():
            for metric, (mean, low, high) in stats.items():
                got = on_disk["groups"][group][label]["metrics"][metric]
                assert (got["mean"], got["low"], got["high"]) == (mean, low, high), (group, label, metric)
                name = METRIC_INFO[metric][0]
                if name in table[label]:
                    m, lo, hi, decimals, _, _ = parse_cell(table[label][name])
                    tol = 0.5 * 10.0 ** -decimals + 1e-12
                    assert abs(m - mean) <= tol and abs(lo - low) <= tol and abs(hi - high) <= tol
    caril = on_disk["groups"]["overall"]["caril"]
    assert (caril["n"], caril["n_failed"]) == (10, 2)
    assert caril["metrics"]["frechet_m"]["n"] == 8  # the failed episodes' NaNs are in no mean
    assert caril["metrics"]["success_rate"]["mean"] == 0.5
    assert caril["rule_shares"] == {"keep_regression_agree": 0.375, "confident_bin_sample": 0.0,
                                    "uncertain_keep_regression": 0.375, "gaussian_blend": 0.25}
    assert "| `caril` | `gaussian_blend` | 0.250 |" in md


def test_relative_change_against_the_reference_correction(constructed):
    summary = write_report(constructed, reference_correction="regression", n_resamples=N_RESAMPLES)
    md = (constructed / "report.md").read_text()
    for group in ("overall", "straight", "one-turn"):
        caril = summary["groups"][group]["caril"]["metrics"]
        regression = summary["groups"][group]["regression"]["metrics"]
        assert caril["frechet_m"]["relative_change"] == pytest.approx(-0.5, abs=1e-12)
        assert caril["frechet_m"]["ci_overlaps_reference"] is False  # halved, and the CIs are apart
        for metric in ("lateral_offset_mean_m", "route_completion", "driving_score"):
            want = (caril[metric]["mean"] - regression[metric]["mean"]) / abs(regression[metric]["mean"])
            assert caril[metric]["relative_change"] == pytest.approx(want, rel=1e-12)
        assert caril["collisions"]["relative_change"] is None  # regression had none: undefined, not infinite
        assert regression["frechet_m"]["relative_change"] is None  # the reference itself: no change to state
        assert regression["frechet_m"]["ci_overlaps_reference"] is None
    cells = markdown_table(md, "Overall")
    assert parse_cell(cells["caril"]["Fréchet (m)"])[4:] == ("-50.0%", True)
    assert parse_cell(cells["caril"]["collisions"])[4] == "n/a"
    assert parse_cell(cells["regression"]["Fréchet (m)"])[4] is None  # the reference has no change to itself
    assert "- overall, `caril` vs `regression`: Fréchet (m) 3.025 -> 1.512, -50.0%" in md
    one_each = [r for r in read_results(constructed / "results.csv")  # one route, --trials 1
                if r["trial"] == "0" and r["route"] == "straight"]
    write_table(constructed / "results.csv", RESULT_COLUMNS, [[r[c] for c in RESULT_COLUMNS] for r in one_each])
    single = write_report(constructed, reference_correction="regression", n_resamples=N_RESAMPLES)
    frechet = single["groups"]["straight"]["caril"]["metrics"]["frechet_m"]
    assert frechet["relative_change"] == pytest.approx(-0.5) and frechet["ci_overlaps_reference"] is None
    assert "*" not in markdown_table((constructed / "report.md").read_text(), "Overall")["caril"]["Fréchet (m)"]
    write_table(constructed / "results.csv", RESULT_COLUMNS, constructed_rows())
    against_caril = write_report(constructed, reference_correction="caril", n_resamples=N_RESAMPLES)
    assert against_caril["groups"]["overall"]["regression"]["metrics"]["frechet_m"]["relative_change"] == \
        pytest.approx(1.0, abs=1e-12)


def test_report_is_deterministic_for_a_seed(constructed, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(constructed, twin)
    write_report(constructed, seed=1, n_resamples=N_RESAMPLES)
    write_report(twin, seed=1, n_resamples=N_RESAMPLES)
    for name in ("summary.json", "report.md", "plots/metrics_overall.png"):
        assert (constructed / name).read_bytes() == (twin / name).read_bytes()
    other = write_report(twin, seed=2, n_resamples=N_RESAMPLES)
    first = json.loads((constructed / "summary.json").read_text())
    assert other["groups"]["overall"]["caril"]["metrics"]["frechet_m"]["low"] != \
        first["groups"]["overall"]["caril"]["metrics"]["frechet_m"]["low"]


def test_missing_results_and_unknown_episodes_are_clear_errors(constructed, tmp_path):
    with pytest.raises(ReportError, match="no results.csv .* run `caril evaluate --out"):
        write_report(tmp_path / "empty")
    with pytest.raises(ReportError, match="no decisions for episode 'nope'"):
        write_report(constructed, episode_for_plot="nope", n_resamples=N_RESAMPLES)


# --------------------------------------------------------------------------- a real (tiny) campaign


@pytest.fixture(scope="module")
def campaign_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = NetworkConfig(input_size=(32, 32))
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt"), DualHeadNet(cfg).eval(), cfg,
                                 PreprocessConfig(height=32, width=32), SteeringBins())
    out = tmp_path_factory.mktemp("eval")
    sim = {"camera": CameraConfig(width=64, height=64), "spawn_noise_m": 0.3}
    Campaign(out, SimFactory("embedded", sim), PolicyFactory(str(checkpoint), device="cpu"), limits=LIMITS,
             make_reference_sim=SimFactory("embedded", {**sim, "render_camera": False})).run(
        plan_episodes(["straight"], ["ClearNoon"], 2, 0, "caril", ["regression", "caril"]))
    (out / "config.json").write_text(json.dumps({"policy": "caril", "trials": 2, "routes": "straight"}))
    return out


def test_plots_are_valid_pngs(campaign_dir):
    summary = write_report(campaign_dir, n_resamples=N_RESAMPLES)
    plots = summary["plots"]
    assert plots["episode_for_plot"] == "straight__ClearNoon__caril-caril__t0"  # the first caril episode
    paths = [plots["trajectories"]["straight"], plots["lateral_offset"]["straight"], plots["confidence"],
             plots["metrics_overall"], plots["head_errors"]]
    assert paths == ["plots/trajectories_straight.png", "plots/lateral_offset_straight.png",
                     "plots/confidence_straight__ClearNoon__caril-caril__t0.png", "plots/metrics_overall.png",
                     "plots/head_errors.png"]
    for path in paths:
        data = (campaign_dir / path).read_bytes()
        assert data.startswith(PNG_MAGIC)
        image = cv2.imread(str(campaign_dir / path))
        assert image is not None and image.shape[0] > 300 and image.shape[1] > 500
    md = (campaign_dir / "report.md").read_text()
    for path in paths:
        assert f"]({path})" in md
    assert '| policy | `"caril"` |' in md  # the campaign's config
    chosen = write_report(campaign_dir, episode_for_plot="straight__ClearNoon__caril-regression__t1",
                          n_resamples=N_RESAMPLES)
    assert chosen["plots"]["confidence"] == "plots/confidence_straight__ClearNoon__caril-regression__t1.png"
    assert (campaign_dir / chosen["plots"]["confidence"]).read_bytes().startswith(PNG_MAGIC)


def test_heads_against_the_expert_pool_every_decision_of_a_label(campaign_dir):
    summary = write_report(campaign_dir, n_resamples=N_RESAMPLES)
    heads = summary["heads"]
    assert set(heads) == {"overall", "straight"} and set(heads["overall"]) == {"regression", "caril"}
    for label in ("regression", "caril"):
        files = sorted((campaign_dir / "decisions").glob(f"straight__ClearNoon__caril-{label}__t*.csv"))
        data = np.concatenate([read_head_columns(p) for p in files])
        assert len(data) > 30 and heads["overall"][label] == pytest.approx(head_stats(data), nan_ok=True)
    reg = heads["overall"]["regression"]
    assert reg["corrected_mae"] == reg["regression_mae"]  # regression sends its own head's value
    md = (campaign_dir / "report.md").read_text()
    table = markdown_table(md.split("## The heads against the expert", 1)[1], "Overall")
    assert table["regression"]["ticks"] == str(reg["ticks"])
    assert table["regression"]["error correlation"] == f"{reg['error_correlation']:.3f}"
    assert "### Route `straight`" not in md  # per route only in summary.json


def test_expert_entry_comes_from_the_references(campaign_dir):
    summary = write_report(campaign_dir, n_resamples=N_RESAMPLES)
    assert summary["labels"] == ["regression", "caril", "expert"]
    references = sorted((campaign_dir / "references").glob("*.csv"))
    assert len(references) == 2
    deviations = [lane_deviation(read_table(p)["lateral_offset_m"]) for p in references]
    for group in ("overall", "straight"):
        expert = summary["groups"][group]["expert"]
        assert (expert["source"], expert["n"]) == ("references", 2)
        for metric in ("lateral_offset_mean_m", "lateral_offset_max_m"):
            mean, low, high = bootstrap_ci([d[metric] for d in deviations], N_RESAMPLES, 0.95, 0)
            got = expert["metrics"][metric]
            assert (got["mean"], got["low"], got["high"]) == (mean, low, high)
        assert expert["metrics"]["frechet_m"]["mean"] == 0.0  # the reference is itself
        assert expert["metrics"]["collisions"]["mean"] is None  # not recorded for references
    assert "| `expert` | 2 |" in (campaign_dir / "report.md").read_text()


def test_expert_route_completion_matches_the_simulators(tmp_path):
    """With the expert as the policy its trajectories are the references: the completion recomputed from a
    reference equals the one the episode measured."""
    sim = SimFactory("embedded", {"render_camera": False, "spawn_noise_m": 0.3})
    limits = EpisodeLimits(min_average_speed_mps=1e6, time_slack_s=3.0)
    Campaign(tmp_path, sim, PolicyFactory(), limits=limits).run(
        plan_episodes(["one-turn", "s-curve"], ["ClearNoon"], 1, 4, "expert"))
    rows = read_results(tmp_path / "results.csv")
    mine = reference_rows(tmp_path, rows)
    assert [m["route"] for m in mine] == ["one-turn", "s-curve"]
    for measured, recomputed_row in zip(rows, mine, strict=True):
        assert 0.0 < float(measured["route_completion"]) < 1.0
        assert recomputed_row["route_completion"] == pytest.approx(float(measured["route_completion"]), abs=2e-6)
        assert recomputed_row["lateral_offset_mean_m"] == pytest.approx(float(measured["lateral_offset_mean_m"]),
                                                                        abs=2e-6)
    summary = write_report(tmp_path, n_resamples=N_RESAMPLES)
    assert summary["labels"] == ["expert"]  # the expert policy's own rows; no duplicate reference entry


def test_a_campaign_in_several_weathers_gets_a_group_per_weather(tmp_path, constructed):
    single = write_report(constructed, seed=5, n_resamples=N_RESAMPLES)
    assert single["weathers"] == ["ClearNoon"] and not any(g.startswith("weather:") for g in single["groups"])
    rows = constructed_rows()
    weather = RESULT_COLUMNS.index("weather")
    for r in rows:
        if r[RESULT_COLUMNS.index("trial")] in ("2", "3"):
            r[weather] = "HardRainNoon"
    root = tmp_path / "two_weathers"
    root.mkdir()
    write_table(root / "results.csv", RESULT_COLUMNS, rows)
    summary = write_report(root, seed=5, n_resamples=N_RESAMPLES)
    assert summary["weathers"] == ["ClearNoon", "HardRainNoon"]
    assert list(summary["groups"]) == ["overall", "straight", "one-turn", "weather:ClearNoon", "weather:HardRainNoon"]
    for name in summary["weathers"]:
        subset = tmp_path / name
        subset.mkdir()
        write_table(subset / "results.csv", RESULT_COLUMNS, [r for r in rows if r[weather] == name])
        expected = recomputed(subset / "results.csv", seed=5)["overall"]
        for label, stats in expected.items():
            for metric, (mean, low, high) in stats.items():
                got = summary["groups"][f"weather:{name}"][label]["metrics"][metric]
                assert (got["mean"], got["low"], got["high"]) == (mean, low, high), (name, label, metric)
    md = (root / "report.md").read_text()
    assert list(markdown_table(md, "Weather `HardRainNoon`")) == ["regression", "caril"]


def _generalization_rows():
    """regression on a held-out map and a paper route, in a seen and an unseen weather, trials 0-3."""
    col = RESULT_COLUMNS.index
    rows = []
    for route, weather, completions in (("random:2", "ClearNoon", [1.0, 1.0, 0.9, 1.0]),
                                        ("random:2", "ClearSunset", [0.5, 0.7, 0.6, 1.0]),
                                        ("one-turn", "ClearNoon", [1.0, 1.0, 1.0, 1.0]),
                                        ("one-turn", "ClearSunset", [0.8, 1.0, 0.4, 0.9])):
        for k, c in enumerate(completions):
            r = row(route, "regression", k, 1.0, 0.1 + 0.01 * k, c, "goal" if c == 1.0 else "off_route")
            r[col("weather")] = weather
            rows.append(r)
    return rows


def test_generalization_section_splits_seen_from_unseen_by_the_checkpoints_record(tmp_path):
    net_cfg = NetworkConfig(n_bins=5, trunk=(16,), head_hidden=8)
    ckpt = save_checkpoint(tmp_path / "ckpt", DualHeadNet(net_cfg), net_cfg, PreprocessConfig(), SteeringBins(5),
                           {"trained_on": {"routes": ["one-turn"], "weathers": ["ClearNoon"]}})
    root = tmp_path / "eval"
    root.mkdir()
    rows = _generalization_rows()
    write_table(root / "results.csv", RESULT_COLUMNS, rows)
    (root / "config.json").write_text(json.dumps({"checkpoint": str(ckpt)}))
    summary = write_report(root, seed=3, n_resamples=N_RESAMPLES)
    gen = summary["generalization"]
    assert gen["seen_from"] == "checkpoint"
    assert gen["weathers"] == {"ClearNoon": True, "ClearSunset": False}
    assert gen["map_kinds"] == {"random:2": "generated, held out", "one-turn": "training map"}
    completion = RESULT_COLUMNS.index("route_completion")
    unseen = [float(r[completion]) for r in rows if r[RESULT_COLUMNS.index("weather")] == "ClearSunset"]
    got = gen["by"]["seen"]["regression"]["unseen"]
    assert got["n"] == 8
    assert (got["route_completion"]["mean"], got["route_completion"]["low"], got["route_completion"]["high"]) == \
        bootstrap_ci(unseen, N_RESAMPLES, 0.95, 3)
    assert gen["by"]["map_kind"]["regression"]["generated, held out"]["success_rate"]["mean"] == 4 / 8
    md = (root / "report.md").read_text()
    assert "## Generalization" in md and "| `regression` | unseen | 8 | 0.738 [" in md
    assert (root / summary["plots"]["generalization"]).read_bytes()[:8] == PNG_MAGIC
    (ckpt / "config.json").unlink()  # a checkpoint that cannot say: the split decides
    gen = write_report(root, seed=3, n_resamples=N_RESAMPLES)["generalization"]
    assert gen["seen_from"] == "split" and gen["map_kinds"]["one-turn"] == "paper route"
    assert gen["weathers"] == {"ClearNoon": True, "ClearSunset": False}
