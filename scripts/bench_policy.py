"""``caril bench policy``: latency of the CARIL agent's ``act()``, split into preprocessing, network and correction.

    caril bench policy --json runs/bench/policy.json

For the default (small CNN) and the ``paper`` (ResNet-50, 160x160) networks with command branches (as
``caril train`` builds them), randomly initialised (latency does not depend on the weights; no pretrained
file is needed), on frames of the paper's 448x448 camera from the embedded simulator. Reports p50 and p99 of
``act()`` and the p50 of each part; the correction must cost under 1% of the network. What the correction costs
depends on the rule that fires (``caril``'s sampling branches draw random numbers), and random weights make
the classifier uncertain, so ``act()`` times one rule; ``correction_p50_ms_by_rule`` therefore also times every
rule the strategy can report, each on inputs that fire it, right after the network's forward pass on a frame
(as in ``act()``, when the interpreter's caches are cold), and ``correction_worst_rule_share_of_network``
is the dearest rule against the network. On a GPU the same
runs there twice: eagerly (fp32, channels-last) and with ``cuda_graphs`` (``*_gpu_graphs``: the frame is
preprocessed on the GPU and the whole path replayed as one CUDA graph in bf16; its ``preprocess_p50_ms`` is
only the staging of the frame, the GPU preprocessing is in ``network_p50_ms``; ``cuda_graphs`` false in the
JSON means the capture failed and the figures are eager).

``--checkpoint DIR`` also times a trained policy driving ``--route`` in closed loop (entry ``checkpoint``): there
the rules fire as they do on the road, and ``rule_shares`` says how often each did.

    caril bench policy --checkpoint policies/caril_small --json runs/bench/policy.json
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.bins import SteeringBins
from agent.caril_agent import CarilAgent, CarilAgentConfig
from agent.checkpoint import load_checkpoint, save_checkpoint
from agent.correction import correct
from agent.network import DualHeadNet, NetworkConfig
from agent.preprocess import PreprocessConfig
from scripts.args import arg
from sim.embedded import EmbeddedSimulator
from sim.errors import CarilError, UsageError
from sim.routes import get_route
from sim.types import Control

DESCRIPTION = "Latency of the CARIL agent's act() (preprocess, network, correction) for the default and paper nets."
NETWORKS = {"default": {}, "paper": {"preset": "paper"}}
RULE_CALLS = 5  # timed correction calls per rule at least (--steps 10 with caril's four rules gives 2-3)


@dataclass
class Args:
    json: str | None = arg(None, help="also write the JSON to this path")
    steps: int = arg(300, help="timed act() calls per network")
    warmup: int = arg(20, help="untimed calls first")
    correction: str = arg("caril", help="correction strategy timed")
    device: str = arg("auto", help="auto (GPU when present), cpu or cuda")
    threads: int = arg(0, help="torch CPU threads (0: torch's default)")
    checkpoint: str | None = arg(None, help="also time this trained policy folder driving --route (closed loop)")
    route: str | None = arg(None, help="route the --checkpoint policy drives (default two-turn)")

    def __post_init__(self) -> None:
        if self.steps < 10:
            raise UsageError("--steps must be at least 10 for a p99")
        if self.warmup < 0:
            raise UsageError(f"--warmup must not be negative, got {self.warmup}")
        if self.route is not None and not self.checkpoint:
            raise UsageError("--route is the route the --checkpoint policy drives: give --checkpoint DIR too")
        if self.checkpoint and self.route is None:
            self.route = "two-turn"


def _frames(n: int) -> list:
    sim = EmbeddedSimulator()
    obs = [sim.reset("two-turn", "ClearNoon", 0)]
    for i in range(n - 1):
        obs.append(sim.step(Control(steer=0.0, throttle=0.5 if i < 100 else 0.2)))
    return obs


def _checkpoint(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    # as caril train builds them: command-branched heads (its --commands default)
    cfg = (NetworkConfig.preset("paper", pretrained=False, command_branches=True) if name == "paper"
           else NetworkConfig(command_branches=True))
    return save_checkpoint(folder / name, DualHeadNet(cfg).eval(), cfg, PreprocessConfig(), SteeringBins())


def rule_inputs(strategy: str, bins: SteeringBins) -> dict[str, tuple[float, np.ndarray]]:
    """One (normalised regression, class probabilities) that fires each rule ``strategy`` can report, found on a
    grid of flat and peaked probability vectors and regressions inside, beside and far from the peak."""
    n, found = bins.n_bins, {}
    for m in (1.0 / n, 0.3, 0.55, 0.7, 0.95):
        for c in (n // 2, 2):
            p = np.full(n, (1.0 - m) / (n - 1))
            p[c] = m
            for r in (0.0, 0.05, 0.6):
                found.setdefault(correct(strategy, r, p, bins=bins).rule, (r, p))
    return found


def _time_rules(agent: CarilAgent, frames: list) -> dict[str, list[float]]:
    """Correction times (ms) for each rule, each call right after the network's forward pass on a frame; at
    least :data:`RULE_CALLS` calls per rule (the frames repeat when there are fewer), each rule's first untimed."""
    inputs = rule_inputs(agent.correction, agent.ckpt.bins)
    rules, times = list(inputs), {rule: [] for rule in inputs}
    for k in range(max(len(frames), (RULE_CALLS + 1) * len(rules))):
        rule, obs = rules[k % len(rules)], frames[k % len(frames)]
        r, p = inputs[rule]
        agent.predict(obs.image, obs.command)
        start = time.perf_counter()
        correct(agent.correction, r, p, agent.rng, bins=agent.ckpt.bins)
        times[rule].append((time.perf_counter() - start) * 1e3)
    return {rule: t[1:] for rule, t in times.items()}


