"""Who drives while recording: the expert (demonstrations), or a learned agent that the expert labels (DAgger).

A policy trained on the expert's drives visits states the expert never did (it drifts off the lane centre
and under-reacts there: see :mod:`training.head_errors`), and no demonstration tells it what to do in them.
DAgger (Ross et al. 2011) records the learner's own drives with the expert's command in each visited state
as the label. ``caril collect --driver caril --checkpoint RUN`` does that: the CARIL agent drives (its
``correction``; steering noise on top when enabled), and every frame stores the agent's command as
``action/executed`` and the expert's in that very state as ``action/expert``, the training label. The
agent's longitudinal control drives too, so speeds are the learner's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from agent.correction import STRATEGIES
from agent.expert import ExpertPolicy
from agent.factory import resolve_checkpoint
from agent.policy import Policy
from sim.errors import UsageError, unknown_name
from sim.routes import Route
from sim.types import Control, Observation
from training.noise import EXPERT_CONTROL_KEY

DRIVERS = ("expert", "caril")


@dataclass(frozen=True)
class DriverConfig:
    """``policy``: ``expert`` or ``caril``; for ``caril`` the ``checkpoint`` folder and the ``correction``."""

    policy: str = "expert"
    checkpoint: str = ""
    correction: str = "regression"

    def __post_init__(self) -> None:
        if self.policy not in DRIVERS:
            raise unknown_name("driver", self.policy, list(DRIVERS))
        if self.correction not in STRATEGIES:
            raise unknown_name("correction", self.correction, list(STRATEGIES))
        if self.policy == "caril":
            if not self.checkpoint:
                raise UsageError("--driver caril needs --checkpoint RUN (the agent that drives while the expert "
                                 "labels)")
            resolve_checkpoint(self.checkpoint)  # a missing folder fails now, not in a worker
        elif self.checkpoint:
            raise UsageError("--checkpoint is for --driver caril; the expert needs none")

    @property
    def is_expert(self) -> bool:
        return self.policy == "expert"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ExpertLabelled(Policy):
    """Executes ``driver``'s control and labels it with ``expert``'s command in the same state."""

    def __init__(self, driver: Policy, expert: ExpertPolicy) -> None:
        self.driver, self.expert = driver, expert
        self.name = driver.name

    def reset(self, route: Route | None = None) -> None:
        self.driver.reset(route)
        self.expert.reset(route)

    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        label, _ = self.expert.act(observation)  # every tick, so the expert's own speed state follows the drive
        control, record = self.driver.act(observation)
        return control, {**record, EXPERT_CONTROL_KEY: label}

    def config(self) -> dict[str, Any]:
        return {"driver": self.driver.config(), "labels": self.expert.config()}


def learner(config: DriverConfig, seed: int, dt_s: float) -> Policy:
    """The agent that drives for ``config`` in an episode of ``seed`` stepped every ``dt_s`` seconds (loaded
    once per process and checkpoint): the ``caril`` rule's draws repeat for the episode's seed and differ
    between episodes, and the speed controller integrates over the simulator's step."""
    agent = _load_agent(str(resolve_checkpoint(config.checkpoint)), config.correction)
    agent.seed = seed
    agent.speed.dt_s = dt_s
    return agent


@lru_cache(maxsize=4)
def _load_agent(checkpoint: str, correction: str) -> Any:
    from agent.caril_agent import CarilAgent, CarilAgentConfig

    return CarilAgent(checkpoint, CarilAgentConfig(correction=correction))
