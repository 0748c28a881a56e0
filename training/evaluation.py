"""Closed-loop evaluation campaigns: every (route, weather, correction, trial) is one episode.

For each (route, weather, seed) the expert drives first, camera off, and its trajectory is the reference,
saved in ``references/``. Each episode's trajectory goes to ``trajectories/<key>.csv`` and, for policies
that report decisions (the CARIL agent), every tick's decision to ``decisions/<key>.csv``. Results are
appended to ``results.csv`` as each episode finishes, so an interrupted campaign keeps what it did and
resumes (``resume=True``); when the campaign ends the file is rewritten in plan order, so a resumed or
parallel (``workers > 1``) campaign gives the same file as an uninterrupted sequential one.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.expert import ExpertPolicy
from agent.factory import make_policy
from agent.policy import Policy
from sim.backends import make_simulator
from sim.episode import EpisodeLimits
from sim.errors import SimulatorConnectionLost
from sim.leaderboard import driving_score, episode_infractions, infraction_penalty
from sim.metrics import TRAJECTORY_COLUMNS
from sim.routes import Route, get_route
from sim.similarity import trajectory_similarity
from sim.simulator import Simulator
from sim.weather import get_weather
from training.rollout import run_episode

log = logging.getLogger(__name__)

SPEC_COLUMNS = ("route", "weather", "seed", "trial", "policy", "correction")
METRIC_COLUMNS = ("route_completion", "collisions", "lane_invasions", "lateral_offset_mean_m",
                  "lateral_offset_rms_m", "lateral_offset_max_m", "frechet_m", "dtw_m", "area_m2", "curve_length",
                  "infraction_penalty", "driving_score", "corrected_share", "mean_max_prob", "rule_shares",
                  "termination", "sim_time_s")
RESULT_COLUMNS = SPEC_COLUMNS + METRIC_COLUMNS
DECISION_COLUMNS = ("t_s", "steer_regression", "steer", "max_prob", "entropy", "rule", "steer_classification",
                    "steer_expert")


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode of a campaign. ``seed`` fixes everything random in it; ``correction`` is empty for
    policies without one."""

    route: str
    weather: str
    trial: int
    seed: int
    policy: str
    correction: str = ""

    @property
    def key(self) -> str:
        """A file-name-safe unique name of this episode."""
        who = f"{self.policy}-{self.correction}" if self.correction else self.policy
        return f"{self.route.replace(':', '-')}__{self.weather}__{who}__t{self.trial}"

    @property
    def reference_key(self) -> str:
        return f"{self.route.replace(':', '-')}__{self.weather}__s{self.seed}"

    def identity(self) -> tuple[str, ...]:
        """What identifies the episode in results.csv (as strings, the way the file stores them)."""
        return (self.route, self.weather, str(self.trial), self.policy, self.correction)


def plan_episodes(routes: Iterable[str], weathers: Iterable[str], trials: int, seed: int, policy: str,
                  corrections: Iterable[str] = ("",)) -> list[EpisodeSpec]:
    """All combinations in a fixed order; trial ``k`` uses seed ``seed + k`` for every route, weather and
    correction, so corrections are compared on the same episodes."""
    return [EpisodeSpec(r, w, k, seed + k, policy, c) for r in routes for w in weathers for c in corrections
            for k in range(trials)]


