"""The policy contract every driver implements (expert, learned agent, manual driving).

``reset(route)`` is called at the start of each episode (a privileged policy may read the route; a
camera-based one ignores it); ``act(observation)`` returns the control for this tick and a record of why,
a flat dict of plain values that consumers (recorder, metrics, display) may log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from sim.routes import Route
from sim.types import Control, Observation


class Policy(ABC):
    """Base class of all drivers."""

    name: str = "policy"

    def reset(self, route: Route | None = None) -> None:
        """Start a new episode."""

    @abstractmethod
    def act(self, observation: Observation) -> tuple[Control, dict[str, Any]]:
        """The control for this tick and a record of the decision."""

    def config(self) -> dict[str, Any]:
        """Settings that reproduce this policy, stored with results and recordings."""
        return {"name": self.name}
