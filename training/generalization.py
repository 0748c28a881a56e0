"""The generalization section of a campaign report: how a policy drives conditions it was trained on against
conditions it never saw, per weather (seen / unseen) and per kind of map.

What counts as *seen* comes from the evaluated checkpoint when it says what it was trained on (its
``meta.trained_on``, the routes and weathers of its dataset, written by ``caril train``); for an older
checkpoint, from the project's split (:mod:`sim.split`: the training weathers and generated maps with seeds
>= 100000), and the report says which. Statistics are :func:`training.stats.summarise`'s: mean and 95%
BCa bootstrap CI over episodes, one seed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from agent.factory import resolve_checkpoint
from sim.errors import CarilError
from sim.routes import NAMED_ROUTES, ROUTE_SUITES
from sim.split import TRAIN_WEATHERS, is_training_map, map_seed
from training.stats import summarise

METRICS = ("route_completion", "lateral_offset_mean_m", "collisions", "success_rate")
SEEN, UNSEEN = "seen", "unseen"


def trained_conditions(config: dict) -> dict[str, list[str]] | None:
    """The routes and weathers the campaign's checkpoint was trained on, or None when it does not say (an older
    checkpoint, the expert, a checkpoint that is gone)."""
    try:
        folder = resolve_checkpoint(config["checkpoint"])
        trained = json.loads((folder / "config.json").read_text())["meta"]["trained_on"]
        return {"routes": list(trained["routes"]), "weathers": list(trained["weathers"])}
    except (KeyError, TypeError, ValueError, OSError, CarilError):
        return None


def weather_seen(weather: str, trained: dict[str, list[str]] | None) -> bool:
    """Whether the policy saw ``weather`` in training (by the checkpoint, else by the split)."""
    return weather in (trained["weathers"] if trained else TRAIN_WEATHERS)


def map_kind(route: str, trained: dict[str, list[str]] | None) -> str:
    """A route's kind for the report: trained on, a held-out generated map, a paper or a named route, ..."""
    if trained is not None and route in trained["routes"]:
        return "training map"
    if route in ROUTE_SUITES["paper"]:
        return "paper route"
    if route in NAMED_ROUTES:
        return "named route"
    if map_seed(route) is not None:
        return "generated, training range" if is_training_map(route) else "generated, held out"
    return "CARLA route"


def summarise_generalization(rows: list[dict], config: dict, seed: int = 0, *, n_resamples: int = 10000,
                             confidence: float = 0.95) -> dict[str, Any]:
    """Per label: the metrics per weather, per seen / unseen weather and per map kind (mean, low, high, n).

    ``rows`` are the report's rows (with ``label`` and ``success_rate``); failed episodes have blank metrics
    and count in ``n`` only. The result is JSON-ready apart from NaN (the report turns it into null).
    """
    trained = trained_conditions(config)
    tagged = [{**r, "seen": SEEN if weather_seen(r["weather"], trained) else UNSEEN,
               "map_kind": map_kind(r["route"], trained)} for r in rows]
    out: dict[str, Any] = {
        "seen_from": "checkpoint" if trained else "split",
        "weathers": {w: weather_seen(w, trained) for w in dict.fromkeys(r["weather"] for r in rows)},
        "map_kinds": {r: map_kind(r, trained) for r in dict.fromkeys(r["route"] for r in rows)},
        "metrics": list(METRICS), "by": {}}
    for axis in ("weather", "seen", "map_kind"):
        table: dict[str, dict[str, Any]] = {}
        for stats in summarise(tagged, ("label", axis), METRICS, seed, n_resamples=n_resamples,
                               confidence=confidence):
            table.setdefault(stats["label"], {})[stats[axis]] = {"n": stats["n"], **{
                m: {"mean": stats[f"{m}_mean"], "low": stats[f"{m}_low"], "high": stats[f"{m}_high"]}
                for m in METRICS}}
        out["by"][axis] = table
    return out


