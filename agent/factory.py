"""Build a policy from its command-line name."""

from __future__ import annotations

from typing import Any

from agent.expert import ExpertPolicy
from agent.policy import Policy
from sim.errors import unknown_name

POLICIES = ("expert",)


def make_policy(name: str, **kwargs: Any) -> Policy:
    """``expert`` (privileged route follower); learned policies join here as they are added."""
    if name == "expert":
        return ExpertPolicy(**kwargs)
    raise unknown_name("policy", name, POLICIES)
