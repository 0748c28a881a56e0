"""The two heads against the expert, on the states the agent itself visited: can a correction help at all?

Every evaluation episode of the CARIL agent logs per tick (``decisions/<key>.csv``) the regression head's steer,
the classification head's expected steer (probability-weighted bin centre), the corrected steer the agent sent,
and the steer the expert would command in that very state (privileged, the controller that recorded the
training data: a DAgger-style label), all in the agent's normalised steering units.

A correction only chooses between, or mixes, what the two heads say. So on the states it visited:

- if the heads' errors against the expert are strongly correlated (the same mistake twice), no rule can remove
  much of it;
- ``best_pick_mae`` is the error of an oracle that takes, at every tick, whichever head is closer to the
  expert: no rule that picks one head's value per tick can do better;
- ``best_mix_mae`` is the error of an oracle that takes, at every tick, the best point between the two values
  (0 where the heads err on opposite sides): no rule whose output lies between them can do better.

Their ratio to ``regression_mae`` is the most any such correction could cut the steering error on these
states. ``caril``'s random draws and ``clamp``'s bin edges can leave that interval, but they only move towards
the classification head's bins, so the bound is the right order of magnitude for them too.

Statistics pool the ticks of a group's episodes per label (mean over ticks; no CI: ticks of one episode are
not independent). Decisions files written before these columns existed give no entry.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

HEAD_COLUMNS = ("steer_regression", "steer_classification", "steer", "steer_expert")


def read_head_columns(path: Path) -> np.ndarray:
    """(ticks, 4) array of :data:`HEAD_COLUMNS` from a decisions CSV, rows with any NaN (a fallback tick, no
    expert) dropped; (0, 4) when the file predates these columns. The regression head's raw value is clipped
    to [-1, 1], the range of the labels, of the expert column and of every correction's output, so that each
    head is scored on what it could command."""
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    if not records or any(c not in records[0] for c in HEAD_COLUMNS):
        return np.empty((0, len(HEAD_COLUMNS)))
    data = np.array([[_float(r[c]) for c in HEAD_COLUMNS] for r in records], dtype=np.float64)
    data = data[np.isfinite(data).all(axis=1)]
    data[:, 0] = np.clip(data[:, 0], -1.0, 1.0)
    return data


def head_stats(data: np.ndarray) -> dict[str, Any]:
    """The statistics of the module docstring for a (ticks, 4) array of :data:`HEAD_COLUMNS`."""
    if len(data) == 0:
        return {"ticks": 0}
    err = data[:, [0, 1, 2]] - data[:, [3]]  # regression, classification, corrected - expert
    e_reg, e_cls, e_out = err.T
    reg_mae = float(np.mean(np.abs(e_reg)))
    pick = np.minimum(np.abs(e_reg), np.abs(e_cls))
    mix = np.where(np.sign(e_reg) * np.sign(e_cls) < 0, 0.0, pick)
    corr = float(np.corrcoef(e_reg, e_cls)[0, 1]) if len(data) > 2 and np.std(e_reg) > 0 and np.std(e_cls) > 0 \
        else math.nan
    return {"ticks": len(data), "regression_mae": reg_mae, "classification_mae": float(np.mean(np.abs(e_cls))),
            "corrected_mae": float(np.mean(np.abs(e_out))), "regression_bias": float(np.mean(e_reg)),
            "error_correlation": corr, "best_pick_mae": float(np.mean(pick)), "best_mix_mae": float(np.mean(mix)),
            "best_pick_cut": 1.0 - float(np.mean(pick)) / reg_mae if reg_mae > 0 else math.nan,
            "best_mix_cut": 1.0 - float(np.mean(mix)) / reg_mae if reg_mae > 0 else math.nan}


def pooled_ticks(out_dir: Path, rows: list[dict[str, str]], episode_key: Callable[[dict[str, str]], str],
                 cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The head columns of every episode in ``rows`` (from ``out_dir/decisions``), stacked."""
    cache = {} if cache is None else cache
    parts = [np.empty((0, len(HEAD_COLUMNS)))]
    for row in rows:
        key = episode_key(row)
        if key not in cache:
            path = out_dir / "decisions" / f"{key}.csv"
            cache[key] = read_head_columns(path) if path.exists() else parts[0]
        parts.append(cache[key])
    return np.concatenate(parts)


def summarise_heads(out_dir: Path, groups: dict[str, list[dict[str, str]]],
                    episode_key: Callable[[dict[str, str]], str]) -> dict[str, dict[str, dict]]:
    """``{group: {label: head_stats}}`` over each group's episode rows (with ``label``); labels whose
    episodes logged no head columns are left out."""
    cache: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, dict]] = {}
    for group, rows in groups.items():
        labels = dict.fromkeys(r["label"] for r in rows)
        stats = {label: head_stats(pooled_ticks(out_dir, [r for r in rows if r["label"] == label], episode_key,
                                                cache)) for label in labels}
        out[group] = {label: s for label, s in stats.items() if s["ticks"]}
    return out


def markdown(heads: dict[str, dict[str, dict]], title: Callable[[str], str], shown: Iterable[str]) -> str:
    """The report section: one table per group in ``shown`` that has entries (all groups are in summary.json)."""
    shown = set(shown)
    if not any(heads.values()):
        return ""
    head = ("| correction | ticks | regression MAE | classification MAE | corrected MAE | error correlation "
            "| best pick (cut) | best mix (cut) |\n|---|---|---|---|---|---|---|---|")
    parts = ["## The heads against the expert\n\nOn the states each correction's own drives visited: steering "
             "error (normalised units) of each head and of the corrected command against the expert's steer in "
             "the same state. `best pick` takes the better head at every tick, `best mix` the best value between "
             "them: no correction that picks or mixes the two heads can beat these (the cut is against the "
             "regression head's MAE). Errors correlated near 1 are the same mistake twice, which no correction "
             "can fix."]
    for group, entries in heads.items():
        if not entries or group not in shown:
            continue
        lines = [f"| `{label}` | {s['ticks']} | {s['regression_mae']:.4f} | {s['classification_mae']:.4f} | "
                 f"{s['corrected_mae']:.4f} | {s['error_correlation']:.3f} | {s['best_pick_mae']:.4f} "
                 f"({100 * s['best_pick_cut']:.0f}%) | {s['best_mix_mae']:.4f} ({100 * s['best_mix_cut']:.0f}%) |"
                 for label, s in entries.items()]
        parts.append(f"### {title(group)}\n\n{head}\n" + "\n".join(lines))
    return "\n\n".join(parts)


def plot_head_errors(data: np.ndarray, label: str) -> Figure:
    """2-D histogram of the classification head's error against the regression head's (both against the
    expert): points on the diagonal are ticks where both heads made the same mistake."""
    e_reg, e_cls = data[:, 0] - data[:, 3], data[:, 1] - data[:, 3]
    lim = float(np.quantile(np.abs(np.concatenate([e_reg, e_cls])), 0.995)) or 1.0
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.subplots()
    *_, image = ax.hist2d(e_reg, e_cls, bins=60, range=[[-lim, lim], [-lim, lim]], cmin=1,
                              cmap="viridis", norm="log")
    fig.colorbar(image, ax=ax, label="ticks")
    ax.plot([-lim, lim], [-lim, lim], color="0.4", lw=1, ls="--", label="same error")
    stats = head_stats(data)
    ax.set(xlabel="regression head - expert (normalised steer)", ylabel="classification head - expert",
           title=f"{label} drives: error correlation {stats['error_correlation']:.3f}\n"
                 f"best pick would cut the steering error by {100 * stats['best_pick_cut']:.0f}%")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    return fig


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