def _cell(stats: dict, decimals: int) -> str:
    if stats["mean"] is None or not np.isfinite(stats["mean"]):
        return "–"
    return f"{stats['mean']:.{decimals}f} [{stats['low']:.{decimals}f}, {stats['high']:.{decimals}f}]"


def markdown(gen: dict[str, Any], confidence: float = 0.95) -> str:
    """The section for ``report.md``: one table per axis, rows label x condition."""
    if not gen:
        return ""
    source = ("the checkpoint's own record of its training data (`meta.trained_on`)" if gen["seen_from"] ==
              "checkpoint" else "the project's split (`sim/split.py`): the checkpoint does not say what it was "
              "trained on")
    seen = ", ".join(f"`{w}` ({SEEN if s else UNSEEN})" for w, s in gen["weathers"].items())
    kinds = ", ".join(f"`{r}` ({k})" for r, k in gen["map_kinds"].items())
    parts = [f"## Generalization\n\nSeen or unseen by {source}. Weathers: {seen}. Maps: {kinds}. Cells: mean "
             f"[{round(100 * confidence)}% BCa bootstrap CI] over episodes."]
    titles = {"weather": "weather", "seen": "weather seen in training", "map_kind": "map kind"}
    for axis, title in titles.items():
        lines = [f"| label | {title} | n | route completion | lane deviation (m) | collisions | success rate |",
                 "|---|---|---|---|---|---|---|"]
        for label, conditions in gen["by"][axis].items():
            for condition, s in conditions.items():
                lines.append(f"| `{label}` | {condition} | {s['n']} | {_cell(s['route_completion'], 3)} | "
                             f"{_cell(s['lateral_offset_mean_m'], 3)} | {_cell(s['collisions'], 2)} | "
                             f"{_cell(s['success_rate'], 3)} |")
        parts.append(f"### By {title}\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def plot_generalization(gen: dict[str, Any], colours: dict[str, Any]) -> Figure:
    """Route completion and lane deviation per weather (unseen weathers hatched) and per map kind, each label's
    bars side by side with their CI as error bars."""
    fig = Figure(figsize=(13, 7.5), dpi=110, layout="constrained")
    axes = fig.subplots(2, 2)
    for row, metric, title in ((0, "route_completion", "route completion"),
                               (1, "lateral_offset_mean_m", "lane deviation mean (m)")):
        _bars(axes[row, 0], gen["by"]["weather"], metric, colours, hatch=lambda w: not gen["weathers"][w])
        axes[row, 0].set_title(f"{title} per weather (hatched: unseen)")
        _bars(axes[row, 1], gen["by"]["map_kind"], metric, colours, hatch=lambda k: False)
        axes[row, 1].set_title(f"{title} per map kind")
    fig.suptitle("Generalization: error bars = BCa bootstrap CI")
    return fig


def _bars(ax: Any, table: dict[str, dict[str, Any]], metric: str, colours: dict[str, Any], hatch: Any) -> None:
    labels = list(table)
    conditions = list(dict.fromkeys(c for per in table.values() for c in per))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        for j, condition in enumerate(conditions):
            s = table[label].get(condition)
            if s is None or s[metric]["mean"] is None or not np.isfinite(s[metric]["mean"]):
                continue
            m, lo, hi = s[metric]["mean"], s[metric]["low"], s[metric]["high"]
            ax.bar(j + (i - (len(labels) - 1) / 2) * width, m, width, color=colours.get(label, "grey"),
                   yerr=[[m - lo], [hi - m]], capsize=3, hatch="//" if hatch(condition) else None,
                   edgecolor="white", label=label if j == 0 else None, alpha=0.9)
    ax.set_xticks(range(len(conditions)), conditions, rotation=15 if len(conditions) > 3 else 0)
    ax.grid(axis="x", visible=False)
    if labels:
        ax.legend(loc="lower right" if metric == "route_completion" else "upper left")
