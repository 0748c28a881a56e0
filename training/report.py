"""Campaign report: ``summary.json``, ``report.md`` and PNG plots from an evaluation folder.

::

    summary = write_report(Path("runs/eval"), reference_correction="regression", seed=0)

reads what :class:`training.evaluation.Campaign` wrote (``results.csv``, ``trajectories/``, ``references/``,
``decisions/``, ``config.json``) and writes, in the same folder:

- ``summary.json``: per group (``overall`` and each route) and per label (the episode's correction, or its
  policy when it has none), the mean and 95% BCa bootstrap CI (:func:`training.stats.bootstrap_ci`,
  one ``seed`` for every group and metric, so the file is deterministic) of every numeric metric of
  ``results.csv`` plus ``success_rate`` (share of episodes ending at the goal), the relative change of each
  mean against ``reference_correction`` (the paper's headline comparison,
  :func:`training.stats.relative_change`) and whether the two CIs overlap; the share of steps each rule fired;
  and an ``expert`` entry computed from the references (lane deviation from their ``lateral_offset_m``
  column, the very column the policies' lane deviation comes from; similarity 0 by definition; route
  completion by projecting the last point onto the route where :func:`sim.routes.get_route` knows it).
- ``report.md``: the same numbers, formatted, with the campaign's config, a headline table, per-route tables,
  the differences whose CIs do not overlap, the rule shares and the plots.
- ``plots/``: ``trajectories_<route>.png``, ``lateral_offset_<route>.png``, ``confidence_<episode>.png`` and
  ``metrics_overall.png``.

All numbers come from one computation (:func:`summarise_campaign`); the Markdown and the bar chart only
format that dict. Failed episodes (termination ``failed:<reason>``, a lost simulator) have NaN metrics: they
count in ``n`` and ``n_failed`` but in no mean, and not in the success rate. JSON holds ``null`` for NaN.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from agent.correction import RULE_FALLBACK, STRATEGY_RULES
from agent.factory import resolve_checkpoint
from sim.episode import EpisodeLimits
from sim.errors import CarilError
from sim.metrics import lane_deviation
from sim.routes import get_route
from training.evaluation import METRIC_COLUMNS, EpisodeSpec, read_results
from training.generalization import markdown as generalization_markdown
from training.generalization import plot_generalization, summarise_generalization
from training.head_errors import markdown as heads_markdown
from training.head_errors import plot_head_errors, pooled_ticks, summarise_heads
from training.stats import CI_NAMES, DEFAULT_METHOD, relative_change, summarise

log = logging.getLogger(__name__)

OVERALL = "overall"
WEATHER_GROUP = "weather:"  # summary group keys per weather, when a campaign has several
EXPERT = "expert"
SUCCESS = "success_rate"
METRICS = (*(c for c in METRIC_COLUMNS if c not in ("rule_shares", "termination")), SUCCESS)
"""Every metric summarised: the numeric columns of results.csv, then the success rate (derived)."""

METRIC_INFO: dict[str, tuple[str, int]] = {  # metric -> (name with unit, decimals in report.md)
    "route_completion": ("route completion (fraction)", 3),
    "collisions": ("collisions", 2),
    "lane_invasions": ("lane invasions", 2),
    "lateral_offset_mean_m": ("lane deviation mean (m)", 3),
    "lateral_offset_rms_m": ("lane deviation RMS (m)", 3),
    "lateral_offset_max_m": ("lane deviation max (m)", 3),
    "frechet_m": ("Fréchet (m)", 3),
    "dtw_m": ("DTW (m)", 1),
    "area_m2": ("area between curves (m²)", 2),
    "curve_length": ("curve-length measure", 3),
    "infraction_penalty": ("infraction penalty", 3),
    "driving_score": ("driving score (%)", 1),
    "corrected_share": ("share of steps corrected", 3),
    "mean_max_prob": ("mean max probability", 3),
    "sim_time_s": ("episode time (s)", 1),
    SUCCESS: ("success rate", 3),
}
HEADLINE = ("frechet_m", "lateral_offset_mean_m", "route_completion", "collisions", "driving_score")
BAR_METRICS = ("frechet_m", "lateral_offset_mean_m", "route_completion", "collisions", "driving_score", SUCCESS)
PLOT_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
              "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3}
LINE_STYLES = ("-", "--", "-.", ":")  # per label, so identical drives of two labels stay visible
OFFSET_STEP_M = 0.5  # grid of the lateral-offset plot along the distance driven


class ReportError(CarilError, ValueError):
    """A campaign folder the report cannot be written from (no results, an unknown episode to plot)."""


# ------------------------------------------------------------------------------------------------ the API


def write_report(out_dir: Path, reference_correction: str = "regression", episode_for_plot: str | None = None,
                 seed: int = 0, *, n_resamples: int = 10000, confidence: float = 0.95) -> dict:
    """Write ``summary.json``, ``report.md`` and ``plots/*.png`` into ``out_dir``; return the summary.

    ``reference_correction`` is the label every other is compared with (a correction name, or the policy
    name for policies without one); ``episode_for_plot`` is an episode key (a file name in ``decisions/``
    without ``.csv``) for the confidence plot, by default the first ``caril``-correction episode that has
    decisions. Deterministic for ``seed``. The returned dict is exactly what ``summary.json`` holds.
    """
    out_dir = Path(out_dir)
    rows = _load_rows(out_dir)
    summary = summarise_campaign(out_dir, rows, reference_correction, seed, n_resamples, confidence)
    summary["plots"] = write_plots(out_dir, rows, summary, episode_for_plot)
    summary = _json_safe(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(summary), encoding="utf-8")
    log.info("report written to %s (summary.json, report.md, %d plots)", out_dir,
             len(_plot_paths(summary["plots"])))
    return summary


def summarise_campaign(out_dir: Path, rows: list[dict[str, str]], reference_correction: str = "regression",
                       seed: int = 0, n_resamples: int = 10000, confidence: float = 0.95) -> dict:
    """The one computation behind the report: every group's and label's statistics (NaN where undefined)."""
    rows = [with_derived(r) for r in rows]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    expert = [] if EXPERT in labels else reference_rows(out_dir, rows)
    routes = list(dict.fromkeys(r["route"] for r in rows))
    weathers = list(dict.fromkeys(r["weather"] for r in rows))
    members = group_members(rows)
    groups = {group: _group(part, group_members(expert).get(group, []), seed, n_resamples, confidence)
              for group, part in members.items()}
    if reference_correction not in labels:
        log.warning("reference %r is not among the labels %s: no relative changes", reference_correction, labels)
    for entries in groups.values():
        _compare(entries, reference_correction)
    return {"reference_correction": reference_correction, "seed": seed, "n_resamples": n_resamples,
            "ci_method": DEFAULT_METHOD, "confidence": confidence, "metrics": list(METRICS),
            "labels": labels + ([EXPERT] if expert else []),
            "routes": routes, "weathers": weathers, "n_episodes": len(rows), "config": _read_config(out_dir),
            "groups": groups, "heads": summarise_heads(out_dir, members, episode_key),
            "generalization": summarise_generalization(rows, _read_config(out_dir), seed, n_resamples=n_resamples,
                                                       confidence=confidence) if len(weathers) > 1 else {}}


def group_members(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each summary group: ``overall``, each route, and each weather when there are several
    (e.g. the training weather against an unseen one)."""
    groups = {OVERALL: rows}
    for route in dict.fromkeys(r["route"] for r in rows):
        groups[route] = [r for r in rows if r["route"] == route]
    weathers = list(dict.fromkeys(r["weather"] for r in rows))
    for weather in weathers if len(weathers) > 1 else ():
        groups[WEATHER_GROUP + weather] = [r for r in rows if r["weather"] == weather]
    return groups


def with_derived(row: dict[str, str]) -> dict[str, str]:
    """A results row plus ``label`` (correction, else policy) and ``success_rate`` (1/0; blank if failed)."""
    failed = row["termination"].startswith("failed")
    return {**row, "label": row["correction"] or row["policy"],
            SUCCESS: "" if failed else ("1" if row["termination"] == "goal" else "0")}


def episode_key(row: dict[str, str]) -> str:
    """The file name (without ``.csv``) of a results row's trajectory and decisions."""
    return _spec(row).key


def parse_rule_shares(text: str) -> dict[str, float]:
    """``"rule=share;rule=share"`` (the ``rule_shares`` column) as a dict; empty text gives {}."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        rule, _, share = item.partition("=")
        out[rule] = float(share)
    return out


def reference_rows(out_dir: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per reference (route, weather, seed) of ``rows`` that exists in ``references/``: the expert's
    lane deviation, similarity 0 (to itself), time, and route completion (NaN where the route is unknown)."""
    out = []
    seen = set()
    for row in rows:
        key = _spec(row).reference_key
        path = out_dir / "references" / f"{key}.csv"
        if key in seen or not path.exists():
            continue
        seen.add(key)
        table = read_table(path)
        completion = _route_completion(row["route"], table["x_m"], table["y_m"])
        success = "" if math.isnan(completion) else ("1" if completion == 1.0 else "0")
        out.append({"route": row["route"], "weather": row["weather"], "seed": row["seed"], "label": EXPERT,
                    "termination": "", "rule_shares": "", **{m: "" for m in METRICS},
                    **lane_deviation(table["lateral_offset_m"]), "frechet_m": 0.0, "dtw_m": 0.0, "area_m2": 0.0,
                    "curve_length": 0.0, "sim_time_s": float(table["t_s"][-1]), "route_completion": completion,
                    SUCCESS: success})
    return out


def read_table(path: Path) -> dict[str, np.ndarray]:
    """A numeric CSV table (trajectory or reference) as ``{column: float array}``."""
    with path.open(newline="") as f:
        header = next(csv.reader(f))
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2).reshape(-1, len(header))
    return {name: data[:, i] for i, name in enumerate(header)}


def read_decisions(path: Path) -> dict[str, Any]:
    """A decisions CSV as ``{column: float array}`` plus ``rule`` as a list of names."""
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    out: dict[str, Any] = {c: np.array([_float(r[c]) for r in records]) for c in
                           ("t_s", "steer_regression", "steer", "max_prob", "entropy")}
    out["rule"] = [r["rule"] for r in records]
    return out


# ----------------------------------------------------------------------------------------- statistics


def _load_rows(out_dir: Path) -> list[dict[str, str]]:
    path = out_dir / "results.csv"
    if not path.exists():
        raise ReportError(f"no results.csv in {out_dir}; run `caril evaluate --out {out_dir}` first.")
    rows = read_results(path)
    if not rows:
        raise ReportError(f"{path} holds no episodes yet; run (or resume) the campaign with `caril evaluate`.")
    return rows


def _group(rows: list[dict], expert: list[dict], seed: int, n_resamples: int, confidence: float) -> dict:
    """Statistics per label over ``rows`` (episodes) and ``expert`` (references), labels in order."""
    entries = {}
    for stats in summarise(rows + expert, ("label",), METRICS, seed, n_resamples=n_resamples,
                           confidence=confidence):
        label = stats["label"]
        members = [r for r in rows + expert if r["label"] == label]
        entries[label] = {
            "source": "references" if label == EXPERT and expert else "episodes",
            "n": stats["n"],
            "n_failed": sum(r["termination"].startswith("failed") for r in members),
            "metrics": {m: {"mean": stats[f"{m}_mean"], "low": stats[f"{m}_low"], "high": stats[f"{m}_high"],
                            "n": stats[f"{m}_n"]} for m in METRICS},
            "rule_shares": _rule_shares(members, label),
        }
    return entries


def _rule_shares(members: list[dict], label: str) -> dict[str, float]:
    """Mean over episodes with decisions of each rule's share of steps (0 where it did not fire); the
    strategy's own rules always appear, in their documented order."""
    parsed = [parse_rule_shares(r["rule_shares"]) for r in members if r.get("rule_shares")]
    if not parsed:
        return {}
    fired = {rule for p in parsed for rule in p}
    rules = [*STRATEGY_RULES.get(label, ()), *sorted(fired - set(STRATEGY_RULES.get(label, ())))]
    return {rule: float(np.mean([p.get(rule, 0.0) for p in parsed])) for rule in rules}


def _compare(entries: dict[str, dict], reference: str) -> None:
    """Add ``relative_change`` and ``ci_overlaps_reference`` to each metric of each entry (NaN / None where
    there is no reference, no value, or for the reference itself; the overlap also None with fewer than two
    values on either side)."""
    base = entries.get(reference)
    for label, entry in entries.items():
        for metric, stats in entry["metrics"].items():
            ref = base["metrics"][metric] if base else None
            usable = ref is not None and label != reference and math.isfinite(ref["mean"]) \
                and math.isfinite(stats["mean"])
            stats["relative_change"] = relative_change(stats["mean"], ref["mean"]) if usable else math.nan
            spread = usable and min(stats["n"], ref["n"]) >= 2  # one value is no interval: nothing to overlap
            stats["ci_overlaps_reference"] = (stats["low"] <= ref["high"] and ref["low"] <= stats["high"]) \
                if spread else None


def _route_completion(route_name: str, x_m: np.ndarray, y_m: np.ndarray) -> float:
    """Route completion of a reference drive, as the embedded simulator measures it: the last point
    projected with the same moving hint, 1.0 within the default goal tolerance; NaN for an unknown route."""
    try:
        route = get_route(route_name)
    except CarilError:
        return math.nan
    hint = 0
    for x, y in zip(x_m, y_m, strict=True):
        p = route.project(float(x), float(y), hint)
        hint = p.index
    if route.length_m - p.distance_along_m <= EpisodeLimits().goal_tolerance_m:
        return 1.0
    return float(min(1.0, max(0.0, p.distance_along_m / route.length_m)))


def _spec(row: dict[str, str]) -> EpisodeSpec:
    return EpisodeSpec(row["route"], row["weather"], int(row["trial"]), int(row["seed"]), row["policy"],
                       row["correction"])


def _read_config(out_dir: Path) -> dict:
    path = out_dir / "config.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return {}


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None, numpy scalars Python ones, tuples lists (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# -------------------------------------------------------------------------------------------- Markdown


def format_stat(stats: dict, metric: str, reference: str | None = None) -> str:
    """``mean [low, high]`` at the metric's precision, then ``(+12.3%)`` against ``reference`` (when given and
    defined), starred when the two CIs do not overlap; ``–`` when there is no value."""
    if stats["mean"] is None:
        return "–"
    d = METRIC_INFO[metric][1]
    text = f"{stats['mean']:.{d}f} [{stats['low']:.{d}f}, {stats['high']:.{d}f}]"
    if reference is None:
        return text
    change = "n/a" if stats["relative_change"] is None else f"{100 * stats['relative_change']:+.1f}%"
    star = "*" if stats["ci_overlaps_reference"] is False else ""
    return f"{text} ({change}{star})"


def group_title(group: str) -> str:
    """``Overall``, ``Route `name``` or ``Weather `name```."""
    if group == OVERALL:
        return "Overall"
    if group.startswith(WEATHER_GROUP):
        return f"Weather `{group.removeprefix(WEATHER_GROUP)}`"
    return f"Route `{group}`"


def render_markdown(summary: dict) -> str:
    """The report as Markdown, formatted from the summary alone."""
    parts = [_md_header(summary), _md_config(summary["config"])]
    for group, entries in summary["groups"].items():
        title = group_title(group)
        parts.append(f"## {title}\n\n{_md_table(entries, HEADLINE, summary)}\n\n"
                     f"<details><summary>All metrics ({group})</summary>\n\n"
                     f"{_md_all_metrics(entries, summary)}\n\n</details>")
    parts += [_md_significant(summary), _md_rules(summary), heads_markdown(summary.get("heads", {}), group_title,
                                                                       _overall_and_weathers(summary)),
              generalization_markdown(summary.get("generalization", {}), summary["confidence"]),
              _md_plots(summary["plots"])]
    return "\n\n".join(p for p in parts if p) + "\n"


def _overall_and_weathers(summary: dict) -> list[str]:
    return [g for g in summary["groups"] if g == OVERALL or g.startswith(WEATHER_GROUP)]


def _md_header(summary: dict) -> str:
    ref = summary["reference_correction"]
    conf = round(100 * summary["confidence"])
    overall = summary["groups"][OVERALL]
    failed = sum(e["n_failed"] for e in overall.values())
    has_ref = ref in overall
    lines = [
        "# Evaluation report", "",
        f"{summary['n_episodes']} episodes ({failed} failed) on {len(summary['routes'])} route(s): "
        f"{', '.join(f'`{r}`' for r in summary['routes'])}; compared: "
        f"{', '.join(f'`{label}`' for label in summary['labels'])}.", "",
        f"Cells: mean [{conf}% CI] over episodes ({CI_NAMES[summary.get('ci_method', 'percentile')]}, "
        f"{summary['n_resamples']} resamples, "
        f"seed {summary['seed']}). "
        + (f"In brackets after it: the relative change of the mean against `{ref}`, (new - {ref}) / |{ref}|; "
           f"`*` marks {conf}% CIs that do not overlap with `{ref}`'s (a clear difference); n/a where "
           f"`{ref}`'s mean is 0." if has_ref else f"No episodes of `{ref}`: no relative changes."),
    ]
    if EXPERT in overall and overall[EXPERT]["source"] == "references":
        lines += ["", "`expert`: the reference drives (same route, weather and seed); its similarity to itself "
                      "is 0 by definition, and collisions and scores are not recorded for it."]
    return "\n".join(lines)


def _md_config(config: dict) -> str:
    if not config:
        return ""
    rows = [f"| {key} | `{json.dumps(value, separators=(',', ':'))}` |" for key, value in config.items()]
    return "## Campaign\n\n| setting | value |\n|---|---|\n" + "\n".join(rows)


def _md_table(entries: dict, metrics: Iterable[str], summary: dict) -> str:
    """Rows: labels; columns: n, success rate and the given metrics."""
    metrics = list(metrics)
    ref = summary["reference_correction"]
    head = ["correction", "n", METRIC_INFO[SUCCESS][0], *(METRIC_INFO[m][0] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, entry in entries.items():
        compare = ref if ref in entries and label != ref else None
        cells = [f"`{label}`", str(entry["n"]), format_stat(entry["metrics"][SUCCESS], SUCCESS),
                 *(format_stat(entry["metrics"][m], m, compare) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_all_metrics(entries: dict, summary: dict) -> str:
    """Rows: every metric; columns: labels."""
    ref = summary["reference_correction"]
    labels = list(entries)
    lines = ["| metric | " + " | ".join(f"`{label}`" for label in labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for metric in summary["metrics"]:
        cells = [format_stat(entries[label]["metrics"][metric], metric,
                             ref if ref in entries and label != ref else None) for label in labels]
        lines.append(f"| {METRIC_INFO[metric][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_significant(summary: dict) -> str:
    ref = summary["reference_correction"]
    conf = round(100 * summary["confidence"])
    items = []
    for group, entries in summary["groups"].items():
        for label, entry in entries.items():
            if entry["source"] != "episodes":
                continue  # the expert differs from every policy by construction
            for metric, stats in entry["metrics"].items():
                if stats["ci_overlaps_reference"] is False:
                    base = entries[ref]["metrics"][metric]
                    d = METRIC_INFO[metric][1]
                    change = "" if stats["relative_change"] is None else f", {100 * stats['relative_change']:+.1f}%"
                    items.append(f"- {group}, `{label}` vs `{ref}`: {METRIC_INFO[metric][0]} "
                                 f"{base['mean']:.{d}f} -> {stats['mean']:.{d}f}{change}")
    body = "\n".join(items) if items else f"None: every {conf}% CI overlaps with `{ref}`'s."
    return (f"## Clear differences\n\nPolicy metrics whose {conf}% CI does not overlap with `{ref}`'s (non-overlap "
            f"is a conservative test: overlapping CIs can still differ).\n\n{body}")


def _md_rules(summary: dict) -> str:
    lines = []
    for label, entry in summary["groups"][OVERALL].items():
        for rule, share in entry["rule_shares"].items():
            lines.append(f"| `{label}` | `{rule}` | {share:.3f} |")
    if not lines:
        return ""
    return ("## Correction rules\n\nShare of steps on which each rule fired, mean over episodes (all routes).\n\n"
            "| correction | rule | share of steps |\n|---|---|---|\n" + "\n".join(lines))


def _md_plots(plots: dict) -> str:
    lines = ["## Plots"]
    if plots.get("metrics_overall"):
        lines.append(f"![main metrics per correction with CI error bars]({plots['metrics_overall']})")
    for route, path in plots.get("trajectories", {}).items():
        lines.append(f"![trajectories on {route}]({path})")
    for route, path in plots.get("lateral_offset", {}).items():
        lines.append(f"![lateral offset along {route}]({path})")
    if plots.get("generalization"):
        lines.append(f"![completion and lane deviation per weather and map kind]({plots['generalization']})")
    if plots.get("head_errors"):
        lines.append(f"![the two heads' errors against the expert's steer, per tick]({plots['head_errors']})")
    if plots.get("confidence"):
        lines.append(f"![confidence and rules over time, {plots['episode_for_plot']}]({plots['confidence']})")
    return "\n\n".join(lines) if len(lines) > 1 else ""


# ----------------------------------------------------------------------------------------------- plots


def write_plots(out_dir: Path, rows: list[dict[str, str]], summary: dict, episode_for_plot: str | None) -> dict:
    """Every plot as PNG under ``out_dir/plots``; returns their paths relative to ``out_dir``."""
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    colours = label_colours(summary["labels"])
    rows = [with_derived(r) for r in rows]
    out: dict[str, Any] = {"trajectories": {}, "lateral_offset": {}}
    with matplotlib.rc_context(PLOT_STYLE):
        for route in summary["routes"]:
            episodes = _episode_tables(out_dir, [r for r in rows if r["route"] == route])
            references = _reference_tables(out_dir, [r for r in rows if r["route"] == route])
            if not episodes and not references:
                continue
            name = route.replace(":", "-")
            out["trajectories"][route] = _save(plot_trajectories(route, episodes, references, colours),
                                               plot_dir / f"trajectories_{name}.png", out_dir)
            out["lateral_offset"][route] = _save(plot_lateral_offset(route, episodes, references, colours),
                                                 plot_dir / f"lateral_offset_{name}.png", out_dir)
        key = _episode_to_plot(out_dir, rows, episode_for_plot)
        out["episode_for_plot"] = key
        out["confidence"] = None if key is None else _save(
            plot_confidence(key, read_decisions(out_dir / "decisions" / f"{key}.csv"),
                            checkpoint_steer_scale(summary["config"])),
            plot_dir / f"confidence_{key}.png", out_dir)
        out["metrics_overall"] = _save(plot_metrics(summary, colours), plot_dir / "metrics_overall.png", out_dir)
        ref = summary["reference_correction"]
        ticks = pooled_ticks(out_dir, [r for r in rows if r["label"] == ref], episode_key)
        out["head_errors"] = _save(plot_head_errors(ticks, ref), plot_dir / "head_errors.png", out_dir) \
            if len(ticks) > 2 else None
        out["generalization"] = _save(plot_generalization(summary["generalization"], colours),
                                      plot_dir / "generalization.png", out_dir) if summary["generalization"] else None
    return out


def checkpoint_steer_scale(config: dict) -> float | None:
    """The evaluated checkpoint's steering scale (None when the campaign had none or it is gone)."""
    try:
        folder = resolve_checkpoint(config["checkpoint"])
        return float(json.loads((folder / "config.json").read_text())["steer_scale"])
    except (KeyError, TypeError, ValueError, OSError, CarilError):
        return None


def label_colours(labels: list[str]) -> dict[str, Any]:
    """One tab10 colour per label in order; the expert is black."""
    cmap = matplotlib.colormaps["tab10"]
    others = [label for label in labels if label != EXPERT]
    return {**{label: cmap(i % 10) for i, label in enumerate(others)}, EXPERT: "black"}


def plot_trajectories(route: str, episodes: dict[str, list[np.ndarray]], references: list[dict],
                      colours: dict) -> Figure:
    """Top view: the references in black, every episode of each label in its colour; equal aspect."""
    fig = Figure(figsize=(8, 7), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for i, ref in enumerate(references):
        ax.plot(ref["x_m"], ref["y_m"], color="black", lw=2.5, label="expert reference" if i == 0 else None)
    for k, (label, tables) in enumerate(episodes.items()):
        for i, t in enumerate(tables):
            ax.plot(t["x_m"], t["y_m"], color=colours[label], lw=1.3, alpha=0.75, ls=LINE_STYLES[k % len(LINE_STYLES)],
                    label=f"{label} ({len(tables)} episodes)" if i == 0 else None)
    first = references[0] if references else next(iter(episodes.values()))[0]
    ax.plot(first["x_m"][0], first["y_m"][0], "o", color="green", ms=9, label="start", zorder=5)
    if references:
        ax.plot(first["x_m"][-1], first["y_m"][-1], "*", color="red", ms=14, label="reference end", zorder=5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()  # CARLA frame: y points right of x, so a right turn turns clockwise on screen
    ax.set(xlabel="x (m)", ylabel="y (m, CARLA frame: down = right of +x)",
           title=f"Trajectories on {route} over the expert reference")
    ax.legend(loc="best")
    return fig


def plot_lateral_offset(route: str, episodes: dict[str, list[dict]], references: list[dict],
                        colours: dict) -> Figure:
    """Lateral offset against the distance driven: every episode thin, and per label the mean and the
    min-max band over the distance that all its episodes drove (so an episode ending early makes no jump)."""
    fig = Figure(figsize=(10, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0.0, color="grey", lw=1)
    for k, (label, tables) in enumerate(episodes.items()):
        style = LINE_STYLES[k % len(LINE_STYLES)]
        for t in tables:
            ax.plot(_distance_driven(t), t["lateral_offset_m"], color=colours[label], lw=0.7, alpha=0.35, ls=style)
        grid, mean, low, high = offset_band(tables)
        ax.fill_between(grid, low, high, color=colours[label], alpha=0.2, lw=0)
        ax.plot(grid, mean, color=colours[label], lw=2.0, ls=style,
                label=f"{label}: mean of {len(tables)}, band min-max")
    if references:
        grid, mean, _, _ = offset_band(references)
        ax.plot(grid, mean, color="black", lw=1.5, label=f"expert reference (mean of {len(references)})")
    ax.set(xlabel="distance driven (m)", ylabel="lateral offset from lane centre (m, + right)",
           title=f"Lateral offset along {route} (thin: single episodes)")
    ax.legend(loc="best")
    return fig


def offset_band(tables: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lateral offsets of several drives on a common grid of distance driven (every ``OFFSET_STEP_M`` up to
    the shortest drive's distance): (grid m, mean, min, max) over the drives."""
    curves = []
    for t in tables:
        s = _distance_driven(t)
        keep = np.concatenate([[True], np.diff(s) > 0])  # standing still adds no distance
        curves.append((s[keep], t["lateral_offset_m"][keep]))
    grid = np.arange(0.0, min(s[-1] for s, _ in curves) + 1e-9, OFFSET_STEP_M)
    values = np.array([np.interp(grid, s, v) for s, v in curves])
    return grid, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def _distance_driven(table: dict) -> np.ndarray:
    """Cumulative distance along the driven x/y path at each row (m)."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(table["x_m"]), np.diff(table["y_m"])))])


def rule_colours() -> dict[str, Any]:
    """A fixed colour per known rule: the i-th rule of a strategy gets tab10's i-th colour (a plot shows one
    strategy, so its rules are always distinct), the fallbacks grey and black."""
    cmap = matplotlib.colormaps["tab10"]
    colours = {rule: cmap(i) for rules in STRATEGY_RULES.values() for i, rule in enumerate(rules)}
    return {**colours, RULE_FALLBACK: "grey", "fallback_safe_stop": "black"}


def plot_confidence(key: str, d: dict[str, Any], steer_scale: float | None = None) -> Figure:
    """Max probability coloured by the rule that fired, a rule strip, and regression vs applied steering
    (in the network's normalised units: CARLA's steer times ``steer_scale``, when known)."""
    fig = Figure(figsize=(11, 7), dpi=110, layout="constrained")
    ax_p, ax_r, ax_s = fig.subplots(3, 1, sharex=True, height_ratios=[3, 0.6, 3])
    t, rules = d["t_s"], d["rule"]
    fixed = rule_colours()
    order = {rule: i for i, rule in enumerate(fixed)}
    present = sorted(dict.fromkeys(rules), key=lambda r: order.get(r, len(order)))
    colours = {r: fixed.get(r, "magenta") for r in present}
    ax_p.plot(t, d["max_prob"], color="grey", lw=0.8, zorder=1)
    for rule in present:
        m = np.array([r == rule for r in rules])
        ax_p.scatter(t[m], d["max_prob"][m], s=12, color=colours[rule], label=rule, zorder=2)
    ax_p.axhline(0.9, color="black", ls="--", lw=1, label="confident (0.9)")
    ax_p.axhline(0.5, color="black", ls=":", lw=1, label="uncertain (0.5)")
    ax_p.set(ylim=(0, 1.02), ylabel="max class probability", title=f"Confidence and correction: {key}")
    ax_p.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="rule fired")
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 0.05
    for rule in present:
        m = np.array([r == rule for r in rules])
        ax_r.broken_barh([(float(x) - dt / 2, dt) for x in t[m]], (0, 1), color=colours[rule])
    ax_r.set(yticks=[], ylabel="rule")
    ax_r.grid(False)
    ax_s.axhline(0.0, color="grey", lw=1)
    ax_s.plot(t, d["steer_regression"], color="tab:blue", lw=2.2, alpha=0.7, label="regression head")
    ax_s.plot(t, d["steer"], color="black", lw=1.0, label="applied (after correction)")
    ax_s.set(xlabel="simulated time (s)", ylabel="steer, normalised (+ right)")
    units = f"normalised = CARLA steer x {steer_scale:g}" if steer_scale else "the network's normalised steer"
    ax_s.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title=units)
    return fig


def plot_metrics(summary: dict, colours: dict) -> Figure:
    """Bars of the main overall metrics per label with their CI as error bars."""
    entries = summary["groups"][OVERALL]
    labels = list(entries)
    fig = Figure(figsize=(13, 7), dpi=110, layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, metric in zip(axes, BAR_METRICS, strict=True):
        _bar_panel(ax, metric, labels, [entries[label]["metrics"][metric] for label in labels], colours)
    conf = round(100 * summary["confidence"])
    fig.suptitle(f"Overall: mean per correction, error bars = {conf}% bootstrap CI")
    return fig


def _bar_panel(ax: Any, metric: str, labels: list[str], stats: list[dict], colours: dict) -> None:
    """One metric's bars with CI error bars and the mean written above; ``n/a`` where there is no value."""
    def values(key: str) -> np.ndarray:
        return np.array([np.nan if s[key] is None else s[key] for s in stats], dtype=float)

    mean, low, high = values("mean"), values("low"), values("high")
    x = np.arange(len(labels))
    ok = np.isfinite(mean)
    ax.bar(x[ok], mean[ok], color=[colours[label] for label, k in zip(labels, ok, strict=True) if k],
           yerr=np.vstack([mean[ok] - low[ok], high[ok] - mean[ok]]), capsize=5, alpha=0.85)
    top = float(np.nanmax(high)) if ok.any() else 1.0
    span = top if top > 0 else 1.0
    if ok.any() and np.nanmin(low) >= 0:
        ax.set_ylim(0, 1.15 * span)
    decimals = METRIC_INFO[metric][1]
    for xi, m, h in zip(x, mean, high, strict=True):
        text, y = ("n/a", 0.0) if not np.isfinite(m) else (f"{m:.{decimals}f}", max(h, 0.0))
        ax.text(xi, y + 0.02 * span, text, ha="center", va="bottom", fontsize=9,
                color="grey" if text == "n/a" else "black")
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 3 else 0)
    ax.set_title(METRIC_INFO[metric][0])
    ax.grid(axis="x", visible=False)


def _episode_tables(out_dir: Path, rows: list[dict]) -> dict[str, list[dict]]:
    """Trajectory tables per label (episodes without a trajectory file are skipped)."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        path = out_dir / "trajectories" / f"{episode_key(row)}.csv"
        if path.exists():
            table = read_table(path)
            if len(table["t_s"]):
                out.setdefault(row["label"], []).append(table)
    return out


def _reference_tables(out_dir: Path, rows: list[dict]) -> list[dict]:
    keys = dict.fromkeys(_spec(r).reference_key for r in rows)
    paths = [out_dir / "references" / f"{k}.csv" for k in keys]
    return [read_table(p) for p in paths if p.exists()]


def _episode_to_plot(out_dir: Path, rows: list[dict], wanted: str | None) -> str | None:
    """The episode key of the confidence plot: ``wanted`` (checked), else the first caril-correction episode
    with decisions, else the first with decisions, else None."""
    if wanted is not None:
        if not (out_dir / "decisions" / f"{wanted}.csv").exists():
            have = sorted(p.stem for p in (out_dir / "decisions").glob("*.csv"))
            raise ReportError(f"no decisions for episode {wanted!r} in {out_dir / 'decisions'}; pass one of: "
                              f"{', '.join(have) or '(none: only the CARIL agent records decisions)'}.")
        return wanted
    for row in [r for r in rows if r["correction"] == "caril"] + rows:
        key = episode_key(row)
        if (out_dir / "decisions" / f"{key}.csv").exists():
            return key
    return None


def _save(fig: Figure, path: Path, root: Path) -> str:
    fig.savefig(path, format="png", metadata={"Software": None})
    return path.relative_to(root).as_posix()


def _plot_paths(plots: dict) -> list[str]:
    paths = [*plots.get("trajectories", {}).values(), *plots.get("lateral_offset", {}).values(),
             plots.get("confidence"), plots.get("metrics_overall"), plots.get("generalization")]
    return [p for p in paths if p]