def _rule_figures(times: dict[str, list[float]], network_p50_ms: float) -> dict:
    """The correction's p50 ms by rule and the dearest rule's share of the network."""
    p50 = {rule: round(float(np.percentile(t, 50)), 4) for rule, t in times.items()}
    return {"correction_p50_ms_by_rule": p50,
            "correction_worst_rule_share_of_network": round(max(p50.values()) / network_p50_ms, 5)}


def _time_agent(path: Path, frames: list, args: Args, device: str, cuda_graphs: bool = False) -> dict:
    """The random-weight network on the recorded frames (open loop), each rule also timed on its own."""
    # random weights may put the regression beyond the agent's sanity bound; time the full path regardless
    agent = CarilAgent(path, CarilAgentConfig(correction=args.correction, device=device, max_abs_regression=1e9,
                                              cuda_graphs=cuda_graphs))
    replay = iter(frames[1:])
    row = _time_acts(agent, frames[0], lambda _control: next(replay), args)
    del row["by_rule"]  # random weights fire one rule: time each on inputs that fire it
    return {**row, **_rule_figures(_time_rules(agent, frames[args.warmup:]), row["network_p50_ms"])}


def _time_drive(path: Path, args: Args, device: str) -> dict:
    """A trained checkpoint driving ``args.route`` in closed loop: the rules fire as they do on the road."""
    agent = CarilAgent(path, CarilAgentConfig(correction=args.correction, device=device))
    sim = EmbeddedSimulator()
    row = _time_acts(agent, sim.reset(args.route, "ClearNoon", 0), sim.step, args)
    by_rule = row.pop("by_rule")
    return {"path": str(path), "route": args.route, **row, **_rule_figures(by_rule, row["network_p50_ms"]),
            "rule_shares": _shares(by_rule, row["fallbacks"], args.steps)}


def _shares(by_rule: dict[str, list], fallbacks: int, steps: int) -> dict[str, float]:
    """How often each rule fired over the timed steps, the safe stop (``fallback_safe_stop``) included."""
    shares = {rule: round(len(t) / steps, 4) for rule, t in by_rule.items()}
    return {**shares, "fallback_safe_stop": round(fallbacks / steps, 4)} if fallbacks else shares


def _time_acts(agent: CarilAgent, obs: Any, step: Callable[[Control], Any], args: Args) -> dict:
    """``args.warmup`` untimed then ``args.steps`` timed ``act()`` calls, each next observation ``step(control)``:
    p50/p99 of ``act()``, the p50 of its parts, and (key ``by_rule``, for the caller) correction times by rule.
    A call that ended in the safe stop (its record has a ``fallback`` reason and no network or correction time)
    is counted in ``fallbacks``, not timed; ``calls`` counts the timed ones."""
    agent.reset()
    act, parts, by_rule, fallbacks = [], [], {}, []
    for k in range(args.warmup + args.steps):  # act() ends with a .cpu() copy: GPU work is done when it returns
        start = time.perf_counter()
        control, rec = agent.act(obs)
        if k >= args.warmup and rec["fallback"]:
            fallbacks.append(rec["fallback"])
        elif k >= args.warmup:
            act.append((time.perf_counter() - start) * 1e3)
            parts.append((rec["preprocess_ms"], rec["network_ms"], rec["correction_ms"]))
            by_rule.setdefault(rec["rule"], []).append(rec["correction_ms"])
        if k + 1 < args.warmup + args.steps:
            obs = step(control)
    if not act:
        raise CarilError(f"every one of the {args.steps} timed act() calls ended in the safe stop (first reason: "
                         f"{fallbacks[0]}); nothing to time")
    fallback_info = {"fallbacks": len(fallbacks), "first_fallback": fallbacks[0] if fallbacks else None}
    p50 = np.percentile(np.array(parts), 50, axis=0)
    return {"device": str(agent.device), "cuda_graphs": agent.uses_cuda_graphs,
            "act_p50_ms": round(float(np.percentile(act, 50)), 4),
            "act_p99_ms": round(float(np.percentile(act, 99)), 4), "preprocess_p50_ms": round(float(p50[0]), 4),
            "network_p50_ms": round(float(p50[1]), 4), "correction_p50_ms": round(float(p50[2]), 4),
            "correction_share_of_network": round(float(p50[2] / p50[1]), 5), "calls": len(act), **fallback_info,
            "by_rule": by_rule}


def bench(args: Args) -> dict:
    if args.checkpoint:  # a bad folder or route fails now, not after the other networks
        get_route(args.route)
        load_checkpoint(args.checkpoint)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = _frames(args.warmup + args.steps)
    out = {"correction": args.correction, "camera": "448x448 embedded", "torch_threads": torch.get_num_threads(),
           "weights": "random init (the network's latency does not depend on them; the correction's does, by rule: "
                      "see correction_p50_ms_by_rule)"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in NETWORKS:
            path = _checkpoint(name, Path(tmp))
            out[name] = _time_agent(path, frames, args, "cpu" if args.device == "auto" else args.device)
            if args.device == "auto" and torch.cuda.is_available():
                out[f"{name}_gpu"] = _time_agent(path, frames, args, "cuda")
                out[f"{name}_gpu_graphs"] = _time_agent(path, frames, args, "cuda", cuda_graphs=True)
    if args.checkpoint:
        out["checkpoint"] = _time_drive(Path(args.checkpoint), args, "cpu" if args.device == "auto" else args.device)
    return out
