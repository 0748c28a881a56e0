"""The closed-loop CARIL agent: camera frame -> dual-head network -> confidence-aware correction -> control.

::

    obs.image --preprocess (from the checkpoint)--> DualHeadNet --> steer_regression, logits
                                                                  |            |
                                              softmax(logits / calibrated T) = class_probs
                                                                  |
                      agent.correction.correct(strategy, steer_regression, class_probs, rng)
                                                                  |
                         steer = record.steer / steer_scale (the paper trains on steer x 4)
    speed: PI controller to a target that eases off with the steering (the camera gives no route preview)

``act`` never raises inside the control loop: a frame of the wrong shape, or a NaN, infinite or wildly
out-of-range network output, gives a safe braking control and the reason in the record.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.checkpoint import LoadedCheckpoint, load_checkpoint
from agent.control import SpeedController
from agent.correction import STRATEGIES, correct, entropy, temperature_scale
from agent.draws import Draws
from agent.graphed import GraphedForward
from agent.policy import Policy
from agent.preprocess import check_frame, preprocess_frame
from sim.errors import UsageError, unknown_name
from sim.routes import Route
from sim.types import Control, Observation, RoadOption

SAFE_STOP = Control(steer=0.0, throttle=0.0, brake=1.0)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CarilAgentConfig:
    """Driving settings. Speeds m/s; ``max_abs_regression`` bounds a sane normalised network output."""

    correction: str = "caril"
    cruise_speed_mps: float = 8.0
    turn_speed_mps: float = 4.5
    turn_steer: float = 0.2  # |CARLA steer| at which the target speed has eased down to turn_speed_mps
    max_abs_regression: float = 2.0
    seed: int = 0
    device: str = "auto"
    cuda_graphs: bool = False  # on a GPU: preprocessing + network as one CUDA graph (agent.graphed)

    def __post_init__(self) -> None:
        if self.correction not in STRATEGIES:
            raise unknown_name("correction", self.correction, list(STRATEGIES))
        if not 0 < self.turn_speed_mps <= self.cruise_speed_mps:
            raise UsageError("turn_speed_mps must be positive and at most cruise_speed_mps")

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class CarilAgent(Policy):
    """A camera-only policy from a checkpoint; ``correction`` can be changed between steps (live display)."""

    name = "caril"

    def __init__(self, checkpoint: LoadedCheckpoint | str | Path, config: CarilAgentConfig | None = None) -> None:
        self.cfg = config or CarilAgentConfig()
        self.device = pick_device(self.cfg.device)
        self.ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint,
                                                                                             device=self.device)
        self.model = self.ckpt.model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.correction, self.seed = self.cfg.correction, self.cfg.seed
        self.speed = SpeedController()
        self.rng = Draws(np.random.default_rng(self.seed))
        self._centres = self.ckpt.bins.centres  # for the classification head's expected steer in the record
        self._graphed: dict[tuple, GraphedForward] = {}  # per frame shape
        self._use_graphs = self.cfg.cuda_graphs and self.device.type == "cuda"

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether ``act`` replays CUDA graphs: asked for, on a GPU, and no capture has failed so far."""
        return self._use_graphs

    def reset(self, route: Route | None = None) -> None:
        """New episode: the correction's random generator restarts from ``seed``, so episodes reproduce."""
        self.speed.reset()
        self.rng = Draws(np.random.default_rng(self.seed))

    @torch.inference_mode()
    def predict(self, image: np.ndarray,
                command: int = RoadOption.LANEFOLLOW) -> tuple[float, np.ndarray, float, float]:
        """Network outputs for one frame and route command (a RoadOption value; only a command-branched network
        reads it): (normalised regression, calibrated class probabilities, preprocess ms, network ms)."""
        graphed = self._graphed_for(image) if self._use_graphs else None
        if graphed is not None:  # preprocess_ms: staging the frame; network_ms: GPU preprocessing + network
            t0 = time.perf_counter()
            graphed.stage(image, command)
            t1 = time.perf_counter()
            steer, logits = graphed.run()
            t2 = time.perf_counter()
            return steer, temperature_scale(logits, self.ckpt.temperature), (t1 - t0) * 1e3, (t2 - t1) * 1e3
        t0 = time.perf_counter()
        x = torch.from_numpy(preprocess_frame(image, self.ckpt.preprocess))[None].to(self.device)  # (1, 3, h, w)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        out = self.model(x, command=torch.tensor([int(command)], device=self.device))
        steer = float(out["steer"][0])
        logits = out["logits"][0].float().cpu().numpy()  # (n_bins,)
        t2 = time.perf_counter()
        return steer, temperature_scale(logits, self.ckpt.temperature), (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def _graphed_for(self, image: np.ndarray) -> GraphedForward | None:
        """The captured graph for this frame's shape (captured on first use); None after a failed capture,
        which turns graphs off for this agent (the eager path goes on)."""
        check_frame(image)
        graphed = self._graphed.get(image.shape)
        if graphed is None:
            try:
                graphed = GraphedForward(self.model, self.ckpt.preprocess, image.shape, self.device)
            except Exception as e:  # any capture failure: keep driving eagerly
                log.warning("CUDA graph capture failed (%s: %s); driving without graphs", type(e).__name__, e)
                self._use_graphs = False
                return None
            self._graphed[image.shape] = graphed
        return graphed

    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        try:
            steer_reg, probs, pre_ms, net_ms = self.predict(observation.image, observation.command)
        except Exception as e:  # a bad frame or a failing network must not crash the 20 Hz loop
            return SAFE_STOP, self._fallback(f"{type(e).__name__}: {e}")
        if not math.isfinite(steer_reg) or abs(steer_reg) > self.cfg.max_abs_regression:
            return SAFE_STOP, self._fallback(f"regression output {steer_reg} is not finite or beyond "
                                             f"+-{self.cfg.max_abs_regression}", steer_reg, probs)
        t0 = time.perf_counter()
        rec = correct(self.correction, steer_reg, probs, self.rng, bins=self.ckpt.bins)
        corr_ms = (time.perf_counter() - t0) * 1e3
        if rec.rule == "fallback_invalid":
            return SAFE_STOP, self._fallback(rec.reason, steer_reg, probs)
        steer = float(np.clip(rec.steer / self.ckpt.steer_scale, -1.0, 1.0))
        if not _finite_number(observation.speed_mps):
            return SAFE_STOP, self._fallback(f"speed reading {observation.speed_mps!r} m/s is not a finite number",
                                             steer_reg, probs)
        throttle, brake = self.speed(self.target_speed(steer), observation.speed_mps)
        record = {**rec.to_dict(), "correction": self.correction, "steer_command": steer,
                  "steer_scale": self.ckpt.steer_scale, "steer_classification": self._expected_steer(probs),
                  "preprocess_ms": pre_ms, "network_ms": net_ms, "correction_ms": corr_ms, "fallback": ""}
        return Control(steer, throttle, brake), record

    def target_speed(self, steer: float) -> float:
        """Cruise on straights, easing linearly to the turn speed as |steer| grows to ``turn_steer``."""
        c = self.cfg
        w = min(1.0, abs(steer) / c.turn_steer)
        return c.cruise_speed_mps + w * (c.turn_speed_mps - c.cruise_speed_mps)

    def _expected_steer(self, probs: np.ndarray) -> float:
        """The classification head's probability-weighted bin centre (normalised steer); NaN for probabilities
        that are not one per bin."""
        return float(probs @ self._centres) if len(probs) == len(self._centres) else float("nan")

    def _fallback(self, reason: str, steer_reg: float = float("nan"), probs: np.ndarray | None = None) -> dict:
        probs_list = [] if probs is None else [float(p) for p in probs]
        finite = probs is not None and bool(np.all(np.isfinite(probs)))
        return {"strategy": self.correction, "correction": self.correction, "steer_regression": steer_reg,
                "class_probs": probs_list, "max_prob": float(np.max(probs)) if finite else float("nan"),
                "entropy": float(entropy(probs)) if finite else float("nan"), "predicted_bin": -1,
                "regression_bin": -1, "rule": "fallback_safe_stop", "steer": 0.0, "reason": reason,
                "steer_classification": self._expected_steer(probs) if finite else float("nan"),
                "steer_command": 0.0, "preprocess_ms": 0.0, "network_ms": 0.0, "correction_ms": 0.0,
                "fallback": reason}

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "checkpoint": str(self.ckpt.path), **self.cfg.to_dict()}


def _finite_number(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (a speed reading the PI controller can use)."""
    try:
        return math.isfinite(value)
    except TypeError:
        return False