def write_table(path: Path, header: Iterable[str], rows: np.ndarray | list, fmt: str = "%.6f") -> None:
    """Write a CSV table atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    if isinstance(rows, np.ndarray):
        np.savetxt(tmp, rows, delimiter=",", header=",".join(header), comments="", fmt=fmt)
    else:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
    tmp.replace(path)


def write_trajectory(path: Path, table: np.ndarray) -> None:
    """Write a trajectory table as CSV with :data:`TRAJECTORY_COLUMNS` (6 decimals)."""
    write_table(path, TRAJECTORY_COLUMNS, table)


def read_results(path: Path) -> list[dict[str, str]]:
    """Rows of a results file (empty if it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass
class DecisionLog:
    """Rollout consumer keeping the agent's per-tick decisions (for rule shares and confidence plots).

    Given the episode's ``route``, each row also holds the steer the expert would command in the very state the
    agent decided in (privileged, as in the recorded data; a DAgger-style label), normalised like the agent's
    steering, for :mod:`training.head_errors`.
    """

    route: Route | None = None
    rows: list[tuple] = field(default_factory=list)

    def on_reset(self, obs: Any, info: dict[str, Any]) -> None:
        self.rows = []
        self._obs, self._expert = obs, None
        if self.route is not None:
            self._expert = ExpertPolicy()
            self._expert.reset(self.route)

    def on_step(self, obs: Any, control: Any, record: dict[str, Any]) -> None:
        if "rule" in record:
            self.rows.append((round(obs.sim_time_s, 6), record.get("steer_regression"), record.get("steer"),
                              record.get("max_prob"), record.get("entropy"), record["rule"],
                              record.get("steer_classification", float("nan")), self._expert_steer(record)))
        self._obs = obs  # the state the next decision is made in

    def _expert_steer(self, record: dict[str, Any]) -> float:
        """The expert's steer in the state of this decision, times the agent's steering scale, in [-1, 1]."""
        if self._expert is None or "steer_scale" not in record:
            return float("nan")
        steer = self._expert.act(self._obs)[0].steer * record["steer_scale"]
        return min(1.0, max(-1.0, steer))

    def on_end(self, summary: dict[str, Any]) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        """Share of steps each rule fired, share where the output differs from the regression, mean max
        probability (NaN when the policy reports no decisions)."""
        if not self.rows:
            return {"corrected_share": float("nan"), "mean_max_prob": float("nan"), "rule_shares": ""}
        rules = [r[5] for r in self.rows]
        shares = {rule: rules.count(rule) / len(rules) for rule in sorted(set(rules))}
        changed = [abs(float(r[2]) - float(r[1])) > 1e-9 if np.isfinite(r[1]) else True for r in self.rows]
        probs = np.array([r[3] for r in self.rows], dtype=np.float64)
        return {"corrected_share": float(np.mean(changed)), "mean_max_prob": float(np.nanmean(probs)),
                "rule_shares": ";".join(f"{k}={v:.4f}" for k, v in shares.items())}


@dataclass(frozen=True)
class SimFactory:
    """A picklable simulator factory (for worker processes)."""

    backend: str = "embedded"
    settings: dict = field(default_factory=dict)

    def __call__(self) -> Simulator:
        return make_simulator(self.backend, **self.settings)


class PolicyFactory:
    """Builds the policy of a spec; a learned agent is loaded once per process and its correction switched."""

    def __init__(self, checkpoint: str | None = None, **agent_settings: Any) -> None:
        self.checkpoint, self.agent_settings = checkpoint, agent_settings
        self._agent: Policy | None = None

    def __call__(self, spec: EpisodeSpec) -> Policy:
        if spec.policy != "caril":
            return make_policy(spec.policy)
        if self._agent is None:
            self._agent = make_policy("caril", checkpoint=self.checkpoint, correction=spec.correction or "caril",
                                      **self.agent_settings)
        self._agent.correction = spec.correction or "caril"
        self._agent.seed = spec.seed  # the caril rule's draws differ by trial and repeat for a seed
        return self._agent

    def __getstate__(self) -> dict:
        return {"checkpoint": self.checkpoint, "agent_settings": self.agent_settings, "_agent": None}


class Campaign:
    """Runs episode specs with a simulator factory and a policy factory, writing results as it goes."""

    def __init__(self, out_dir: Path, make_sim: Callable[[], Simulator],
                 make_policy: Callable[[EpisodeSpec], Policy], limits: EpisodeLimits | None = None,
                 make_reference_sim: Callable[[], Simulator] | None = None) -> None:
        self.out_dir, self.make_sim, self.make_policy = Path(out_dir), make_sim, make_policy
        self.make_reference_sim = make_reference_sim or make_sim
        self.limits = limits or EpisodeLimits()
        self.results_path = self.out_dir / "results.csv"

    def pending(self, specs: list[EpisodeSpec], resume: bool) -> list[EpisodeSpec]:
        """The specs still to run: all of them, or with ``resume`` those without a finished row in results.csv
        (an episode that failed is run again)."""
        if not resume:
            return list(specs)
        done = {_identity(r) for r in self.kept_rows()}
        return [s for s in specs if s.identity() not in done]

    def clear(self) -> None:
        """Remove what an earlier campaign in ``out_dir`` wrote (results, references, trajectories, decisions,
        report, plots): a fresh campaign must not reuse a reference driven with other settings."""
        for name in ("references", "trajectories", "decisions", "plots"):
            shutil.rmtree(self.out_dir / name, ignore_errors=True)
        for name in ("results.csv", "summary.json", "report.md"):
            (self.out_dir / name).unlink(missing_ok=True)

    def kept_rows(self) -> list[dict[str, str]]:
        """The rows a resume keeps: whole rows (not the last one a kill cut short) of finished episodes."""
        if not self.results_path.exists():
            return []
        whole = self.results_path.read_bytes().endswith(b"\n")
        rows = read_results(self.results_path)
        rows = rows if whole else rows[:-1]
        return [r for r in rows if None not in r.values() and len(r) == len(RESULT_COLUMNS)
                and not r["termination"].startswith("failed")]

    def run(self, specs: list[EpisodeSpec], resume: bool = False, workers: int = 1,
            on_episode: Callable[[EpisodeSpec, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the pending specs; ``on_episode`` is called after each (for progress bars)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        todo = self.pending(specs, resume)
        kept = self.kept_rows() if resume else []
        if not resume:
            self.clear()
        write_table(self.results_path, RESULT_COLUMNS, [[r[c] for c in RESULT_COLUMNS] for r in kept])
        references = self.references(todo)
        rows = []
        for spec, row in self._execute(todo, references, workers):
            self._append(row)
            rows.append(row)
            if on_episode:
                on_episode(spec, row)
        self._sort_results(specs)
        return rows

    def references(self, specs: list[EpisodeSpec]) -> dict[str, np.ndarray]:
        """The expert's (x, y) trajectory per (route, weather, seed), driven once and saved in references/."""
        out: dict[str, np.ndarray] = {}
        wanted = {s.reference_key: s for s in specs}
        if not wanted:
            return out
        with self.make_reference_sim() as sim:
            for key, spec in wanted.items():
                path = self.out_dir / "references" / f"{key}.csv"
                if not path.exists():
                    route = getattr(sim, "resolve_route", get_route)(spec.route)
                    _, traj = run_episode(sim, ExpertPolicy(), route, get_weather(spec.weather), spec.seed,
                                          self.limits)
                    write_trajectory(path, traj.table())
                # always the file's (6-decimal) values, so a resumed campaign compares with the same reference
                out[key] = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1:3]
        return out

    def _execute(self, todo: list[EpisodeSpec], references: dict[str, np.ndarray], workers: int):
        if workers <= 1 or len(todo) <= 1:
            yield from self._run_serial(todo, references)
            return
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(self,)) as pool:
            tasks = [(spec, references[spec.reference_key]) for spec in todo]
            yield from pool.imap_unordered(_work, tasks)

    def _run_serial(self, todo: list[EpisodeSpec], references: dict[str, np.ndarray]):
        sim = self.make_sim()
        try:
            for spec in todo:
                try:
                    row = self.run_one(sim, spec, references[spec.reference_key])
                except SimulatorConnectionLost as e:
                    row = self._failure(spec, e)
                    sim.close()
                    sim = self._reconnect()
                yield spec, row
        finally:
            sim.close()

    def run_one(self, sim: Simulator, spec: EpisodeSpec, reference_xy: np.ndarray) -> dict[str, Any]:
        """One episode: drive, write its trajectory (and decisions), compute every metric."""
        policy = self.make_policy(spec)
        route = getattr(sim, "resolve_route", get_route)(spec.route)
        decisions = DecisionLog(route)
        summary, traj = run_episode(sim, policy, route, get_weather(spec.weather), spec.seed, self.limits,
                                    consumers=(decisions,))
        table = traj.table()
        write_trajectory(self.out_dir / "trajectories" / f"{spec.key}.csv", table)
        if decisions.rows:
            write_table(self.out_dir / "decisions" / f"{spec.key}.csv", DECISION_COLUMNS, decisions.rows)
        infractions = episode_infractions(summary["collisions"], summary["termination"])
        return {**asdict(spec), **summary, **trajectory_similarity(table[:, 1:3], reference_xy),
                "infraction_penalty": infraction_penalty(infractions),
                "driving_score": driving_score(100.0 * summary["route_completion"], infractions),
                **decisions.summary()}

    def _failure(self, spec: EpisodeSpec, error: SimulatorConnectionLost) -> dict[str, Any]:
        """A lost simulator fails the episode with its reason; the campaign goes on after reconnecting."""
        log.warning("episode %s failed: %s; reconnecting", spec.key, error)
        row = {c: float("nan") for c in METRIC_COLUMNS}
        row.update(asdict(spec), rule_shares="", termination=f"failed:{error.reason}")  # metrics NaN: no episode
        return row

    def _reconnect(self) -> Simulator:
        from sim.carla_backend import reconnect_with_backoff  # generic retry; imports no carla

        return reconnect_with_backoff(self.make_sim, attempts=5, base_delay_s=5.0)

    def _append(self, row: dict[str, Any]) -> None:
        with self.results_path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row[c]) for c in RESULT_COLUMNS])

    def _sort_results(self, specs: list[EpisodeSpec]) -> None:
        """Rewrite results.csv in plan order (rows of specs not in the plan keep their place at the end)."""
        order = {s.identity(): i for i, s in enumerate(specs)}
        rows = read_results(self.results_path)
        ident = [_identity(r) for r in rows]
        ranked = sorted(range(len(rows)), key=lambda i: (order.get(ident[i], len(order)), i))
        write_table(self.results_path, RESULT_COLUMNS, [[rows[i][c] for c in RESULT_COLUMNS] for i in ranked])


_WORKER: dict[str, Any] = {}


def _init_worker(campaign: Campaign) -> None:
    """Worker process set-up: one simulator per process, single-threaded torch (the processes share cores)."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER["campaign"], _WORKER["sim"] = campaign, campaign.make_sim()


def _work(task: tuple[EpisodeSpec, np.ndarray]) -> tuple[EpisodeSpec, dict[str, Any]]:
    spec, reference = task
    campaign: Campaign = _WORKER["campaign"]
    try:
        return spec, campaign.run_one(_WORKER["sim"], spec, reference)
    except SimulatorConnectionLost as e:
        _WORKER["sim"].close()
        _WORKER["sim"] = campaign._reconnect()
        return spec, campaign._failure(spec, e)


def _identity(row: dict[str, str]) -> tuple[str, ...]:
    """A results row's :meth:`EpisodeSpec.identity`."""
    return tuple(row[c] for c in ("route", "weather", "trial", "policy", "correction"))


def _fmt(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)
